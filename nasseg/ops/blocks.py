"""Reusable blocks built from :mod:`nasseg.ops.layers`: conv units, resampling, output heads."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nasseg.ops.layers import (avg_pool_type, conv_transpose_type, conv_type, expand_kernel,
                               interp_mode, max_pool_type, norm_type)

__all__ = ["ConvNormAct", "StackedConv", "Downsample", "Upsample", "Resample", "OutputHead"]


class ConvNormAct(nn.Sequential):
    """Convolution -> instance norm -> LeakyReLU, padded to keep the spatial size (stride 1).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        kernel: kernel size, a scalar or one value per axis (e.g. (3, 3, 1)).
        dilation: dilation, a scalar or one value per axis.
        stride: stride; the output is ``ceil(size / stride)`` along each axis.
        activation: end with the LeakyReLU (default); False stops at the norm, for a layer
            whose output a linear head reads (see ``normal_op``).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 kernel: int | Sequence[int] = 3, dilation: int | Sequence[int] = 1,
                 stride: int | Sequence[int] = 1, activation: bool = True) -> None:
        kernel_t = expand_kernel(kernel, spatial_dims)
        dilation_t = expand_kernel(dilation, spatial_dims)
        padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel_t, dilation_t))
        layers: list[nn.Module] = [
            conv_type(spatial_dims)(in_channels, out_channels, kernel_t, stride=stride,
                                    padding=padding, dilation=dilation_t, bias=False),
            norm_type(spatial_dims)(out_channels, affine=True)]
        if activation:
            layers.append(nn.LeakyReLU(0.01, inplace=True))
        super().__init__(*layers)

    def resized(self, x: torch.Tensor, resize: Callable[[torch.Tensor], torch.Tensor]
                ) -> torch.Tensor:
        """``self(resize(x))`` for a 1x1 unit and a bi/trilinear ``resize``, resized after the conv.

        Both are linear and interpolation weights sum to one, so the order does not change the
        function; resizing after the conv interpolates ``out_channels`` instead of
        ``in_channels`` and, upsampling, convolves ``factor^d`` times fewer voxels (a jump of
        two levels up in UXNet: 8 channels interpolated instead of 32).
        """
        conv, *rest = self
        if any(k != 1 for k in conv.kernel_size) or any(s != 1 for s in conv.stride):
            raise ValueError("resized() needs a 1x1 unit with stride 1: a larger kernel does "
                             "not commute with the resize")
        x = resize(conv(x))
        for layer in rest:
            x = layer(x)
        return x


class StackedConv(nn.Sequential):
    """Several :class:`ConvNormAct` in a row; the first maps ``in_channels`` to ``out_channels``.

    ``kernels`` lists one kernel per layer, e.g. ``[(3, 3, 1), (1, 1, 3)]`` for a pseudo-3D conv;
    ``final_activation=False`` leaves the last layer without its LeakyReLU.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 kernels: Sequence[int | Sequence[int]], dilation: int = 1,
                 final_activation: bool = True) -> None:
        last = len(kernels) - 1
        layers = [ConvNormAct(spatial_dims, in_channels if i == 0 else out_channels, out_channels,
                              kernel=k, dilation=dilation,
                              activation=final_activation or i < last)
                  for i, k in enumerate(kernels)]
        super().__init__(*layers)


class Downsample(nn.Module):
    """Halve the spatial size: ``"max"`` pool, ``"avg"`` pool or a ``"conv"`` with stride 2.

    Pooling keeps the channel count, so a 1x1 conv follows when ``in_channels != out_channels``.
    """

    KINDS = ("max", "avg", "conv")

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 kind: str = "max", factor: int = 2) -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"Downsample kind must be one of {self.KINDS}, got {kind!r}")
        if kind == "conv":
            self.down = ConvNormAct(spatial_dims, in_channels, out_channels, kernel=3,
                                    stride=factor)
            self.proj = nn.Identity()
        else:
            pool = max_pool_type(spatial_dims) if kind == "max" else avg_pool_type(spatial_dims)
            self.down = pool(kernel_size=factor, stride=factor, ceil_mode=True)
            self.proj = (nn.Identity() if in_channels == out_channels
                         else ConvNormAct(spatial_dims, in_channels, out_channels, kernel=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.down(x))


class Upsample(nn.Module):
    """Double the spatial size: ``"transpose"`` conv or ``"interp"`` (bi/trilinear + 1x1 conv)."""

    KINDS = ("transpose", "interp")

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 kind: str = "transpose", factor: int = 2) -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"Upsample kind must be one of {self.KINDS}, got {kind!r}")
        self.kind = kind
        self.factor = factor
        self.mode = interp_mode(spatial_dims)
        if kind == "transpose":
            self.up = conv_transpose_type(spatial_dims)(in_channels, out_channels, factor,
                                                        stride=factor, bias=False)
        else:
            self.up = ConvNormAct(spatial_dims, in_channels, out_channels, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "transpose":
            return self.up(x)
        return self.up.resized(x, lambda t: F.interpolate(t, scale_factor=self.factor,
                                                          mode=self.mode, align_corners=False))


class Resample(nn.Module):
    """The paper-style alignment T(): bring a feature map to another level and channel count.

    Going down ``levels`` steps uses stride-2 convs, going up a 1x1 conv and interpolation
    (:meth:`ConvNormAct.resized`), and the same level only matches channels (identity when they
    already match). The output is interpolated to ``size`` at run time where it differs, so odd
    sizes align too.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 levels: int) -> None:
        super().__init__()
        self.mode = interp_mode(spatial_dims)
        self.levels = levels
        if levels > 0:
            chans = [in_channels] + [out_channels] * levels
            self.body: nn.Module = nn.Sequential(*[
                ConvNormAct(spatial_dims, chans[i], chans[i + 1], kernel=3, stride=2)
                for i in range(levels)])
        elif in_channels != out_channels or levels < 0:
            self.body = ConvNormAct(spatial_dims, in_channels, out_channels, kernel=1)
        else:
            self.body = nn.Identity()

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        size = tuple(size)

        def fit(t: torch.Tensor) -> torch.Tensor:
            if tuple(t.shape[2:]) == size:
                return t
            return F.interpolate(t, size=size, mode=self.mode, align_corners=False)

        if self.levels < 0:
            return self.body.resized(x, fit)
        return fit(self.body(x))


class OutputHead(nn.Module):
    """1x1 conv to class logits."""

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = conv_type(spatial_dims)(in_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
