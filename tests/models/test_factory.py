"""create_model: every architecture behind one interface, shared pretrained weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import semiseg_helpers  # noqa: F401  (before timm: torchvision import fix)
from semiseg_helpers.models import (
    PACKAGE_WEIGHTS,
    SegOutput,
    SemiSegDefect,
    SmpSegmentationModel,
    count_parameters,
    create_model,
    read_state_dict,
)
from semiseg_helpers.models.encoders import efficientnet_lite0_package_file


@pytest.mark.parametrize("arch", ["semisegdefect", "deeplabv3plus", "fpn"])
@pytest.mark.parametrize("encoder", ["convnext_zepto_rms", "tf_efficientnet_lite0",
                                     "convnext_tiny"])
def test_every_arch_returns_segoutput_at_input_size(arch: str, encoder: str) -> None:
    model = create_model(arch, encoder, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (1, 3, 64, 64)
    if arch == "semisegdefect":
        assert out.rep.shape == (1, 256, 16, 16)
    else:
        assert out.rep is None
    assert model.num_classes == 3


def test_smp_model_normalises_its_input() -> None:
    model = create_model("fpn", "convnext_zepto_rms", mean=(0.5,) * 3, std=(0.5,) * 3)
    seen: list[torch.Tensor] = []
    model.net.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model(torch.full((1, 3, 64, 64), 0.5))
    assert torch.equal(seen[0], torch.zeros(1, 3, 64, 64))


def test_package_weights_reach_the_smp_encoder_as_in_semisegdefect() -> None:
    source = read_state_dict(efficientnet_lite0_package_file())
    smp_model = create_model("deeplabv3plus", "tf_efficientnet_lite0", pretrained=PACKAGE_WEIGHTS)
    ours = create_model("semisegdefect", "tf_efficientnet_lite0", pretrained=PACKAGE_WEIGHTS)
    report = smp_model.load_report
    assert (report.loaded, report.total, report.unused_source) == (288, 288, 8)
    assert torch.equal(smp_model.net.encoder.model.conv_stem.weight, source["_conv_stem.weight"])
    smp_state, our_state = smp_model.net.encoder.model.state_dict(), ours.encoder.model.state_dict()
    assert smp_state.keys() == our_state.keys()
    assert all(torch.equal(smp_state[k], our_state[k]) for k in smp_state)
    torch.testing.assert_close(smp_model.normalize.std.flatten(), torch.full((3,), 0.5))


def test_semisegdefect_options_pass_through() -> None:
    model = create_model("SemiSegDefect", "convnext_zepto_rms", rep_dim=16, aspp_rates=(2, 4, 6))
    assert isinstance(model, SemiSegDefect) and model.rep_dim == 16
    assert model.decoder.aspp.branches[3][0].dilation == (6, 6)


def test_smp_baselines_take_the_profiles_decoder_width_stride_and_rates() -> None:
    """The baselines are built with the decoder options Semi-SegDefect gets, not
    smp's defaults (256 channels, rates 12/24/36)."""
    deeplab = create_model("deeplabv3plus", "tf_efficientnet_lite0", decoder_channels=32,
                           aspp_rates=(2, 4, 6), output_stride=16)
    aspp = deeplab.net.decoder.aspp[0]
    dilations = [m.dilation for m in aspp.modules()
                 if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.groups > 1]
    assert dilations == [(2, 2), (4, 4), (6, 6)]
    assert deeplab.net.segmentation_head[0].in_channels == 32
    assert deeplab.output_stride == 16
    fpn = create_model("fpn", "tf_efficientnet_lite0", decoder_channels=64)
    assert fpn.net.decoder.p5.out_channels == 64
    assert fpn.net.segmentation_head[0].in_channels == 32


@pytest.mark.parametrize("arch, option", [("fpn", {"aspp_rates": (1, 2, 3)}),
                                          ("fpn", {"output_stride": 16}),
                                          ("fpn", {"decoder_channels": 96}),
                                          ("deeplabv3plus", {"rep_dim": 16}),
                                          ("deeplabv3plus", {"output_stride": 32})])
def test_an_option_the_baseline_lacks_is_an_error(arch: str, option: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(option))):
        create_model(arch, "convnext_zepto_rms", **option)


def test_unknown_arch_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unet.*semisegdefect.*deeplabv3plus.*fpn"):
        create_model("unet")


@pytest.mark.parametrize("arch", ["semisegdefect", "fpn"])
def test_unknown_encoder_is_a_value_error(arch: str) -> None:
    with pytest.raises(ValueError, match="convnext_tinny"):
        create_model(arch, "convnext_tinny")


def test_smp_models_refuse_feature_perturbation() -> None:
    model = create_model("fpn", "convnext_zepto_rms")
    assert isinstance(model, SmpSegmentationModel) and model.rep_dim is None
    with pytest.raises(ValueError, match="semisegdefect"):
        model(torch.rand(1, 3, 64, 64), perturb=True)


def test_count_parameters_by_hand() -> None:
    conv = nn.Conv2d(3, 4, 1)  # 12 weights + 4 biases
    conv.bias.requires_grad_(False)
    assert count_parameters(conv) == 16
    assert count_parameters(conv, trainable_only=True) == 12
    assert count_parameters(nn.BatchNorm2d(5)) == 10  # running stats are buffers
