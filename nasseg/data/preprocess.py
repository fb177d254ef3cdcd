"""Per-case preprocessing: crop to the non-zero region, resample to a target spacing, normalise.

:func:`prepare_case` reads one raw case, crops it to the bounding box of its non-zero image voxels
(any channel), and resamples image (linear) and label (nearest) to the target spacing (skipped when
the spacing already equals it; PNG data has spacing 1, so 2D sets are not resampled by default).
It also samples the foreground intensities (label > 0, before resampling) of "CT" channels, from
which :func:`ct_stats` derives the set-wide clip range (0.5 / 99.5 percentiles) and the mean/std of
the clipped foreground.  :func:`normalise` then maps "CT" channels to ``(clip(x) - mean) / std``
and every other channel kind to a per-case z-score.

Each case's ``meta`` holds what :func:`restore_label` needs to put a prediction back on the
original grid (see :data:`META_KEYS`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nasseg.data.arrays import DataError
from nasseg.data.formats import RawCase, RawDataset, read_image, read_label, read_spacing

__all__ = [
    "META_KEYS",
    "CTStats",
    "PreparedCase",
    "is_ct",
    "median_spacing",
    "resolve_target_spacing",
    "crop_to_nonzero",
    "resampled_shape",
    "resample",
    "ct_stats",
    "normalise",
    "prepare_case",
    "restore_label",
]

#: Keys of a preprocessed case's meta (values are JSON: lists, numbers, strings, None).
META_KEYS: tuple[str, ...] = (
    "case_id",              # case identifier
    "image_files",          # source image file(s), relative to the data set folder (posix)
    "label_file",           # source label file, relative, or None
    "original_shape",       # spatial shape of the source image
    "crop_bbox",            # [[start, stop], ...] per spatial axis, in source voxels
    "cropped_shape",        # spatial shape after cropping
    "preprocessed_shape",   # spatial shape after resampling (the stored arrays)
    "original_spacing",     # source voxel spacing
    "target_spacing",       # spacing resampled to
    "resampled",            # False when the source spacing already equalled the target
    "affine",               # source 4x4 voxel -> world affine (NIfTI) or None
    "preprocessed_affine",  # 4x4 affine of the stored grid (half-voxel aligned) or None
    "normalisation",        # per channel {"kind", "scheme": "ct"|"zscore", "mean", "std", ["clip"]}
)

FOREGROUND_SAMPLES_PER_CASE = 100_000
_EPS = 1e-8


def is_ct(kind: str) -> bool:
    """Whether a channel kind gets the set-wide CT normalisation."""
    return kind.strip().upper() == "CT"


@dataclass
class CTStats:
    """Set-wide intensity statistics of one CT channel."""

    lower: float
    upper: float
    mean: float
    std: float


@dataclass
class PreparedCase:
    """A cropped, resampled, not yet normalised case plus its CT foreground samples."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    meta: dict[str, Any]
    foreground: dict[int, np.ndarray] = field(default_factory=dict)


def median_spacing(spacings: Sequence[Sequence[float]]) -> tuple[float, ...]:
    """Per-axis median of the cases' spacings."""
    return tuple(float(v) for v in np.median(np.asarray(spacings, dtype=np.float64), axis=0))


def resolve_target_spacing(dataset: RawDataset, target_spacing: Sequence[float] | None
                           ) -> tuple[float, ...]:
    """``target_spacing`` checked against the data set, or the set's median spacing when None."""
    if target_spacing is None:
        return median_spacing([read_spacing(c) for c in dataset.cases])
    target = tuple(float(v) for v in target_spacing)
    if len(target) != dataset.spatial_dims or not all(np.isfinite(v) and v > 0 for v in target):
        raise DataError(f"{dataset.folder}: target spacing {target} must be {dataset.spatial_dims} "
                        "positive numbers")
    return target


