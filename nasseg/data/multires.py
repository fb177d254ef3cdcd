"""Multi-resolution crops of large images: the inputs of multi-magnification segmentation methods.

Histopathology networks such as MSN (crops ``X1, X2, X3`` at e.g. 16x / 4x / 1x relative
downsampling) and DA-RefineNet (a fine patch A plus a coarse context patch B centred on A and
downsampled to A's size) see the same location of a large image at several magnifications.
:func:`multires_crops` cuts those crops: for each downsample ``d`` the level-0 box of side
``size * d`` centred on one point, resampled to ``size x size``, with the matching label crops.

Large images implement :class:`LargeImage`: ``size`` (level-0 ``(width, height)``) and
``read_region(x, y, width, height, downsample)``.  Two back ends share all geometry and
resampling code (:func:`plan_read`, :func:`resample_region`, :func:`read_padded`):

* :class:`ArrayImage`: a numpy array in memory (e.g. a big PNG/TIFF read with PIL, see
  :meth:`ArrayImage.from_file`), one level, area-averaged downsampling; ``label=True`` uses
  nearest sampling so label maps stay integers.
* :class:`SlideImage`: a whole-slide pyramid read through OpenSlide (``pip install
  openslide-python openslide-bin``); the pyramid level nearest below the requested downsample is
  read and the remaining factor is resampled here.
* :class:`TiffImage`: a TIFF (tiled or in strips, pyramid levels when the file has them) read
  through ``tifffile``: only the tiles or strips a region touches are read and decoded, so an
  image far larger than memory is never loaded whole.

Conventions: coordinates are level-0 pixels ``(x, y)`` = (column, row); arrays are
``(rows, cols, channels)``; everything outside the image reads as zeros (zero padding);
image crops are float32, label crops keep the label's integer dtype.
"""
from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from nasseg.data.arrays import DataError

__all__ = [
    "LargeImage",
    "LargeImageLike",
    "ReadPlan",
    "ArrayImage",
    "SlideImage",
    "TiffImage",
    "best_level",
    "plan_read",
    "read_padded",
    "resample_region",
    "open_large_image",
    "openslide_available",
    "tifffile_available",
    "multires_crops",
    "sample_centres",
    "OPENSLIDE_INSTALL",
    "SLIDE_SUFFIXES",
]

OPENSLIDE_INSTALL = "pip install openslide-python openslide-bin"
"""What to install for whole-slide pyramids (the Python binding plus the OpenSlide library)."""

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".tif", ".tiff")
"""File suffixes opened through OpenSlide when it is installed."""

_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
"""Suffixes PIL reads as one flat image (plain TIFF pages included; SVS is a TIFF too)."""

_LEVEL_TOLERANCE = 1e-3
"""Relative slack when matching pyramid levels: scanners store 4.0003 for a 4x level."""

_SNAP = 1e-6


# --------------------------------------------------------------------------------------------
# Shared geometry and resampling (used by every back end; unit-tested without OpenSlide)
# --------------------------------------------------------------------------------------------


def best_level(level_downsamples: Sequence[float], downsample: float) -> int:
    """Index of the coarsest pyramid level whose downsample does not exceed ``downsample``.

    Same rule as OpenSlide's ``get_best_level_for_downsample`` but with a small relative
    tolerance, so a level stored as ``4.0003`` serves a requested downsample of 4.
    """
    limit = float(downsample) * (1.0 + _LEVEL_TOLERANCE)
    best = 0
    for i, ds in enumerate(level_downsamples):
        if float(ds) <= limit:
            best = i
    return best


def _snap(v: float) -> float:
    """``v`` rounded to the nearest integer when within float noise of it."""
    r = round(v)
    return float(r) if abs(v - r) < _SNAP else float(v)


@dataclass(frozen=True)
class ReadPlan:
    """How to serve one ``read_region`` request from one pyramid level.

    Attributes:
        level: pyramid level to read.
        level_downsample: that level's downsample relative to level 0.
        level_box: ``(x, y, width, height)`` in that level's pixels, whole pixels covering the box.
        window: ``(x, y, width, height)`` of the requested box inside the array read for
            ``level_box`` (level pixels, may be fractional on levels above 0).
        out_size: ``(width, height)`` of the result.
    """

    level: int
    level_downsample: float
    level_box: tuple[int, int, int, int]
    window: tuple[float, float, float, float]
    out_size: tuple[int, int]

    @property
    def location(self) -> tuple[int, int]:
        """Level-0 ``(x, y)`` of the first pixel of ``level_box`` (what OpenSlide's read_region takes)."""
        return (int(round(self.level_box[0] * self.level_downsample)),
                int(round(self.level_box[1] * self.level_downsample)))


