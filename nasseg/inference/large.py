"""Whole-image prediction of large 2D images, streamed window by window.

A large image (a whole-slide pyramid through OpenSlide, a tiled or striped TIFF through
``tifffile``, a PNG) is never loaded whole: every sliding window and each of its context crops
(:mod:`nasseg.data.views`, cut around the window from the whole image, zeros outside) is read
as a region (:meth:`nasseg.data.large_images.LargeImageSet.read`, the reads training used).
Windows run row by row; their Gaussian-weighted probabilities are summed into a buffer one
window high and as wide as the image, and each band of rows that no later window touches is
turned into labels and handed on. Peak memory is therefore
``O(classes x window height x image width)``, whatever the image's height, and the label map
is written as it comes: a tiled TIFF (``tifffile``) for large images, PNG for those small
enough to hold.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from nasseg.artifacts.files import atomic_path
from nasseg.data.arrays import DataError
from nasseg.data.large_images import LargeImageSet
from nasseg.data.multires import LargeImage
from nasseg.data.views import PATCH_VIEW, DataView
from nasseg.inference.sliding_window import (PredictFn, _predict_probs, gaussian_importance_map,
                                             window_starts)

__all__ = ["PNG_MAX_PIXELS", "TIFF_TILE", "predict_large_image", "write_label_bands",
           "label_format"]

#: Label maps with more pixels than this are written as tiled TIFF instead of PNG (16 Mpx:
#: a PNG is encoded from one array in memory).
PNG_MAX_PIXELS = 1 << 24
#: Tile side of written label TIFFs.
TIFF_TILE = 256


def _starts(size: int, patch: int, overlap: float) -> list[int]:
    """Window starts along one axis; an axis shorter than the window gets one centred window."""
    return window_starts(size, patch, overlap) if size >= patch else [-((patch - size) // 2)]


@torch.no_grad()
def predict_large_image(predict_fn: PredictFn, image: LargeImage, patch_size: Sequence[int],
                        num_classes: int, view: DataView = PATCH_VIEW, overlap: float = 0.5,
                        mirror: bool = False, batch_size: int = 16,
                        device: torch.device | str = "cpu") -> Iterator[np.ndarray]:
    """Labels of ``image`` as bands of whole rows, top to bottom (``(rows, width)`` int64).

    Windows of ``patch_size`` (rows, cols) overlap by ``overlap`` and are weighted by a Gaussian,
    as :func:`~nasseg.inference.sliding_window.sliding_window_predict` weighs them (the same
    labels); ``view``'s context crops are cut around every window from the whole image.
    """
    ph, pw = (int(p) for p in patch_size)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    data = LargeImageSet("predict", [image], [None], [str(c) for c in range(num_classes)],
                         (ph, pw))
    width, height = image.size
    rows, cols = _starts(height, ph, overlap), _starts(width, pw, overlap)
    weight = gaussian_importance_map((ph, pw)).numpy()
    acc = np.zeros((num_classes, ph, width), np.float32)
    for i, top in enumerate(rows):
        starts = [(top, left) for left in cols]
        for first in range(0, len(starts), batch_size):
            chunk = starts[first:first + batch_size]
            batch = {"image": torch.from_numpy(np.stack([data.read(0, s, (ph, pw), 1)
                                                         for s in chunk])).to(device)}
            if view.context:
                batch["context"] = torch.from_numpy(np.stack([
                    np.stack([data.read_context(0, s, (ph, pw), f) for f in view.context])
                    for s in chunk])).to(device)
            probs = _predict_probs(predict_fn, batch, mirror).cpu().numpy()
            for (_, left), p in zip(chunk, probs):
                c0, c1 = max(left, 0), min(left + pw, width)
                acc[:, :, c0:c1] += p[:, :, c0 - left:c1 - left] * weight[:, c0 - left:c1 - left]
        end = rows[i + 1] if i + 1 < len(rows) else top + ph
        lo, hi = max(top, 0), min(end, height)
        if hi > lo:
            yield acc[:, lo - top:hi - top].argmax(0)
        shift = min(end - top, ph)  # the next window starts ``shift`` rows lower
        acc[:, :ph - shift] = acc[:, shift:].copy()
        acc[:, ph - shift:] = 0.0


def label_format(width: int, height: int, fmt: str = "auto") -> str:
    """``png`` or ``tiff``: ``auto`` picks TIFF above :data:`PNG_MAX_PIXELS`."""
    if fmt not in ("auto", "png", "tiff"):
        raise ValueError(f"unknown label format {fmt!r}; use auto, png or tiff")
    if fmt != "auto":
        return fmt
    return "tiff" if width * height > PNG_MAX_PIXELS else "png"


def _tiles(bands: Iterable[np.ndarray], width: int, height: int, dtype: np.dtype,
           tile: int) -> Iterator[np.ndarray]:
    """Full ``tile x tile`` tiles in row-major order from bands of rows (the edges padded)."""
    pending: list[np.ndarray] = []
    have, done = 0, 0
    for band in bands:
        pending.append(band.astype(dtype, copy=False))
        have += band.shape[0]
        while have >= tile or (have and done + have >= height):
            rows = np.concatenate(pending) if len(pending) > 1 else pending[0]
            strip, rest = rows[:tile], rows[tile:]
            pending, have = ([rest] if len(rest) else []), len(rest)
            done += strip.shape[0]
            padded = np.zeros((tile, -(-width // tile) * tile), dtype)
            padded[:strip.shape[0], :width] = strip
            for left in range(0, width, tile):
                yield padded[:, left:left + tile]
    if done != height:
        raise DataError(f"the prediction gave {done} rows, the image has {height}")


def write_label_bands(bands: Iterable[np.ndarray], width: int, height: int, target: Path,
                      num_classes: int, fmt: str = "auto") -> Path:
    """Write a label map arriving as bands of rows to ``target`` (suffix set by the format),
    atomically: a tiled, deflate-compressed TIFF written tile row by tile row, or a PNG.
    The file is checked (TIFF: its size and type; PNG: read back whole) before it is named."""
    kind = label_format(width, height, fmt)
    dtype = np.dtype(np.uint8 if num_classes <= 256 else np.uint16)
    target = Path(target).with_suffix(".tif" if kind == "tiff" else ".png")
    with atomic_path(target, suffix=target.suffix) as tmp:
        if kind == "png":
            from PIL import Image

            label = np.concatenate(list(bands)).astype(dtype)
            Image.fromarray(label).save(tmp, format="PNG")
            ok = np.array_equal(np.asarray(Image.open(tmp)), label)
        else:
            import tifffile

            tifffile.imwrite(tmp, _tiles(bands, width, height, dtype, TIFF_TILE),
                             shape=(height, width), dtype=dtype,
                             tile=(TIFF_TILE, TIFF_TILE), compression="zlib")
            with tifffile.TiffFile(tmp) as back:
                page = back.pages[0]
                ok = page.shape == (height, width) and page.dtype == dtype and page.is_tiled
        if not ok:
            raise DataError(f"{target}: the written file does not read back as written")
    return target