def crop_to_nonzero(image: np.ndarray, label: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None, list[list[int]]]:
    """Crop ``(C, *spatial)`` image (and label) to the box of voxels non-zero in any channel.

    Returns the cropped arrays and the box ``[[start, stop], ...]``; an all-zero image is kept whole.
    """
    mask = np.any(image != 0, axis=0)
    if not mask.any():
        bbox = [[0, int(s)] for s in mask.shape]
    else:
        bbox = []
        for axis in range(mask.ndim):
            other = tuple(a for a in range(mask.ndim) if a != axis)
            hits = np.flatnonzero(mask.any(axis=other))
            bbox.append([int(hits[0]), int(hits[-1]) + 1])
    sl = tuple(slice(a, b) for a, b in bbox)
    return image[(slice(None), *sl)], None if label is None else label[sl], bbox


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]
                    ) -> tuple[int, ...]:
    """Spatial shape covering the same extent at ``target`` spacing (at least 1 voxel per axis)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def _interpolate(array: np.ndarray, shape: tuple[int, ...], mode: str) -> np.ndarray:
    """Resize ``(C, *spatial)`` float32 to ``shape`` with torch (half-voxel aligned grids)."""
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    if mode == "linear":
        mode = "trilinear" if len(shape) == 3 else "bilinear"
        out = F.interpolate(t, size=shape, mode=mode, align_corners=False)
    else:
        out = F.interpolate(t, size=shape, mode="nearest-exact")
    return out[0].numpy()


def resample(image: np.ndarray, label: np.ndarray | None, spacing: Sequence[float],
             target: Sequence[float]) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Resample image (linear) and label (nearest) from ``spacing`` to ``target``.

    Returns ``(image, label, resampled)``; arrays are returned unchanged when the spacings are
    equal (relative tolerance 1e-3) or the shape would not change.
    """
    shape = tuple(image.shape[1:])
    new = resampled_shape(shape, spacing, target)
    if np.allclose(spacing, target, rtol=1e-3, atol=0) or new == shape:
        return image, label, False
    out_image = _interpolate(image, new, "linear")
    out_label = None
    if label is not None:
        out_label = np.rint(_interpolate(label[None].astype(np.float32), new, "nearest")[0]
                            ).astype(label.dtype)
    return out_image, out_label, True


def ct_stats(samples: Sequence[np.ndarray], source: str = "data set") -> CTStats:
    """Clip range (0.5 / 99.5 percentiles) and mean/std of the clipped foreground samples."""
    values = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in samples] or [np.empty(0)])
    if values.size == 0:
        raise DataError(f"{source}: no foreground voxels (label > 0) in any case; cannot compute the "
                        "CT normalisation")
    lower, upper = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    clipped = np.clip(values, lower, upper)
    return CTStats(lower, upper, float(clipped.mean()), max(float(clipped.std()), _EPS))


