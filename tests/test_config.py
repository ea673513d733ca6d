"""Configs: profiles, dotted overrides, round trips, errors naming the key."""

import pytest

from semiseg_helpers.config import (
    PROFILES,
    apply_overrides,
    config_from_dict,
    get_profile,
    make_config,
    parse_overrides,
)


def test_every_profile_round_trips_through_json_dict():
    for name in PROFILES:
        config = get_profile(name).train
        assert config_from_dict(config.to_dict()) == config


def test_paper_profile_is_the_papers_setting():
    c = get_profile("paper").train
    assert (c.model.encoder, c.data.crop_size, c.data.batch_size) == ("convnext_large", 512, 2)
    assert (c.optim.lr, c.optim.poly_power, c.semi.contrastive_weight) == (1e-3, 0.95, 0.2)
    assert (c.semi.num_anchors, c.semi.num_negatives, c.semi.strong_threshold,
            c.semi.weak_threshold) == (256, 512, 0.97, 0.7)


def test_overrides_parse_yaml_values_and_coerce_types():
    o = parse_overrides(["semi.contrastive_weight=0.1", "steps=50", "semi.active_key=false",
                         "model.aspp_rates=[1, 2]", "model.pretrained=null", "optim.lr=1"])
    c = apply_overrides(make_config("smoke"), o)
    assert c.semi.contrastive_weight == 0.1 and c.steps == 50 and c.semi.active_key is False
    assert c.model.aspp_rates == (1, 2) and c.model.pretrained is None
    assert c.optim.lr == 1.0 and isinstance(c.optim.lr, float)


def test_bad_overrides_name_the_key():
    with pytest.raises(ValueError, match="semi.anchors"):
        make_config("smoke", {"semi.anchors": 3})
    with pytest.raises(ValueError, match="'steps' expects a number"):
        make_config("smoke", {"steps": "many"})
    with pytest.raises(ValueError, match="not of the form key=value"):
        parse_overrides(["steps"])
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        get_profile("huge")
