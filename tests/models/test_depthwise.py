"""Depth-wise convolutions with a rerouted backward pass: the same values and
gradients as ``F.conv2d``, taken exactly where they should be."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import semiseg_helpers  # noqa: F401  (before timm: torchvision import fix)
import timm
from timm.layers import Conv2dSame
from semiseg_helpers.models import create_model
from semiseg_helpers.models.depthwise import (DepthwiseConv2d, depthwise_conv2d,
                                              use_fast_depthwise)

GEOMETRIES = [(k, s, d, p) for k, s, d, p in itertools.product((3, 5), (1, 2), (1, 2), (0, 1, 4))
              if p <= d * (k - 1) + 1]


@pytest.mark.parametrize("kernel,stride,dilation,padding", GEOMETRIES)
@pytest.mark.parametrize("height,width", [(9, 9), (10, 13)])
def test_values_and_gradients_match_conv2d(kernel, stride, dilation, padding, height,
                                           width) -> None:
    gen = torch.Generator().manual_seed(kernel * 100 + stride * 10 + dilation + padding)
    x = torch.randn(2, 3, height, width, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(3, 1, kernel, kernel, dtype=torch.float64, generator=gen,
                    requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, generator=gen, requires_grad=True)
    args = ((stride, stride), (padding, padding), (dilation, dilation))
    expected = F.conv2d(x, w, b, *args, groups=3)
    got = depthwise_conv2d(x, w, b, *args)
    assert torch.equal(got, expected)
    g = torch.randn(expected.shape, dtype=torch.float64, generator=gen)
    for want, have in zip(torch.autograd.grad(expected, (x, w, b), g),
                          torch.autograd.grad(got, (x, w, b), g)):
        torch.testing.assert_close(have, want, rtol=1e-10, atol=1e-10)


def test_gradcheck_through_a_strided_dilated_layer() -> None:
    x = torch.randn(1, 2, 7, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w: depthwise_conv2d(x, w, None, (2, 2), (1, 1), (2, 2)), (x, w))


def _layer(kernel: int, stride: int, dilation: int, same: bool = False) -> nn.Conv2d:
    torch.manual_seed(0)
    cls = Conv2dSame if same else nn.Conv2d
    padding = 0 if same else dilation * (kernel // 2)
    return cls(8, 8, kernel, stride, padding, dilation, groups=8, bias=False)


@pytest.mark.parametrize("kernel,stride,dilation,same", [(5, 1, 1, False), (3, 2, 1, True),
                                                          (5, 1, 2, False), (5, 2, 1, True)])
def test_bf16_training_takes_the_reroute_with_autocast_accuracy(kernel, stride, dilation,
                                                                same) -> None:
    conv = _layer(kernel, stride, dilation, same)
    fast = DepthwiseConv2d.from_conv(conv)
    assert fast.weight is conv.weight  # shared, so state dicts are the same
    x = torch.randn(4, 8, 20, 20).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    reference = conv(x)
    g_x_ref, g_w_ref = torch.autograd.grad(reference.square().sum(), (x, conv.weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x)
    assert type(out.grad_fn).__name__ == "_DepthwiseConvBackward"
    assert out.dtype == torch.bfloat16 and out.shape == reference.shape
    g_x, g_w = torch.autograd.grad(out.float().square().sum(), (x, fast.weight))
    # bf16 activations: a few per cent, as autocast's own path gives.
    for have, want in ((out.float(), reference), (g_x, g_x_ref), (g_w, g_w_ref)):
        assert (have - want).norm() / want.norm() < 0.03


@pytest.mark.parametrize("context", ["fp32", "no_grad", "fast_in_onednn"])
def test_everything_else_runs_plain_conv2d(context: str) -> None:
    conv = _layer(3, 1, 1) if context == "fast_in_onednn" else _layer(5, 2, 1, same=True)
    fast = DepthwiseConv2d.from_conv(conv)
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=context != "fp32"), \
            torch.set_grad_enabled(context != "no_grad"):
        out, expected = fast(x), conv(x)
    assert torch.equal(out, expected)
    if context != "no_grad":
        assert type(out.grad_fn).__name__ != "_DepthwiseConvBackward"


def test_swap_keeps_the_state_dict_and_the_outputs() -> None:
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", features_only=True).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    swapped = use_fast_depthwise(model)
    assert swapped == 16  # every depth-wise layer of EfficientNet-Lite0
    assert sum(isinstance(m, DepthwiseConv2d) for m in model.modules()) == 16
    state = model.state_dict()
    assert list(state) == list(before)
    assert all(torch.equal(state[k], before[k]) for k in before)
    with torch.no_grad():
        for a, b in zip(model(x), expected):
            assert torch.equal(a, b)


@pytest.mark.parametrize("arch", ["semisegdefect", "deeplabv3plus", "fpn"])
def test_every_network_is_built_with_it(arch: str) -> None:
    model = create_model(arch, "tf_efficientnet_lite0", num_classes=3)
    assert any(isinstance(m, DepthwiseConv2d) for m in model.modules())
    assert not any(type(m) in (nn.Conv2d, Conv2dSame) and m.groups == m.in_channels > 1
                   for m in model.modules())


def test_a_grouped_but_not_depthwise_conv_is_refused() -> None:
    with pytest.raises(ValueError, match="not a depth-wise"):
        DepthwiseConv2d.from_conv(nn.Conv2d(8, 16, 3, groups=8))