def normalise(image: np.ndarray, channel_kinds: Sequence[str], ct: dict[int, CTStats]
              ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Normalise each channel by its kind; returns float32 image and what was done per channel."""
    out = np.empty(image.shape, dtype=np.float32)
    info: list[dict[str, Any]] = []
    for c, kind in enumerate(channel_kinds):
        x = image[c].astype(np.float32, copy=False)
        if is_ct(kind):
            s = ct[c]
            out[c] = (np.clip(x, s.lower, s.upper) - s.mean) / s.std
            info.append({"kind": kind, "scheme": "ct", "clip": [s.lower, s.upper],
                         "mean": s.mean, "std": s.std})
        else:
            mean = float(x.mean(dtype=np.float64))
            std = max(float(x.std(dtype=np.float64)), _EPS)
            out[c] = (x - mean) / std
            info.append({"kind": kind, "scheme": "zscore", "mean": mean, "std": std})
    return out, info


def _relative(path: Path, folder: Path) -> str:
    return Path(os.path.relpath(path, folder)).as_posix()


def _preprocessed_affine(affine: np.ndarray, bbox: list[list[int]], cropped: Sequence[int],
                         new: Sequence[int]) -> np.ndarray:
    """Affine of the resampled grid: stored voxel i -> source voxel (i + .5) * scale - .5 + start."""
    scale = np.array([c / n for c, n in zip(cropped, new)], dtype=np.float64)
    offset = np.array([b[0] for b in bbox], dtype=np.float64) + 0.5 * scale - 0.5
    to_source = np.eye(4)
    to_source[:3, :3] = np.diag(scale)
    to_source[:3, 3] = offset
    return affine @ to_source


def prepare_case(dataset: RawDataset, raw_case: RawCase, target_spacing: Sequence[float],
                 index: int = 0, max_samples: int = FOREGROUND_SAMPLES_PER_CASE) -> PreparedCase:
    """Read, check, crop and resample one case; sample CT foreground (seeded by ``index``)."""
    image, spacing, affine = read_image(raw_case, len(dataset.channel_kinds))
    first = raw_case.image_files[0]
    if not np.isfinite(image).all():
        raise DataError(f"{first}: image contains NaN or inf values")
    label = None
    if raw_case.label_file is not None:
        label = read_label(raw_case)
        if label.shape != image.shape[1:]:
            raise DataError(f"{raw_case.label_file}: label shape {label.shape} differs from image "
                            f"{first.name} shape {image.shape[1:]}")
        if label.size and (label.min() < 0 or label.max() >= len(dataset.class_names)):
            bad = np.setdiff1d(np.unique(label), dataset.label_values)
            raise DataError(f"{raw_case.label_file}: label values {bad.tolist()} not in dataset.json "
                            f"labels 0..{len(dataset.class_names) - 1}")
    original_shape = [int(s) for s in image.shape[1:]]
    image, label, bbox = crop_to_nonzero(image, label)
    cropped_shape = [int(s) for s in image.shape[1:]]
    foreground: dict[int, np.ndarray] = {}
    if label is not None:
        fg = label > 0
        rng = np.random.default_rng(index)
        for c, kind in enumerate(dataset.channel_kinds):
            if is_ct(kind):
                values = image[c][fg]
                if values.size > max_samples:
                    values = values[rng.choice(values.size, max_samples, replace=False)]
                foreground[c] = values.astype(np.float32)
    image, label, resampled = resample(image, label, spacing, target_spacing)
    new_shape = [int(s) for s in image.shape[1:]]
    meta: dict[str, Any] = {
        "case_id": raw_case.case_id,
        "image_files": [_relative(f, dataset.folder) for f in raw_case.image_files],
        "label_file": None if raw_case.label_file is None else _relative(raw_case.label_file, dataset.folder),
        "original_shape": original_shape,
        "crop_bbox": bbox,
        "cropped_shape": cropped_shape,
        "preprocessed_shape": new_shape,
        "original_spacing": [float(s) for s in spacing],
        "target_spacing": [float(s) for s in target_spacing],
        "resampled": resampled,
        "affine": None if affine is None else affine.tolist(),
        "preprocessed_affine": None if affine is None else
        _preprocessed_affine(affine, bbox, cropped_shape, new_shape).tolist(),
        "normalisation": None,
    }
    return PreparedCase(raw_case.case_id, image, label, meta, foreground)


def restore_label(prediction: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Map a label map on the preprocessed grid back onto the source image grid.

    Resamples (nearest) to the cropped shape and pastes into zeros of the original shape at the
    crop box; save the result with ``meta["affine"]``.
    """
    pred = np.asarray(prediction)
    if list(pred.shape) != list(meta["preprocessed_shape"]):
        raise ValueError(f"prediction shape {pred.shape} != preprocessed shape {meta['preprocessed_shape']}")
    cropped = tuple(meta["cropped_shape"])
    if pred.shape != cropped:
        pred = np.rint(_interpolate(pred[None].astype(np.float32), cropped, "nearest")[0]).astype(pred.dtype)
    out = np.zeros(meta["original_shape"], dtype=pred.dtype)
    out[tuple(slice(a, b) for a, b in meta["crop_bbox"])] = pred
    return out
