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


@pytest.mark.parametrize("method", ["fpn", "deeplabv3plus"])
def test_the_profiles_model_options_reach_only_an_architecture_that_has_them(method):
    c = make_config("cpu", method=method)
    assert c.model.arch == method and c.model.decoder_channels == 128
    assert c.model.rep_dim is None and c.model.rep_source is None
    if method == "fpn":
        assert c.model.aspp_rates is None and c.model.output_stride is None
    else:
        assert c.model.aspp_rates == (2, 4, 6) and c.model.output_stride == 16
    assert config_from_dict(c.to_dict()) == c


def test_an_option_without_effect_is_an_error_never_recorded():
    with pytest.raises(ValueError, match="model.aspp_rates"):
        make_config("cpu", {"model.aspp_rates": [1, 2]}, method="fpn")
    with pytest.raises(ValueError, match="model.rep_dim"):
        make_config("cpu", {"model.arch": "deeplabv3plus", "model.rep_dim": 8},
                    method="supervised")
    with pytest.raises(ValueError, match="contradicts"):
        make_config("cpu", {"model.arch": "semisegdefect"}, method="fpn")
    # a hand-made config that would record an unused value fails when the network is built
    from dataclasses import replace

    from semiseg_helpers.methods.base import build_network

    c = make_config("smoke", method="fpn")
    with pytest.raises(ValueError, match="model.output_stride"):
        build_network(replace(c, model=replace(c.model, output_stride=16)), 4)


def test_supervised_on_another_arch_drops_only_the_profiles_options():
    c = make_config("cpu", {"model.arch": "fpn"}, method="supervised")
    assert c.model.options() == {"decoder_channels": 128}


def test_only_a_contrastive_run_has_a_representation():
    assert make_config("cpu", method="semisegdefect").model.rep_dim == 128
    for method in ("supervised", "unimatch", "duosegnet"):
        c = make_config("cpu", method=method)
        assert (c.model.rep_dim, c.model.rep_source) == (None, None), method
    c = make_config("cpu", {"semi.contrastive_loss": False}, method="semisegdefect")
    assert c.model.rep_dim is None
    with pytest.raises(ValueError, match="model.rep_dim.*supervised"):
        make_config("cpu", {"model.rep_dim": 64}, method="supervised")
    c = make_config("cpu", {"model.rep_source": "encoder"}, method="semisegdefect")
    assert (c.model.rep_dim, c.model.rep_source) == (None, "encoder")
    with pytest.raises(ValueError, match="model.rep_dim has no effect"):
        make_config("cpu", {"model.rep_source": "encoder", "model.rep_dim": 64})


def test_another_methods_setting_is_an_error():
    with pytest.raises(ValueError, match="unimatch.conf_threshold.*semisegdefect"):
        make_config("smoke", {"unimatch.conf_threshold": 0.9}, method="semisegdefect")
    with pytest.raises(ValueError, match="semi.num_anchors"):
        make_config("smoke", {"semi.num_anchors": 64}, method="fpn")
    assert make_config("smoke", {"duosegnet.critic_lr": 1e-4},
                       method="duosegnet").duosegnet.critic_lr == 1e-4
