"""Multi-resolution crops of large images (nasseg.data.multires): centring, area averaging,
zero padding, label sampling, the shared pyramid read plan, file opening and OpenSlide handling."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nasseg.data import DataError
from nasseg.data import multires as mr
from nasseg.data.multires import (
    OPENSLIDE_INSTALL,
    ArrayImage,
    LargeImage,
    SlideImage,
    best_level,
    multires_crops,
    open_large_image,
    plan_read,
    read_padded,
    resample_region,
    sample_centres,
)

H, W = 500, 600  # rows, cols of the synthetic "large" image


@pytest.fixture(scope="module")
def src() -> np.ndarray:
    """(500, 600, 3) float32, every pixel > 0 (so zero padding is recognisable)."""
    y, x = np.mgrid[0:H, 0:W]
    checker = ((x // 7 + y // 5) % 2) * 100 + 1
    return np.stack([x + 1, y + 1, checker], axis=-1).astype(np.float32)


@pytest.fixture(scope="module")
def lab() -> np.ndarray:
    """(500, 600) uint8 label with values 0..2 in blocks plus a class-3 disc."""
    y, x = np.mgrid[0:H, 0:W]
    out = ((x // 50 + y // 40) % 3).astype(np.uint8)
    out[(x - 300) ** 2 + (y - 250) ** 2 < 30 ** 2] = 3
    return out


def _reference(arr: np.ndarray, x0: int, y0: int, side: int, d: int, nearest: bool = False) -> np.ndarray:
    """Zero-pad generously, cut the box, block-average (or sample block centres)."""
    pad = 2 * side
    widths = ((pad, pad), (pad, pad)) + ((0, 0),) * (arr.ndim - 2)
    padded = np.pad(arr, widths)
    box = padded[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]
    if nearest:
        return box[d // 2::d, d // 2::d]
    n = side // d
    return box.reshape(n, d, n, d, *box.shape[2:]).astype(np.float64).mean(axis=(1, 3))


# ---------------------------------------------------------------- centring and values


def test_marked_source_pixel_is_the_centre_pixel_of_every_magnification() -> None:
    cx, cy, size = 311, 207, 32
    marker = np.zeros((H, W), np.float32)
    marker[cy, cx] = 1.0
    crops, _ = multires_crops(marker, (cx, cy), size, (1, 4, 16))
    for d, crop in zip((1, 4, 16), crops):
        assert crop.shape == (size, size, 1) and crop.dtype == np.float32
        assert np.unravel_index(np.argmax(crop[..., 0]), (size, size)) == (size // 2, size // 2)
        assert crop[size // 2, size // 2, 0] == pytest.approx(1.0 / d ** 2)
        assert np.count_nonzero(crop) == 1


def test_crops_are_concentric_and_coarse_is_block_average(src: np.ndarray) -> None:
    cx, cy, size = 300, 260, 32
    crops, labels = multires_crops(src, (cx, cy), size, (1, 4, 16))
    assert labels is None
    for d, crop in zip((1, 4, 16), crops):
        side = size * d
        ref = _reference(src, cx - side // 2, cy - side // 2, side, d)
        np.testing.assert_allclose(crop, ref, rtol=1e-6)
        # the centre pixel is the block whose top-left source pixel is the centre
        np.testing.assert_allclose(crop[size // 2, size // 2],
                                   src[cy:cy + d, cx:cx + d].reshape(-1, 3).mean(0), rtol=1e-6)
    np.testing.assert_array_equal(crops[0][size // 2, size // 2], src[cy, cx])
    # the fine crop, block-averaged, is exactly the central part of the coarse crop (d=4)
    fine = crops[0].reshape(size // 4, 4, size // 4, 4, 3).mean(axis=(1, 3))
    lo, hi = size // 2 - size // 8, size // 2 + size // 8
    np.testing.assert_allclose(crops[1][lo:hi, lo:hi], fine, rtol=1e-6)


@pytest.mark.parametrize("centre", [(5, 3), (595, 497), (-40, 250), (300, 530)])
def test_border_crops_are_zero_padded_exactly(src: np.ndarray, centre: tuple[int, int]) -> None:
    cx, cy = centre
    size = 32
    crops, _ = multires_crops(src, centre, size, (1, 4))
    fine = crops[0]
    x0, y0 = cx - size // 2, cy - size // 2
    rows, cols = np.arange(y0, y0 + size), np.arange(x0, x0 + size)
    inside = ((rows >= 0) & (rows < H))[:, None] & ((cols >= 0) & (cols < W))[None, :]
    assert (fine[~inside] == 0).all()
    assert (fine[inside] > 0).all()  # every source pixel is > 0
    np.testing.assert_array_equal(fine[inside], src[rows.clip(0, H - 1)][:, cols.clip(0, W - 1)][inside])
    side = size * 4
    np.testing.assert_allclose(crops[1], _reference(src, cx - side // 2, cy - side // 2, side, 4), rtol=1e-6)


def test_label_crops_are_nearest_integers(src: np.ndarray, lab: np.ndarray) -> None:
    cx, cy, size = 290, 245, 32
    crops, labels = multires_crops(src, (cx, cy), size, (1, 4, 16), label=lab)
    assert labels is not None and len(labels) == 3
    for d, lcrop in zip((1, 4, 16), labels):
        assert lcrop.shape == (size, size) and lcrop.dtype == np.uint8
        assert set(np.unique(lcrop)) <= set(np.unique(lab))
        side = size * d
        ref = _reference(lab, cx - side // 2, cy - side // 2, side, d, nearest=True)
        np.testing.assert_array_equal(lcrop, ref)
    assert labels[0][size // 2, size // 2] == lab[cy, cx]
    assert 3 in labels[2]  # the disc survives at 16x
    # border label crops pad with background
    _, border = multires_crops(src, (2, 2), size, (4,), label=ArrayImage(lab, label=True))
    assert (border[0][: size // 2 - 1, :] == 0).all()


def test_da_refinenet_pair_and_msn_triple_shapes(src: np.ndarray, lab: np.ndarray) -> None:
    image = ArrayImage(src)
    label = ArrayImage(lab, label=True)
    pair, pair_lab = multires_crops(image, (300, 250), 64, (1, 4), label=label)
    assert [c.shape for c in pair] == [(64, 64, 3)] * 2
    assert [c.shape for c in pair_lab] == [(64, 64)] * 2
    triple, triple_lab = multires_crops(image, (300, 250), 32, (1, 4, 16), label=label)
    assert [c.shape for c in triple] == [(32, 32, 3)] * 3
    assert [c.shape for c in triple_lab] == [(32, 32)] * 3
    odd, _ = multires_crops(image, (300, 250), 33, (1, 2.5))  # non-integer downsample
    assert [c.shape for c in odd] == [(33, 33, 3)] * 2


def test_argument_checks(src: np.ndarray, lab: np.ndarray) -> None:
    with pytest.raises(ValueError, match="label=True"):
        multires_crops(src, (10, 10), 8, (1,), label=ArrayImage(lab))
    with pytest.raises(DataError, match="differs"):
        multires_crops(src, (10, 10), 8, (1,), label=lab[:100])
    with pytest.raises(ValueError, match="downsamples"):
        multires_crops(src, (10, 10), 8, (1, 0))
    with pytest.raises(DataError, match="single-channel"):
        ArrayImage(src, label=True)
    with pytest.raises(DataError, match="non-integer"):
        ArrayImage(np.full((4, 4), 0.5), label=True)


# ---------------------------------------------------------------- shared read plan (SlideImage logic)


def test_best_level_and_plan() -> None:
    levels = (1.0, 4.0003, 16.0012)
    assert best_level(levels, 1) == 0
    assert best_level(levels, 3.9) == 0
    assert best_level(levels, 4) == 1  # tolerance for scanner-rounded downsamples
    assert best_level(levels, 15) == 1
    assert best_level(levels, 64) == 2
    plan = plan_read(100, 40, 64, 64, 4, (1.0, 4.0, 16.0))
    assert (plan.level, plan.level_box, plan.out_size) == (1, (25, 10, 16, 16), (16, 16))
    assert plan.window == (0.0, 0.0, 16.0, 16.0)
    assert plan.location == (100, 40)
    plan = plan_read(102, -6, 64, 64, 8, (1.0, 4.0, 16.0))
    assert plan.level == 1 and plan.level_box == (25, -2, 17, 17)
    assert plan.window == (0.5, 0.5, 16.0, 16.0) and plan.out_size == (8, 8)
    assert plan_read(0, 0, 10, 10, 1).level_box == (0, 0, 10, 10)


def test_fractional_resampling_is_the_exact_area_integral() -> None:
    row = np.array([0.0, 10.0, 20.0, 30.0]).reshape(1, 4, 1)
    got = resample_region(row, (0.5, 0.0, 3.0, 1.0), (2, 1))  # bins [0.5, 2) and [2, 3.5)
    np.testing.assert_allclose(got[0, :, 0], [10 / 1.5, 35 / 1.5], rtol=1e-6)
    up = resample_region(row, (0.0, 0.0, 4.0, 1.0), (8, 1))  # upsampling repeats pixels
    np.testing.assert_allclose(up[0, :, 0], np.repeat(row[0, :, 0], 2))
    labels = np.arange(12, dtype=np.int16).reshape(3, 4, 1)
    near = resample_region(labels, (0.0, 0.0, 4.0, 3.0), (2, 1), label=True)
    # nearest samples at output pixel centres: row 1, cols 1 and 3
    assert near.dtype == np.int16 and near[..., 0].tolist() == [[5, 7]]


def test_read_padded_reads_only_inside() -> None:
    calls = []

    def reader(x: int, y: int, w: int, h: int) -> np.ndarray:
        calls.append((x, y, w, h))
        return np.ones((h, w, 2), np.uint8)

    out = read_padded(-3, 8, 10, 5, (20, 10), 2, np.uint8, reader)
    assert calls == [(0, 8, 7, 2)]
    assert out.shape == (5, 10, 2) and out.sum() == 7 * 2 * 2
    assert (out[:2, 3:] == 1).all() and (out[:, :3] == 0).all() and (out[2:] == 0).all()
    calls.clear()
    assert not read_padded(30, 30, 4, 4, (20, 10), 2, np.uint8, reader).any() and not calls


def _pyramid(base: np.ndarray, downsamples: tuple[int, ...]) -> list[np.ndarray]:
    out = []
    for d in downsamples:
        h, w = base.shape[0] // d, base.shape[1] // d
        out.append(base[:h * d, :w * d].reshape(h, d, w, d, -1).mean(axis=(1, 3)))
    return out


class _FakePyramid(LargeImage):
    """A 3-level in-memory pyramid: exercises level choice and fractional windows."""

    def __init__(self, base: np.ndarray, downsamples: tuple[int, ...] = (1, 2, 4)) -> None:
        self._levels = _pyramid(base, downsamples)
        self._ds = tuple(float(d) for d in downsamples)
        self.read_levels: list[int] = []

    level_downsamples = property(lambda self: self._ds)
    level_dimensions = property(lambda self: tuple((a.shape[1], a.shape[0]) for a in self._levels))
    channels = property(lambda self: self._levels[0].shape[2])
    dtype = property(lambda self: np.dtype(np.float64))

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        self.read_levels.append(level)
        arr = self._levels[level]
        return read_padded(x, y, width, height, self.level_dimensions[level], self.channels, self.dtype,
                           lambda x0, y0, w, h: arr[y0:y0 + h, x0:x0 + w])


def test_pyramid_levels_match_level0_area_average(src: np.ndarray) -> None:
    # piecewise constant on aligned 4x4 blocks: any level gives the exact area average
    base = np.repeat(np.repeat(src[::4, ::4], 4, axis=0), 4, axis=1)[:H, :W]
    flat, pyr = ArrayImage(base), _FakePyramid(base)
    for (x, y, side, d, level) in [(96, 40, 128, 4, 2), (96, 40, 128, 8, 2), (-20, 40, 96, 3, 1),
                                   (101, 37, 120, 5, 2), (590, 490, 64, 2, 1)]:
        pyr.read_levels.clear()
        got = pyr.read_region(x, y, side, side, d)
        assert pyr.read_levels == [level]
        np.testing.assert_allclose(got, flat.read_region(x, y, side, side, d), rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- SlideImage via a fake openslide


def _fake_openslide(base: np.ndarray, stored: tuple[float, ...] = (1.0, 4.0, 16.0)) -> types.ModuleType:
    levels = _pyramid(base, (1, 4, 16))
    mod = types.ModuleType("openslide")

    class OpenSlideError(Exception):
        pass

    class OpenSlide:
        level_downsamples = stored
        level_dimensions = tuple((a.shape[1], a.shape[0]) for a in levels)
        dimensions = level_dimensions[0]

        def __init__(self, path: str) -> None:
            if Path(path).read_bytes() != b"fake slide":
                raise OpenSlideError("Unsupported or missing image file")
            self.requests: list = []

        def get_best_level_for_downsample(self, d: float) -> int:  # OpenSlide's rule
            for i in range(1, len(self.level_downsamples)):
                if d < self.level_downsamples[i]:
                    return i - 1
            return len(self.level_downsamples) - 1

        def read_region(self, location, level, size):
            self.requests.append((location, level, size))
            ds = round(self.level_downsamples[level])
            x, y = location[0] // ds, location[1] // ds
            rgb = levels[level][y:y + size[1], x:x + size[0]].round().astype(np.uint8)
            rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
            return Image.fromarray(rgba, "RGBA")

        def close(self) -> None:
            pass

    mod.OpenSlide, mod.OpenSlideError = OpenSlide, OpenSlideError
    return mod


def test_slide_image_reads_pyramid_levels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    base = np.repeat(np.repeat(rng.integers(1, 256, (32, 40, 3)), 16, axis=0), 16, axis=1).astype(np.float64)
    monkeypatch.setitem(sys.modules, "openslide", _fake_openslide(base))
    path = tmp_path / "slide.svs"
    path.write_bytes(b"fake slide")
    with open_large_image(path) as slide:
        assert isinstance(slide, SlideImage) and slide.size == (640, 512) and slide.channels == 3
        flat = ArrayImage(base.astype(np.uint8))
        crops, _ = multires_crops(slide, (320, 256), 32, (1, 4, 16))
        ref, _ = multires_crops(flat, (320, 256), 32, (1, 4, 16))
        for got, want in zip(crops, ref):
            np.testing.assert_allclose(got, want, atol=1e-3)
        assert [lvl for _, lvl, _ in slide._slide.requests] == [0, 1, 2]
        corner, _ = multires_crops(slide, (0, 0), 32, (16,))
        assert (corner[0][:16, :] == 0).all() and (corner[0][16:, 16:] > 0).all()
    # scanners store downsamples like 4.0002: the 4x level still serves 4x (OpenSlide alone says 0)
    monkeypatch.setitem(sys.modules, "openslide", _fake_openslide(base, (1.0, 4.0002, 16.001)))
    with SlideImage(path) as slide:
        crops, _ = multires_crops(slide, (320, 256), 32, (1, 4, 16))
        assert [lvl for _, lvl, _ in slide._slide.requests] == [0, 1, 2]
        for got, want in zip(crops, ref):  # sub-pixel shifts of the stored geometry only
            assert np.abs(got - want).mean() < 0.5
    bad = tmp_path / "bad.ndpi"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.ndpi"):
        open_large_image(bad)


def test_slide_image_without_openslide_says_what_to_install(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openslide", None)  # import openslide -> ImportError
    path = tmp_path / "slide.svs"
    path.write_bytes(b"not really a slide")
    with pytest.raises(DataError, match="pip install openslide-python openslide-bin") as info:
        SlideImage(path)
    assert "slide.svs" in str(info.value)
    assert not mr.openslide_available()
    with pytest.raises(DataError, match=OPENSLIDE_INSTALL) as info:  # falls back to PIL, which fails
        open_large_image(tmp_path / "slide.svs")
    assert "slide.svs" in str(info.value)


# ---------------------------------------------------------------- files


def test_open_png_and_label_png(tmp_path: Path, src: np.ndarray, lab: np.ndarray,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    rgb = (src % 256).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "big.png")
    Image.fromarray(lab, "L").save(tmp_path / "big_label.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # far below 600x500
    image = open_large_image(tmp_path / "big.png")
    assert Image.MAX_IMAGE_PIXELS == 1000  # lifted for the read only
    assert isinstance(image, ArrayImage) and image.size == (W, H) and image.channels == 3
    np.testing.assert_array_equal(image.read_region(10, 20, 30, 40), rgb[20:60, 10:40])
    label = open_large_image(tmp_path / "big_label.png", label=True)
    assert label.label and label.dtype == np.uint8
    _, labels = multires_crops(image, (300, 250), 16, (1, 8), label=label)
    assert set(np.unique(labels[1])) <= {0, 1, 2, 3}
    with pytest.raises(DataError, match="big.png"):
        ArrayImage.from_file(tmp_path / "big.png", max_pixels=1000)
    with pytest.raises(DataError, match="single-channel"):
        open_large_image(tmp_path / "big.png", label=True)


def test_open_corrupt_or_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(DataError, match="scan.png: unreadable image file"):
        open_large_image(bad)
    with pytest.raises(DataError, match="missing.tif: file not found"):
        open_large_image(tmp_path / "missing.tif")


# ---------------------------------------------------------------- centres


def test_sample_centres_oversamples_foreground(lab: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    fg = np.zeros((H, W), np.uint8)
    fg[100:140, 200:260] = 1  # 0.8 % of the image
    centres = sample_centres(fg, 200, np.random.default_rng(1), foreground_fraction=0.5)
    assert centres.shape == (200, 2) and centres.dtype == np.int64
    assert (centres[:, 0] >= 0).all() and (centres[:, 0] < W).all()
    assert (centres[:, 1] >= 0).all() and (centres[:, 1] < H).all()
    hits = fg[centres[:, 1], centres[:, 0]].sum()
    assert 100 <= hits < 120
    again = sample_centres(ArrayImage(fg, label=True), 200, 1, foreground_fraction=0.5)
    np.testing.assert_array_equal(again, centres)  # same draw from the same seed
    uniform = sample_centres((W, H), 50, 0)
    assert uniform.shape == (50, 2) and uniform[:, 0].max() < W and uniform[:, 1].max() < H
    assert sample_centres(np.zeros((H, W), np.uint8), 10, 0).shape == (10, 2)  # no foreground
    assert sample_centres(fg, 0, 0).shape == (0, 2)

    class Duck:  # a large label that is not in memory: foreground found on a coarse read
        size = (W, H)

        def read_region(self, x, y, w, h, d=1.0):
            return ArrayImage(fg, label=True).read_region(x, y, w, h, d)

    monkeypatch.setattr(mr, "_COARSE_MASK_SIDE", 100)
    coarse = sample_centres(Duck(), 100, 2, foreground_fraction=1.0)
    assert ((coarse[:, 0] >= 194) & (coarse[:, 0] < 266) & (coarse[:, 1] >= 94) & (coarse[:, 1] < 146)).all()