def plan_read(x: int, y: int, width: int, height: int, downsample: float,
              level_downsamples: Sequence[float] = (1.0,), level: int | None = None) -> ReadPlan:
    """Turn a level-0 box plus a downsample into a :class:`ReadPlan`.

    The output is ``round(width / downsample) x round(height / downsample)`` pixels (at least 1).
    ``level`` defaults to :func:`best_level` for ``downsample``.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"region width and height must be positive, got {width}x{height}")
    if not downsample > 0 or not math.isfinite(downsample):
        raise ValueError(f"downsample must be a positive number, got {downsample}")
    if level is None:
        level = best_level(level_downsamples, downsample)
    if not 0 <= level < len(level_downsamples):
        raise ValueError(f"level {level} outside 0..{len(level_downsamples) - 1}")
    ds = float(level_downsamples[level])
    out_w = max(1, int(round(width / downsample)))
    out_h = max(1, int(round(height / downsample)))
    fx, fy = _snap(x / ds), _snap(y / ds)
    fw, fh = _snap(width / ds), _snap(height / ds)
    lx, ly = math.floor(fx), math.floor(fy)
    rx, ry = math.ceil(_snap(fx + fw)), math.ceil(_snap(fy + fh))
    return ReadPlan(level=level, level_downsample=ds,
                    level_box=(lx, ly, max(1, rx - lx), max(1, ry - ly)),
                    window=(fx - lx, fy - ly, fw, fh), out_size=(out_w, out_h))


def read_padded(x: int, y: int, width: int, height: int, bounds: tuple[int, int],
                channels: int, dtype: Any,
                reader: Callable[[int, int, int, int], np.ndarray]) -> np.ndarray:
    """``(height, width, channels)`` array of the box, zeros where it leaves ``bounds`` = (W, H).

    ``reader(x, y, width, height)`` is only called for the part inside the bounds and must
    return ``(height, width, channels)``.
    """
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, bounds[0]), min(y + height, bounds[1])
    if (x0, y0, x1, y1) == (x, y, x + width, y + height):
        return reader(x, y, width, height)  # wholly inside: no copy (a view for arrays)
    out = np.zeros((height, width, channels), dtype=dtype)
    if x1 > x0 and y1 > y0:
        out[y0 - y:y1 - y, x0 - x:x1 - x] = reader(x0, y0, x1 - x0, y1 - y0)
    return out


def _area_axis(a: np.ndarray, axis: int, start: float, length: float, out: int) -> np.ndarray:
    """Area-average the interval ``[start, start + length)`` of ``a`` along ``axis`` into ``out`` bins."""
    n = a.shape[axis]
    scale = length / out
    k = int(round(scale))
    if float(start).is_integer() and _snap(scale) == k and k >= 1 and start + k * out <= n:
        s = int(start)
        index = [slice(None)] * a.ndim
        index[axis] = slice(s, s + k * out)
        part = a[tuple(index)]
        shape = part.shape[:axis] + (out, k) + part.shape[axis + 1:]
        return part.reshape(shape).mean(axis=axis + 1, dtype=np.float64)
    # general (fractional) case: exact integral of the piecewise-constant signal.  With edges
    # e_k = b_k + f_k (b_k whole pixels), bin k sums a[b_k:b_{k+1}] + f_{k+1} a[b_{k+1}] - f_k a[b_k].
    edges = np.clip(start + np.arange(out + 1) * scale, 0.0, float(n))
    base = np.clip(np.floor(edges).astype(np.int64), 0, n - 1)
    shape = [1] * a.ndim
    shape[axis] = out + 1
    frac = (edges - base).reshape(shape)
    blocks = np.take(np.add.reduceat(a, base, axis=axis, dtype=np.float64), np.arange(out), axis=axis)
    shape[axis] = out
    blocks *= (np.diff(base) > 0).reshape(shape)  # reduceat gives a[b] for an empty [b, b)
    ends = frac * np.take(a, base, axis=axis)
    return (blocks + np.diff(ends, axis=axis)) / scale


def _nearest_axis(a: np.ndarray, axis: int, start: float, length: float, out: int) -> np.ndarray:
    """Nearest sampling (output pixel centres) of ``[start, start + length)`` along ``axis``."""
    scale = length / out
    pos = np.array([_snap(start + (k + 0.5) * scale) for k in range(out)])
    idx = np.clip(np.floor(pos).astype(np.int64), 0, a.shape[axis] - 1)
    return np.take(a, idx, axis=axis)


def resample_region(region: np.ndarray, window: tuple[float, float, float, float],
                    out_size: tuple[int, int], label: bool = False) -> np.ndarray:
    """Resample the ``window`` (x, y, width, height) of an ``(H, W, C)`` region to ``out_size``.

    Images are area-averaged (exact block means for integer factors) and returned as float32;
    labels (``label=True``) use nearest sampling at output pixel centres and keep their dtype.
    """
    wx, wy, ww, wh = window
    out_w, out_h = out_size
    if label:
        rows = _nearest_axis(region, 0, wy, wh, out_h)
        return np.ascontiguousarray(_nearest_axis(rows, 1, wx, ww, out_w))
    rows = _area_axis(region, 0, wy, wh, out_h)
    return np.ascontiguousarray(_area_axis(rows, 1, wx, ww, out_w), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Large images
# --------------------------------------------------------------------------------------------


@runtime_checkable
class LargeImageLike(Protocol):
    """What :func:`multires_crops` needs of an image: any object with these two members works."""

    @property
    def size(self) -> tuple[int, int]: ...

    def read_region(self, x: int, y: int, width: int, height: int,
                    downsample: float = 1.0) -> np.ndarray: ...


class LargeImage(ABC):
    """A large 2-D image (possibly a pyramid) read one region at a time.

    Subclasses describe their levels (``size``, ``level_dimensions``, ``level_downsamples``,
    ``channels``, ``dtype``) and implement :meth:`_read_level`; :meth:`read_region` is shared.
    ``label`` images are resampled with nearest sampling and keep integer values.
    """

    label: bool = False

    @property
    @abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` of every pyramid level, level 0 first."""

    @property
    @abstractmethod
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample of every pyramid level relative to level 0 (increasing)."""

    @property
    @abstractmethod
    def channels(self) -> int:
        """Channels of the arrays :meth:`read_region` returns."""

    @property
    @abstractmethod
    def dtype(self) -> np.dtype:
        """dtype of the stored pixels (label crops keep it; image crops are float32)."""

    @abstractmethod
    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """``(height, width, channels)`` pixels of ``level`` (level pixel coordinates), zero-padded."""

    @property
    def size(self) -> tuple[int, int]:
        """Level-0 ``(width, height)``."""
        return self.level_dimensions[0]

    def _best_level(self, downsample: float) -> int:
        return best_level(self.level_downsamples, downsample)

    def read_region(self, x: int, y: int, width: int, height: int, downsample: float = 1.0) -> np.ndarray:
        """The level-0 box ``(x, y, width, height)`` resampled by ``downsample``.

        Returns ``(round(height / downsample), round(width / downsample), channels)``: float32
        area averages for images, nearest samples in the stored dtype for labels.  Parts of the
        box outside the image are zeros.
        """
        plan = plan_read(int(x), int(y), int(width), int(height), float(downsample),
                         self.level_downsamples, level=self._best_level(float(downsample)))
        region = self._read_level(plan.level, *plan.level_box)
        return resample_region(region, plan.window, plan.out_size, label=self.label)

    def close(self) -> None:
        """Release file handles (nothing to do for in-memory images)."""

    def __enter__(self) -> LargeImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_label_array(arr: np.ndarray, source: str) -> np.ndarray:
    """Integer view/copy of a label map; DataError for non-integer values."""
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{source}: label data of type {arr.dtype} is not numeric")
    if not np.isfinite(arr).all() or not np.equal(np.round(arr), arr).all():
        raise DataError(f"{source}: label map holds non-integer values")
    return arr.astype(np.int32)


class ArrayImage(LargeImage):
    """An in-memory image: ``(H, W)`` or ``(H, W, C)`` numpy array, one pyramid level.

    Downsampling averages areas (images) or samples the nearest pixel (``label=True``).  The
    array is kept as given (no copy) except that labels must be integer (bool/integral floats
    are converted) and single-channel.
    """

    def __init__(self, array: np.ndarray, label: bool = False, source: str = "array") -> None:
        arr = np.asarray(array)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
            raise DataError(f"{source}: expected a non-empty (H, W) or (H, W, C) array, "
                            f"got shape {arr.shape}")
        if label:
            if arr.shape[2] != 1:
                raise DataError(f"{source}: a label map must be single-channel, got shape {arr.shape}")
            arr = _as_label_array(arr, source)
        elif not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise DataError(f"{source}: image data of type {arr.dtype} is not numeric")
        self.array = arr
        self.label = bool(label)
        self.source = source

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], label: bool = False,
                  max_pixels: int | None = None) -> ArrayImage:
        """Read a PNG/JPEG/TIFF (first page) with PIL into memory.

        PIL refuses images above ``Image.MAX_IMAGE_PIXELS`` (~179 Mpx) as a decompression-bomb
        guard; large images are the point here, so the guard is lifted for this read only
        (``max_pixels=None``) or set to ``max_pixels``.  The global setting is restored after.
        Colour images become RGB (alpha and palettes resolved), labels keep their integer values
        (palette PNGs give their indices).  Any failure is one :class:`DataError` naming the file.
        """
        from PIL import Image, UnidentifiedImageError

        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            with Image.open(path) as img:
                if not label:  # (a mode "1" label reads as bool, kept as 0/1)
                    if img.mode == "1":
                        img = img.convert("L")
                    if img.mode == "P":
                        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                    if img.mode in ("RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"):
                        img = img.convert("RGB")
                    elif img.mode in ("LA", "La"):
                        img = img.convert("L")
                img.load()
                arr = np.asarray(img)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError,
                SyntaxError, MemoryError) as exc:
            raise DataError(f"{path}: unreadable image file ({type(exc).__name__}: {exc})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved
        return cls(arr, label=label, source=str(path))

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return ((int(self.array.shape[1]), int(self.array.shape[0])),)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return (1.0,)

    @property
    def channels(self) -> int:
        return int(self.array.shape[2])

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return read_padded(x, y, width, height, self.size, self.channels, self.dtype,
                           lambda x0, y0, w, h: self.array[y0:y0 + h, x0:x0 + w])

    def __repr__(self) -> str:
        w, h = self.size
        return f"ArrayImage({self.source}, {w}x{h}x{self.channels}, label={self.label})"


def _import_openslide(path: str | os.PathLike[str] | None = None) -> Any:
    """The ``openslide`` module, or DataError with the install command."""
    try:
        import openslide
    except (ImportError, OSError) as exc:  # OSError: binding present, C library missing
        where = f"{path}: " if path is not None else ""
        raise DataError(f"{where}reading whole-slide images needs OpenSlide: {OPENSLIDE_INSTALL} "
                        f"({type(exc).__name__}: {exc})") from None
    return openslide


def openslide_available() -> bool:
    """Whether the ``openslide`` package (and its library) can be imported."""
    try:
        _import_openslide()
    except DataError:
        return False
    return True


class SlideImage(LargeImage):
    """A whole-slide pyramid (``.svs``, ``.ndpi``, ``.mrxs``, tiled ``.tif`` ...) read with OpenSlide.

    Each request reads the level OpenSlide's ``get_best_level_for_downsample`` picks and
    resamples the remaining factor like :class:`ArrayImage`.  RGBA is returned as RGB with fully
    transparent pixels (outside the slide or the scanned area) set to 0.  ``label=True`` reads
    the first channel of a mask pyramid with nearest sampling.
    """

    def __init__(self, path: str | os.PathLike[str], label: bool = False) -> None:
        self.path = Path(path)
        openslide = _import_openslide(self.path)
        if not self.path.exists():
            raise DataError(f"{self.path}: file not found")
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            raise DataError(f"{self.path}: OpenSlide cannot read this file "
                            f"({type(exc).__name__}: {exc})") from None
        self.label = bool(label)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self._slide.level_downsamples)

    @property
    def channels(self) -> int:
        return 1 if self.label else 3

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def _best_level(self, downsample: float) -> int:
        return int(self._slide.get_best_level_for_downsample(downsample * (1.0 + _LEVEL_TOLERANCE)))

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        ds = self.level_downsamples[level]

        def reader(x0: int, y0: int, w: int, h: int) -> np.ndarray:
            location = (int(round(x0 * ds)), int(round(y0 * ds)))
            rgba = np.asarray(self._slide.read_region(location, level, (w, h)))
            rgb = rgba[..., :3].copy()
            rgb[rgba[..., 3] == 0] = 0
            return rgb[..., :1] if self.label else rgb

        return read_padded(x, y, width, height, self.level_dimensions[level],
                           self.channels, self.dtype, reader)

    def close(self) -> None:
        self._slide.close()

    def __repr__(self) -> str:
        w, h = self.size
        return f"SlideImage({self.path}, {w}x{h}, levels={len(self.level_downsamples)}, label={self.label})"


class TiffImage(LargeImage):
    """A TIFF read tile by tile (or strip by strip) with ``tifffile``; pyramid levels are the
    file's own (sub-resolution pages of its first series). Only the segments a region touches
    are read and decoded; the last few decoded segments are kept for neighbouring reads."""

    _CACHE = 32

    def __init__(self, path: str | os.PathLike[str], label: bool = False) -> None:
        try:
            import tifffile
        except ImportError:
            raise DataError(f"{path}: reading TIFF region by region needs tifffile "
                            "(pip install tifffile)") from None
        self.path = Path(path)
        try:
            self._file = tifffile.TiffFile(str(self.path))
            series = self._file.series[0]
            self._pages = [level.pages[0] for level in series.levels]
        except (tifffile.TiffFileError, OSError, ValueError, IndexError) as exc:
            raise DataError(f"{self.path}: unreadable TIFF ({type(exc).__name__}: {exc})") from None
        page = self._pages[0]
        if page.samplesperpixel > 1 and page.planarconfig != 1:
            raise DataError(f"{self.path}: planar (separate-plane) TIFFs are not supported")
        if label and page.samplesperpixel != 1:
            raise DataError(f"{self.path}: a label map must be single-channel")
        self.label = bool(label)
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(p.imagewidth), int(p.imagelength)) for p in self._pages)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        width = self._pages[0].imagewidth
        return tuple(float(width) / float(p.imagewidth) for p in self._pages)

    @property
    def channels(self) -> int:
        return int(self._pages[0].samplesperpixel)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._pages[0].dtype)

    def _segment(self, level: int, index: int) -> np.ndarray:
        """Decoded tile or strip ``index`` of ``level`` as ``(rows, cols, channels)``."""
        key = (level, index)
        if key not in self._cache:
            page = self._pages[level]
            handle = self._file.filehandle
            handle.seek(page.dataoffsets[index])
            data, _, _ = page.decode(handle.read(page.databytecounts[index]), index)
            if len(self._cache) >= self._CACHE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = data.reshape(data.shape[-3:])
        return self._cache[key]

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        page = self._pages[level]
        tiled = page.is_tiled
        seg_h = page.tilelength if tiled else page.rowsperstrip
        seg_w = page.tilewidth if tiled else page.imagewidth
        per_row = -(-page.imagewidth // seg_w)

        def reader(x0: int, y0: int, w: int, h: int) -> np.ndarray:
            out = np.empty((h, w, self.channels), dtype=self.dtype)
            for row in range(y0 // seg_h, (y0 + h - 1) // seg_h + 1):
                for col in range(x0 // seg_w, (x0 + w - 1) // seg_w + 1):
                    seg = self._segment(level, row * per_row + col)
                    top, left = row * seg_h, col * seg_w
                    r0, r1 = max(y0, top), min(y0 + h, top + seg.shape[0])
                    c0, c1 = max(x0, left), min(x0 + w, left + seg.shape[1])
                    out[r0 - y0:r1 - y0, c0 - x0:c1 - x0] = seg[r0 - top:r1 - top,
                                                               c0 - left:c1 - left]
            return out

        return read_padded(x, y, width, height, self.level_dimensions[level], self.channels,
                           self.dtype, reader)

    def close(self) -> None:
        self._file.close()

    def __repr__(self) -> str:
        w, h = self.size
        return f"TiffImage({self.path}, {w}x{h}, levels={len(self._pages)}, label={self.label})"


def tifffile_available() -> bool:
    """Whether ``tifffile`` can be imported."""
    try:
        import tifffile  # noqa: F401
    except ImportError:
        return False
    return True


def open_large_image(path: str | os.PathLike[str], label: bool = False) -> LargeImage:
    """Open a large image: OpenSlide pyramids when available, else the whole image in memory via PIL.

    ``.svs/.ndpi/.mrxs/.scn/.tif(f)...`` go to :class:`SlideImage` when ``openslide`` imports;
    other ``.tif(f)`` files (and all of them without OpenSlide) are read region by region with
    :class:`TiffImage` when ``tifffile`` imports; PNG/JPEG and, without either,
    without OpenSlide, SVS (it is a TIFF: the full-resolution page is loaded) are read with
    :meth:`ArrayImage.from_file`.  Problems raise one :class:`DataError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    have_openslide = suffix in SLIDE_SUFFIXES and openslide_available()
    if have_openslide:
        try:
            return SlideImage(path, label=label)
        except DataError:
            if suffix not in _PIL_SUFFIXES:
                raise
    if suffix in (".tif", ".tiff") and tifffile_available():
        return TiffImage(path, label=label)
    try:
        return ArrayImage.from_file(path, label=label)
    except DataError as exc:
        if suffix in SLIDE_SUFFIXES and not have_openslide:
            raise DataError(f"{exc} (whole-slide formats need OpenSlide: {OPENSLIDE_INSTALL})") from None
        raise


# --------------------------------------------------------------------------------------------
# Crops and centres
# --------------------------------------------------------------------------------------------


def _as_large(image: Any, label: bool, what: str) -> LargeImageLike:
    if isinstance(image, np.ndarray):
        return ArrayImage(image, label=label, source=what)
    if isinstance(image, LargeImage):
        if image.label != label:
            kind = "a label (label=True)" if label else "an image (label=False)"
            raise ValueError(f"{what} must be opened as {kind}: "
                             "labels need nearest sampling, images area averaging")
        return image
    if isinstance(image, LargeImageLike):
        return image
    raise TypeError(f"{what} must be a numpy array or a LargeImage, got {type(image).__name__}")


def multires_crops(image: LargeImageLike | np.ndarray, centre_xy: tuple[float, float], size: int,
                   downsamples: Sequence[float],
                   label: LargeImageLike | np.ndarray | None = None,
                   ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Crops of ``size x size`` pixels around one level-0 point at several magnifications.

    For each downsample ``d`` (in the order given; by convention the first is the finest, e.g.
    ``(1, 4)`` for DA-RefineNet's patch A and context B, ``(1, 4, 16)`` for MSN) the level-0 box
    of side ``s = round(size * d)`` starting at ``centre - s // 2`` is read at downsample ``d``.
    The boxes are concentric, so the finest crop is exactly the central region of every coarser
    one, and the crop pixel ``[size // 2, size // 2]`` of every magnification covers the source
    pixel ``centre_xy``.  Outside the image the crops are zero.

    ``image``/``label`` may be numpy arrays (wrapped in :class:`ArrayImage`) or large images;
    ``label`` must match the image's size.  Returns ``(images, labels)``: float32
    ``(size, size, C)`` arrays and integer ``(size, size)`` label arrays (None without label).
    """
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size}")
    size = int(size)
    if len(downsamples) == 0:
        raise ValueError("downsamples must name at least one magnification")
    if any(not (d > 0 and math.isfinite(d)) for d in downsamples):
        raise ValueError(f"downsamples must be positive numbers, got {list(downsamples)}")
    img = _as_large(image, False, "image")
    lab = None if label is None else _as_large(label, True, "label")
    if lab is not None and tuple(lab.size) != tuple(img.size):
        raise DataError(f"label size {tuple(lab.size)} differs from image size {tuple(img.size)} "
                        "(width, height)")
    cx, cy = (int(round(v)) for v in centre_xy)
    crops: list[np.ndarray] = []
    labels: list[np.ndarray] | None = None if lab is None else []
    for d in downsamples:
        side = max(1, int(round(size * float(d))))
        x0, y0 = cx - side // 2, cy - side // 2
        crop = img.read_region(x0, y0, side, side, float(d))
        if crop.shape[:2] != (size, size):  # non-integer d: force the exact size
            crop = resample_region(crop, (0.0, 0.0, crop.shape[1], crop.shape[0]), (size, size))
        crops.append(crop)
        if labels is not None:
            lcrop = lab.read_region(x0, y0, side, side, float(d))
            if lcrop.shape[:2] != (size, size):
                lcrop = resample_region(lcrop, (0.0, 0.0, lcrop.shape[1], lcrop.shape[0]),
                                        (size, size), label=True)
            labels.append(np.ascontiguousarray(lcrop[..., 0]))
    return crops, labels


_COARSE_MASK_SIDE = 2048


def _foreground(label: Any) -> tuple[np.ndarray | None, float, float, tuple[int, int]]:
    """(foreground mask or None, x scale, y scale, level-0 (width, height)) of a label/shape."""
    if isinstance(label, np.ndarray):
        arr = label[..., 0] if label.ndim == 3 and label.shape[2] == 1 else label
        if arr.ndim != 2:
            raise ValueError(f"label array must be (H, W), got shape {label.shape}")
        return arr > 0, 1.0, 1.0, (int(arr.shape[1]), int(arr.shape[0]))
    if isinstance(label, ArrayImage):
        return label.array[..., 0] > 0, 1.0, 1.0, label.size
    if isinstance(label, LargeImageLike):
        w, h = (int(v) for v in label.size)
        d = max(1.0, max(w, h) / _COARSE_MASK_SIDE)
        mask = label.read_region(0, 0, w, h, d)[..., 0] > 0  # coarse map of where labels are
        return mask, w / mask.shape[1], h / mask.shape[0], (w, h)
    if isinstance(label, (tuple, list)) and len(label) == 2:
        w, h = (int(v) for v in label)
        if w < 1 or h < 1:
            raise ValueError(f"size must be positive (width, height), got {tuple(label)}")
        return None, 1.0, 1.0, (w, h)
    raise TypeError("expected a label array, a LargeImage label or a (width, height) size, "
                    f"got {type(label).__name__}")


def sample_centres(label_image_or_shape: Any, count: int,
                   rng: np.random.Generator | int | None = None,
                   foreground_fraction: float = 0.5) -> np.ndarray:
    """``(count, 2)`` int64 level-0 crop centres ``(x, y)``, oversampling labelled foreground.

    ``label_image_or_shape`` is a label map (``(H, W)`` array or label :class:`LargeImage`) or a
    level-0 ``(width, height)`` size (as ``LargeImage.size`` gives; not a numpy ``shape``).  With
    a label holding foreground (values > 0), ``round(count * foreground_fraction)`` centres are
    drawn uniformly among foreground pixels and the rest uniformly over the image; without
    foreground or label all are uniform.  Order is shuffled.  For non-array large labels the
    foreground is located on a coarse read (<= 2048 px a side) and jittered within its cell.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not 0.0 <= foreground_fraction <= 1.0:
        raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    mask, sx, sy, (w, h) = _foreground(label_image_or_shape)
    fg = None if mask is None else np.flatnonzero(mask)
    n_fg = int(round(count * foreground_fraction)) if fg is not None and fg.size else 0
    out = np.empty((count, 2), dtype=np.int64)
    if n_fg:
        pick = fg[rng.integers(0, fg.size, size=n_fg)]
        rows, cols = np.divmod(pick, mask.shape[1])
        xs = np.floor((cols + rng.random(n_fg)) * sx) if sx != 1.0 else cols
        ys = np.floor((rows + rng.random(n_fg)) * sy) if sy != 1.0 else rows
        out[:n_fg, 0] = np.clip(xs, 0, w - 1)
        out[:n_fg, 1] = np.clip(ys, 0, h - 1)
    out[n_fg:, 0] = rng.integers(0, w, size=count - n_fg)
    out[n_fg:, 1] = rng.integers(0, h, size=count - n_fg)
    return out[rng.permutation(count)]
