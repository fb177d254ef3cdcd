"""Shared blocks: upsampling units convolve at the coarse size and compute the same function."""
import pytest
import torch
from torch.nn import functional as F

from nasseg.ops.blocks import ConvNormAct, Resample, Upsample


def _mode(dims: int) -> str:
    return "bilinear" if dims == 2 else "trilinear"


def _coarse_conv_shapes(unit: ConvNormAct) -> list[torch.Size]:
    shapes: list[torch.Size] = []
    unit[0].register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    return shapes


@pytest.mark.parametrize("dims", [2, 3])
def test_interpolating_upsample_convolves_before_it_upsamples(dims):
    torch.manual_seed(0)
    up = Upsample(dims, 16, 8, kind="interp").eval()
    x = torch.randn(2, 16, *[5] * dims)
    upsampled_first = up.up(F.interpolate(x, scale_factor=2, mode=_mode(dims),
                                          align_corners=False))
    shapes = _coarse_conv_shapes(up.up)
    out = up(x)
    assert out.shape == (2, 8, *[10] * dims)
    assert torch.allclose(out, upsampled_first, atol=1e-5)
    assert shapes[-1][2:] == x.shape[2:]


@pytest.mark.parametrize("levels,size", [(-1, (10, 10, 10)), (-2, (19, 20, 21))])
def test_resample_up_convolves_at_the_coarse_size_and_fits_odd_targets(levels, size):
    torch.manual_seed(0)
    resample = Resample(3, 16, 8, levels).eval()
    x = torch.randn(1, 16, 5, 5, 5)
    resized_first = resample.body(F.interpolate(x, size=size, mode="trilinear",
                                                align_corners=False))
    shapes = _coarse_conv_shapes(resample.body)
    out = resample(x, size)
    assert out.shape == (1, 8, *size)
    assert torch.allclose(out, resized_first, atol=1e-5)
    assert shapes[-1][2:] == x.shape[2:]


def test_resized_refuses_a_kernel_that_does_not_commute_with_the_resize():
    unit = ConvNormAct(3, 4, 4, kernel=3)
    with pytest.raises(ValueError, match="1x1"):
        unit.resized(torch.randn(1, 4, 4, 4, 4), lambda t: t)
