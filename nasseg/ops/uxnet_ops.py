"""The op sets of UXNet's Searchable Building Block (Ji et al., MICCAI 2020), for 2D and 3D.

Normal ops keep size and channels; reduction ops go down ``k`` levels (factor 2^k); expansion
ops go up ``k`` levels. In 2D the anisotropic kernels keep their first two axes, so
``conv3x3x1`` is a 3x3 conv and the pseudo-3D op a 3x3 then a 1x1.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from nasseg.ops.blocks import ConvNormAct, StackedConv
from nasseg.ops.layers import (avg_pool_type, conv_transpose_type, interp_mode, max_pool_type)

__all__ = ["NORMAL_OPS", "REDUCTION_OPS", "EXPANSION_OPS", "normal_op", "reduction_op",
           "expansion_op"]

NORMAL_OPS = ("conv3", "conv3x3x1", "conv5", "p3d", "conv3x2", "dil3", "dil5")
REDUCTION_OPS = ("max_pool", "avg_pool", "conv_stride2")
EXPANSION_OPS = ("transpose", "trilinear")


def normal_op(name: str, spatial_dims: int, channels: int,
              final_activation: bool = True) -> Callable[[], nn.Module]:
    """A factory of the normal op ``name`` (channels in = channels out, size kept).

    ``final_activation=False`` ends the op at its norm: the output head reads it that way, so a
    channel that is below zero on every foreground voxel still tells the classes apart (after a
    LeakyReLU they differ by 1/100 of that, and a retrain can lose a class for good).
    """
    c, d, act = channels, spatial_dims, final_activation
    table: dict[str, Callable[[], nn.Module]] = {
        "conv3": lambda: ConvNormAct(d, c, c, 3, activation=act),
        "conv3x3x1": lambda: ConvNormAct(d, c, c, (3, 3, 1), activation=act),
        "conv5": lambda: ConvNormAct(d, c, c, 5, activation=act),
        "p3d": lambda: StackedConv(d, c, c, [(3, 3, 1), (1, 1, 3)], final_activation=act),
        "conv3x2": lambda: StackedConv(d, c, c, [3, 3], final_activation=act),
        "dil3": lambda: ConvNormAct(d, c, c, 3, dilation=2, activation=act),
        "dil5": lambda: ConvNormAct(d, c, c, 5, dilation=2, activation=act),
    }
    if name not in table:
        raise ValueError(f"unknown normal op {name!r}; known: {NORMAL_OPS}")
    return table[name]


class _PoolProject(nn.Module):
    """Pool by ``factor`` then match channels with a 1x1 conv."""

    def __init__(self, pool: nn.Module, spatial_dims: int, cin: int, cout: int) -> None:
        super().__init__()
        self.pool = pool
        self.proj = nn.Identity() if cin == cout else ConvNormAct(spatial_dims, cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x))


class _InterpProject(nn.Module):
    """Upsample by ``factor`` (bi/trilinear) and match channels: a 1x1 unit resized after its
    conv (:meth:`ConvNormAct.resized`), so a jump of two levels up interpolates ``cout``
    channels, not ``cin``."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.mode = interp_mode(spatial_dims)
        self.proj = ConvNormAct(spatial_dims, cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj.resized(x, lambda t: F.interpolate(t, scale_factor=self.factor,
                                                            mode=self.mode, align_corners=False))


def reduction_op(name: str, spatial_dims: int, cin: int, cout: int, levels: int
                 ) -> Callable[[], nn.Module]:
    """A factory of the reduction op ``name`` going ``levels`` levels down."""
    f, d = 2 ** levels, spatial_dims
    table: dict[str, Callable[[], nn.Module]] = {
        "max_pool": lambda: _PoolProject(max_pool_type(d)(f, f, ceil_mode=True), d, cin, cout),
        "avg_pool": lambda: _PoolProject(avg_pool_type(d)(f, f, ceil_mode=True), d, cin, cout),
        "conv_stride2": lambda: ConvNormAct(d, cin, cout, 3, stride=f),
    }
    if name not in table:
        raise ValueError(f"unknown reduction op {name!r}; known: {REDUCTION_OPS}")
    return table[name]


def expansion_op(name: str, spatial_dims: int, cin: int, cout: int, levels: int
                 ) -> Callable[[], nn.Module]:
    """A factory of the expansion op ``name`` going ``levels`` levels up."""
    f, d = 2 ** levels, spatial_dims
    table: dict[str, Callable[[], nn.Module]] = {
        "transpose": lambda: conv_transpose_type(d)(cin, cout, f, stride=f, bias=False),
        "trilinear": lambda: _InterpProject(d, cin, cout, f),
    }
    if name not in table:
        raise ValueError(f"unknown expansion op {name!r}; known: {EXPANSION_OPS}")
    return table[name]
