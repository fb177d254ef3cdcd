"""Dimension-agnostic layer factories: one op library serves 2D and 3D.

Every factory takes ``spatial_dims`` (2 or 3) and returns the matching ``torch.nn`` class, so
spaces never branch on dimension themselves (the MONAI ``Conv[Conv.CONV, dims]`` idea, smaller).
"""
from __future__ import annotations

from typing import Sequence, Type

from torch import nn

__all__ = ["conv_type", "conv_transpose_type", "norm_type", "max_pool_type", "avg_pool_type",
           "check_spatial_dims", "interp_mode", "expand_kernel"]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVG_POOL = {2: nn.AvgPool2d, 3: nn.AvgPool3d}


def check_spatial_dims(spatial_dims: int) -> int:
    """Return ``spatial_dims`` if it is 2 or 3, else raise a ``ValueError`` that says so."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return spatial_dims


def conv_type(spatial_dims: int) -> Type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return _CONV[check_spatial_dims(spatial_dims)]


def conv_transpose_type(spatial_dims: int) -> Type[nn.Module]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return _CONV_T[check_spatial_dims(spatial_dims)]


def norm_type(spatial_dims: int) -> Type[nn.Module]:
    """Instance norm (affine), the usual choice for small-batch medical segmentation."""
    return _NORM[check_spatial_dims(spatial_dims)]


def max_pool_type(spatial_dims: int) -> Type[nn.Module]:
    """``nn.MaxPool2d`` or ``nn.MaxPool3d``."""
    return _MAX_POOL[check_spatial_dims(spatial_dims)]


def avg_pool_type(spatial_dims: int) -> Type[nn.Module]:
    """``nn.AvgPool2d`` or ``nn.AvgPool3d``."""
    return _AVG_POOL[check_spatial_dims(spatial_dims)]


def interp_mode(spatial_dims: int) -> str:
    """Linear interpolation mode for ``F.interpolate``: bilinear in 2D, trilinear in 3D."""
    return "bilinear" if check_spatial_dims(spatial_dims) == 2 else "trilinear"


def expand_kernel(kernel: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """A kernel, dilation or stride given as a scalar or per axis, as a tuple of ``spatial_dims``.

    A 3D anisotropic kernel such as (3, 3, 1) keeps its first ``spatial_dims`` entries in 2D, so
    a space can name 3D ops and still run on 2D data.
    """
    if isinstance(kernel, int):
        return (kernel,) * spatial_dims
    kernel = tuple(int(k) for k in kernel)
    if len(kernel) < spatial_dims:
        raise ValueError(f"kernel {kernel} has fewer than {spatial_dims} entries")
    return kernel[:spatial_dims]
