"""The Semi-SegDefect network: shapes, decoder structure, rep source, perturbation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import semiseg_helpers  # noqa: F401  (before timm: torchvision import fix)
from semiseg_helpers.models.deeplab import ASPP, SegOutput, SemiSegDefect, atrous_rates

# convnext_tiny on every architecture: tests/models/test_factory.py.
ENCODERS = ["convnext_zepto_rms", "tf_efficientnet_lite0"]


@pytest.fixture(scope="module")
def zepto() -> SemiSegDefect:
    torch.manual_seed(0)
    return SemiSegDefect("convnext_zepto_rms", num_classes=4)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_logits_at_input_size_and_rep_at_a_quarter(encoder: str) -> None:
    model = SemiSegDefect(encoder, num_classes=5, rep_dim=32)
    out = model(torch.rand(2, 3, 64, 96))  # training mode: BN needs batch >= 2
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (2, 5, 64, 96)
    assert out.rep.shape == (2, 32, 16, 24)
    assert out.features is None and out.logits_fp is None
    assert (model.num_classes, model.rep_dim, model.output_stride) == (5, 32, 16)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_aspp_runs_at_a_sixteenth_and_is_upsampled_4x_as_in_the_paper(encoder: str) -> None:
    """Output stride 16 by default: the last encoder stage is dilated, not strided,
    so ASPP sees a 1/16 map and its output meets the 1/4 features after 4x."""
    model = SemiSegDefect(encoder, num_classes=4).eval()
    seen: dict[str, tuple[int, ...]] = {}
    model.decoder.aspp.register_forward_hook(
        lambda module, args, out: seen.update(aspp_in=tuple(args[0].shape[-2:]),
                                              aspp_out=tuple(out.shape[-2:])))
    with torch.no_grad():
        out = model(torch.rand(1, 3, 128, 160), return_features=True)
    assert seen == {"aspp_in": (8, 10), "aspp_out": (8, 10)}
    assert [tuple(f.shape[-2:]) for f in out.features] == [(32, 40), (16, 20), (8, 10), (8, 10)]
    assert model.encoder.reductions == (4, 8, 16, 16)


def test_output_stride_32_keeps_the_plain_encoder() -> None:
    model = SemiSegDefect("convnext_zepto_rms", output_stride=32).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64), return_features=True)
    assert tuple(out.features[-1].shape[-2:]) == (2, 2) and model.output_stride == 32


def test_dilation_keeps_the_pretrained_weights_usable() -> None:
    """Dilating a stage changes strides, not weights: the OS16 and OS32 encoders
    hold tensors of the same names and shapes (pretrained files load into both)."""
    a = SemiSegDefect("tf_efficientnet_lite0", output_stride=16).encoder.model.state_dict()
    b = SemiSegDefect("tf_efficientnet_lite0", output_stride=32).encoder.model.state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}


def test_atrous_rates_scale_deeplabs_to_the_map() -> None:
    assert atrous_rates(512, 16) == (6, 12, 18)      # DeepLab's own setting
    assert atrous_rates(160, 16) == (2, 4, 6)        # a 10x10 map
    assert atrous_rates(96, 16) == (1, 2, 3)         # 6x6
    assert atrous_rates(512, 32) == (3, 6, 9)        # the same image at 1/32
    assert atrous_rates(32, 16) == (1, 2, 3)         # never collapses to equal rates


def test_profiles_rates_fit_their_crops() -> None:
    from semiseg_helpers.config import PROFILES

    for profile in PROFILES.values():
        m, crop = profile.train.model, profile.train.data.crop_size
        assert m.aspp_rates == atrous_rates(crop, m.output_stride), profile.name


def test_decoder_is_the_papers_deeplabv3plus(zepto: SemiSegDefect) -> None:
    aspp = zepto.decoder.aspp
    convs = [branch[0] for branch in aspp.branches]
    assert [(c.kernel_size, c.dilation) for c in convs] == [
        ((1, 1), (1, 1)), ((3, 3), (6, 6)), ((3, 3), (12, 12)), ((3, 3), (18, 18))]
    assert isinstance(aspp.image_pool[0], nn.AdaptiveAvgPool2d)  # the fifth branch
    assert aspp.project[0].in_channels == 5 * 256 and aspp.project[0].out_channels == 256
    assert zepto.decoder.low_proj[0].out_channels == 48
    assert zepto.decoder.concat_channels == 304
    assert zepto.decoder.fuse[0].kernel_size == (3, 3)
    assert zepto.classifier.in_channels == 256 and zepto.classifier.out_channels == 4
    head = zepto.representation
    assert [type(m) for m in head] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d]
    assert head[0].in_channels == 304 and head[0].kernel_size == (3, 3)
    assert head[3].kernel_size == (1, 1) and head[3].out_channels == 256


def test_aspp_image_pooling_branch_sees_the_global_mean() -> None:
    # With every conv branch zeroed, the output depends only on the pooled branch:
    # two inputs with the same per-channel mean must give the same constant map.
    torch.manual_seed(0)
    aspp = ASPP(3, 4, rates=(1, 2)).eval()
    for branch in aspp.branches:
        nn.init.zeros_(branch[0].weight)
    a = torch.rand(1, 3, 5, 5)
    b = a.flatten(2)[..., torch.randperm(25)].view(1, 3, 5, 5)  # same pixels, shuffled
    out_a, out_b = aspp(a), aspp(b)
    torch.testing.assert_close(out_a, out_b)
    assert torch.equal(out_a, out_a[..., :1, :1].expand_as(out_a))


def test_encoder_rep_source_is_the_last_level_resized_to_a_quarter() -> None:
    model = SemiSegDefect("convnext_zepto_rms", rep_source="encoder").eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64), return_features=True)
    expected = F.interpolate(out.features[-1], size=(16, 16), mode="bilinear",
                             align_corners=False)
    torch.testing.assert_close(out.rep, expected)
    assert model.representation is None
    assert model.rep_dim == 256 == out.rep.shape[1]


def test_features_are_returned_only_on_request(zepto: SemiSegDefect) -> None:
    out = zepto.eval()(torch.rand(1, 3, 64, 64), return_features=True, return_rep=False)
    assert [tuple(f.shape[-2:]) for f in out.features] == [(16, 16), (8, 8), (4, 4), (4, 4)]
    assert out.rep is None


def test_perturb_decodes_clean_and_dropped_features_from_one_encoder_pass(
        zepto: SemiSegDefect) -> None:
    zepto.eval()
    calls: list[int] = []
    handle = zepto.encoder.register_forward_hook(lambda *args: calls.append(1))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        plain = zepto(x)
        calls.clear()
        out = zepto(x, perturb=True)
    handle.remove()
    assert len(calls) == 1
    assert out.logits.shape == out.logits_fp.shape == (2, 4, 64, 64)
    # Eval-mode BN: the clean half is unaffected by sharing the batch with the perturbed half.
    torch.testing.assert_close(out.logits, plain.logits)
    torch.testing.assert_close(out.rep, plain.rep)
    assert not torch.allclose(out.logits_fp, plain.logits)


def test_gradients_reach_encoder_and_both_heads() -> None:
    model = SemiSegDefect("convnext_zepto_rms").train()
    out = model(torch.rand(2, 3, 64, 64))
    (out.logits.mean() + out.rep.mean()).backward()
    assert model.encoder.model.stem_0.weight.grad.abs().sum() > 0
    assert model.classifier.weight.grad.abs().sum() > 0
    assert model.representation[3].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, name", [
    ({"rep_source": "pixels"}, "rep_source"),
    ({"num_classes": 0}, "num_classes"),
    ({"fp_dropout": 1.0}, "fp_dropout"),
    ({"aspp_rates": ()}, "aspp_rates"),
    ({"output_stride": 4}, "output_stride"),
])
def test_bad_options_name_the_parameter(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SemiSegDefect("convnext_zepto_rms", **kwargs)


def test_convnext_large_has_the_papers_192_channel_stem_and_runs() -> None:
    model = SemiSegDefect("convnext_large").eval()
    assert model.encoder.out_channels == [192, 384, 768, 1536]
    assert tuple(model.encoder.model.stem_0.weight.shape) == (192, 3, 4, 4)  # 4x4, stride 4
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert out.logits.shape == (1, 4, 64, 64)
    assert out.rep.shape == (1, 256, 16, 16)
