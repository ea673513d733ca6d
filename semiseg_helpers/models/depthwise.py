"""Depth-wise convolutions with a backward pass that avoids oneDNN's slow
bf16 kernels on the CPU.

Under bf16 autocast on the CPU, the forward pass of a depth-wise convolution
is fast, but its backward pass is fast only for the plain 3×3 case: with a
stride of 2, a 5×5 kernel or a dilation, oneDNN's bf16 backward kernels take
3–10× longer than fp32's, and the depth-wise layers then cost more than every
dense convolution of the network together. Measured on a 2-core AMD EPYC
(AVX512-BF16, no AMX) at the ``cpu`` profile's sizes (8 images; forward and
backward, channels-last):

=================================  ==========  ==========
layer (channels, kernel, stride)    stock bf16  this module
=================================  ==========  ==========
96, 3×3, stride 2, 80 px              16.5 ms      5.5 ms
144, 5×5, stride 2, 40 px             19.3 ms      3.4 ms
672, 5×5, 10 px                        4.8 ms      2.4 ms
1152, 5×5, dilation 2, 10 px          27.9 ms      4.8 ms
=================================  ==========  ==========

:class:`DepthwiseConv2d` keeps the forward pass (and so the numbers it
computes) and reroutes the gradients:

* the input gradient of a stride-1 convolution is itself a depth-wise
  convolution, of the output gradient with the flipped kernel, and runs
  through the fast forward kernel in bf16;
* the weight gradient (and a strided input gradient) is computed by fp32
  ``convolution_backward``, which is fast for every shape; the weight
  gradient is, if anything, more accurate than autocast's bf16 one.

Only training steps under bf16 autocast on the CPU take the rerouted path;
fp32 (the reference), CUDA, inference, tracing and ``torch.compile`` use
``F.conv2d`` unchanged. The module has ``nn.Conv2d``'s parameters, so state
dicts and checkpoints are the same either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from timm.layers.padding import pad_same
from torch import Tensor, nn

_Pair = tuple[int, int]


class _DepthwiseConv(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups=C)``,
    differentiated as the module docstring says."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: _Pair,
                padding: _Pair, dilation: _Pair) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype),
                        stride, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        channels, kernel = x.shape[1], weight.shape[-2:]
        accumulate = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_input = grad_weight = grad_bias = None

        # Stride 1: the input gradient is the correlation of the output
        # gradient with the flipped kernel (padded to give the input's size),
        # a forward convolution, fast in bf16.
        full = tuple(d * (k - 1) - p for d, k, p in zip(dilation, kernel, padding))
        by_flip = stride == (1, 1) and min(full) >= 0
        if need_input and by_flip:
            grad_input = F.conv2d(grad, weight.flip(-2, -1).to(grad.dtype), None, 1, full,
                                  dilation, channels)
        # The rest in fp32, fast for every shape.
        mask = [need_input and not by_flip, need_weight, False]
        if any(mask):
            a, b, _ = torch.ops.aten.convolution_backward(
                grad.to(accumulate), x.to(accumulate), weight.to(accumulate), None, stride,
                padding, dilation, False, [0, 0], channels, mask)
            if mask[0]:
                grad_input = a.to(x.dtype)
            if need_weight:
                grad_weight = b.to(weight.dtype)
        if need_bias and ctx.has_bias:
            grad_bias = grad.to(accumulate).sum((0, 2, 3))
        return grad_input, grad_weight, grad_bias, None, None, None


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, stride: _Pair,
                     padding: _Pair, dilation: _Pair) -> Tensor:
    """A depth-wise convolution (``weight``: ``(C, 1, kh, kw)``) with the
    rerouted backward pass; under autocast it computes in autocast's dtype."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        x = x.to(torch.get_autocast_dtype(device))
    with torch.autocast(device, enabled=False):
        return _DepthwiseConv.apply(x, weight, bias, tuple(stride), tuple(padding),
                                    tuple(dilation))


def onednn_backward_is_fast(conv: nn.Conv2d) -> bool:
    """Whether oneDNN's own bf16 backward is fast for this layer: 3×3,
    stride 1, no dilation (measured; there the reroute only adds casts)."""
    return (tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1)
            and tuple(conv.dilation) == (1, 1))


class DepthwiseConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` with ``groups == in_channels == out_channels`` (and
    optionally TensorFlow "same" padding, as timm's ``Conv2dSame``), rerouting
    its backward pass where that is faster (see the module docstring).

    Build it with :meth:`from_conv`, which shares the original's parameters.
    """

    same_padding: bool = False

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "DepthwiseConv2d":
        if not is_depthwise(conv):
            raise ValueError(f"{conv} is not a depth-wise convolution with numeric padding")
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                  conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                  device="meta")
        new.weight = conv.weight
        new.bias = conv.bias
        new.same_padding = isinstance(conv, Conv2dSame)
        new.train(conv.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        if self.same_padding:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        if self._reroute(x):
            return depthwise_conv2d(x, self.weight, self.bias, self.stride, self.padding,
                                    self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def _reroute(self, x: Tensor) -> bool:
        return (x.device.type == "cpu" and torch.is_grad_enabled()
                and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16
                and not onednn_backward_is_fast(self)
                and not torch.jit.is_tracing() and not torch.compiler.is_compiling())

    def extra_repr(self) -> str:
        return super().extra_repr() + (", padding=same (TF)" if self.same_padding else "")


def is_depthwise(conv: nn.Module) -> bool:
    """A plain 2-D depth-wise convolution this module can stand in for."""
    return (type(conv) in (nn.Conv2d, Conv2dSame)
            and conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def use_fast_depthwise(model: nn.Module) -> int:
    """Replace every depth-wise convolution of ``model`` by a
    :class:`DepthwiseConv2d` sharing its parameters, in place; returns how
    many were replaced. The state dict's keys and values do not change."""
    targets = [(name, module) for name, module in model.named_modules() if is_depthwise(module)]
    for name, conv in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child,
                DepthwiseConv2d.from_conv(conv))
    return len(targets)


__all__ = ["DepthwiseConv2d", "depthwise_conv2d", "is_depthwise", "onednn_backward_is_fast",
           "use_fast_depthwise"]
