"""Faster, exact gradients for the stride-1 "same" convolutions of a network on CPU.

Two of PyTorch's CPU backward kernels are far slower than its forward kernel for the shapes a
segmentation search runs (measured with torch 2.13 on 2 cores, batch 2, 32^3):

* **the input gradient of a conv with few output channels.** With 8 channels it takes 5.2 ms
  (3^3 kernel) and 12.1 ms (5^3) against 1.3 ms and 4.7 ms for the same arithmetic run as a
  forward conv; with 2 channels, 11.6 ms against 1.2 ms. From 16 output channels on the two
  routes take the same time. UXNet's first level has ``features`` channels (4 to 8 in a
  search), and partial channels (PC-DARTS) runs every candidate on a quarter of them, so this
  one gradient is most of an architecture step there.
* **the weight gradient of a dilated 3D conv.** 127 ms for a 5^3 dilation-2 conv with 16
  channels, against 10 ms undilated.

Both are fixed by exact algebra, not approximation:

* the input gradient of a stride-1 conv with "same" padding ``p = d (k - 1) / 2`` is the
  forward conv of the output gradient with the kernel flipped in space and its in/out
  channels swapped, at the same padding and dilation; it is used when the conv has fewer than
  16 output channels (:data:`FLIP_BELOW`), else PyTorch's kernel;
* a dilation-``d`` conv is, on each of the ``d^n`` phase grids ``x_pad[a::d, b::d, ...]``, an
  undilated conv with the same weights (space-to-batch, as in atrous convolution), so its
  weight gradient is an undilated weight gradient over ``B * d^n`` phase grids. 3D only: in 2D
  PyTorch's dilated weight gradient is already fast (the phase route measured 1.3-1.8x slower).

Results match PyTorch to float rounding, and the backward is built from differentiable ops, so
double backward works. :func:`speed_up_convs` switches the eligible ``nn.Conv2d`` /
``nn.Conv3d`` modules of a network to :class:`FastConv2d` / :class:`FastConv3d` in place (same
parameters, same state-dict keys). Eligible: stride 1, one group, zero "same" padding. The
custom function runs only when a gradient is needed and autocast is off; otherwise, and for a
dilated weight gradient whose spatial sizes do not divide by the dilation, PyTorch's kernels.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FastConv2d", "FastConv3d", "speed_up_convs", "dilated_conv_weight_grad",
           "FLIP_BELOW"]

#: the flipped-kernel input gradient is used below this many output channels
FLIP_BELOW = 16


def _to_phases(t: torch.Tensor, dilation: Sequence[int]) -> torch.Tensor:
    """(B, C, d0*m0, d1*m1, ...) -> (B * prod(d), C, m0, m1, ...): phase grid (a0, a1, ...) of
    ``t`` is ``t[..., a0::d0, a1::d1, ...]``."""
    b, c, *sizes = t.shape
    n = len(sizes)
    shape = [b, c]
    for s, d in zip(sizes, dilation):
        shape += [s // d, d]
    perm = [0] + [3 + 2 * i for i in range(n)] + [1] + [2 + 2 * i for i in range(n)]
    phases = 1
    for d in dilation:
        phases *= d
    return t.reshape(shape).permute(perm).reshape(b * phases, c,
                                                  *[s // d for s, d in zip(sizes, dilation)])


def dilated_conv_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, weight: torch.Tensor,
                             padding: Sequence[int], dilation: Sequence[int]) -> torch.Tensor:
    """The weight gradient of a stride-1, one-group, "same"-padded dilated conv, through an
    undilated conv over the phase grids (every spatial size divisible by its dilation)."""
    pads: list[int] = []
    for p in reversed(padding):
        pads += [p, p]
    xp = _to_phases(F.pad(x, pads), dilation)
    gp = _to_phases(grad_out, dilation)
    n = x.dim() - 2
    return torch.ops.aten.convolution_backward(
        gp, xp, weight, None, [1] * n, [0] * n, [1] * n, False, [0] * n, 1,
        [False, True, False])[1]


def _native_grad(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                 padding: Sequence[int], dilation: Sequence[int], which: int) -> torch.Tensor:
    n = x.dim() - 2
    mask = [which == 0, which == 1, False]
    return torch.ops.aten.convolution_backward(
        grad_out, x, weight, None, [1] * n, list(padding), list(dilation), False, [0] * n, 1,
        mask)[which]


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
          padding: Sequence[int], dilation: Sequence[int]) -> torch.Tensor:
    conv = F.conv3d if x.dim() == 5 else F.conv2d
    return conv(x, weight, bias, 1, tuple(padding), tuple(dilation))


class _SameConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation, ctx.has_bias = padding, dilation, bias is not None
        return _conv(x, weight, bias, padding, dilation)

    @staticmethod
    def backward(ctx, grad_out):  # differentiable ops only: double backward works too
        x, weight = ctx.saved_tensors
        padding, dilation = ctx.padding, ctx.dilation
        n = x.dim() - 2
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if weight.shape[0] < FLIP_BELOW:
                flipped = weight.flip(list(range(2, n + 2))).transpose(0, 1)
                grad_x = _conv(grad_out, flipped, None, padding, dilation)
            else:
                grad_x = _native_grad(grad_out, x, weight, padding, dilation, 0)
        if ctx.needs_input_grad[1]:
            if n == 3 and any(d > 1 for d in dilation) and all(
                    s % d == 0 for s, d in zip(x.shape[2:], dilation)):
                grad_w = dilated_conv_weight_grad(x, grad_out.contiguous(), weight, padding,
                                                  dilation)
            else:
                grad_w = _native_grad(grad_out, x, weight, padding, dilation, 1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=[0] + list(range(2, n + 2)))
        return grad_x, grad_w, grad_b, None, None


class _FastConvMixin:
    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
        if (torch.is_grad_enabled() and (weight.requires_grad or input.requires_grad)
                and not torch.is_autocast_enabled(input.device.type)):
            return _SameConvFn.apply(input, weight, bias, tuple(self.padding),
                                     tuple(self.dilation))
        return super()._conv_forward(input, weight, bias)


class FastConv2d(_FastConvMixin, nn.Conv2d):
    """``nn.Conv2d`` with the faster exact backward of this module."""


class FastConv3d(_FastConvMixin, nn.Conv3d):
    """``nn.Conv3d`` with the faster exact backward of this module."""


_FAST = {nn.Conv2d: FastConv2d, nn.Conv3d: FastConv3d}


def _eligible(m: nn.Module) -> bool:
    if type(m) not in _FAST or m.groups != 1 or m.padding_mode != "zeros":
        return False
    if any(s != 1 for s in m.stride) or isinstance(m.padding, str):
        return False
    return all(d * (k - 1) == 2 * p
               for d, k, p in zip(m.dilation, m.kernel_size, m.padding))


def speed_up_convs(model: nn.Module) -> int:
    """Switch the eligible convs of ``model`` to the fast-gradient classes, in place; return
    how many were switched. Meant for CPU: on CUDA, cuDNN's kernels are used unchanged."""
    count = 0
    for m in model.modules():
        if _eligible(m):
            m.__class__ = _FAST[type(m)]
            count += 1
    return count
