"""In-memory segmentation data set format shared by the whole toolkit.

A data set is a :class:`SegmentationData`: a stack of images and label maps plus
optional per-case metadata (class presence, scene label).  It is stored on disk as
a single ``.npz`` file (no pickles) and served to PyTorch through
:class:`~nasseg.data.patches.PatchDataset` via the :class:`~nasseg.data.cases.CaseSet`
interface it implements.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from nasseg.data.cases import Case

__all__ = [
    "DataError",
    "SegmentationData",
    "save_arrays",
    "load_arrays",
    "split_indices",
]

_REQUIRED_KEYS = ("name", "images", "labels", "class_names")


class DataError(ValueError):
    """A data set is missing, unreadable or inconsistent; the message names the source."""


@dataclass
class SegmentationData:
    """Images, label maps and optional per-case metadata of one data set.

    ``images`` is float32 ``(N, C, *spatial)`` with 2 or 3 spatial dims, ``labels`` is
    int64 ``(N, *spatial)`` with values in ``0..num_classes-1`` (0 = background).
    ``presence`` (float32 ``(N, num_classes-1)``) flags which foreground classes occur
    in each label map; ``scene`` (int64 ``(N,)``) is an optional case-level label whose
    names are ``scene_names``.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    presence: np.ndarray | None = None
    scene: np.ndarray | None = None
    scene_names: list[str] | None = None

    @property
    def spatial_dims(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self.images.ndim - 2

    @property
    def in_channels(self) -> int:
        """Number of image channels."""
        return int(self.images.shape[1])

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.class_names)

    @property
    def num_cases(self) -> int:
        """Number of cases (images) in the set."""
        return int(self.images.shape[0])

    @property
    def patch_size(self) -> tuple[int, ...]:
        """All cases share one shape: a patch is the whole case."""
        return tuple(int(s) for s in self.images.shape[2:])

    def case(self, index: int) -> Case:
        """Case ``index`` as a :class:`~nasseg.data.cases.Case` (views, not copies)."""
        return Case(
            case_id=f"{self.name}_{index:04d}",
            image=self.images[index],
            label=self.labels[index],
            presence=None if self.presence is None else self.presence[index],
            scene=None if self.scene is None else int(self.scene[index]),
        )

    def validate(self, source: str) -> None:
        """Raise :class:`DataError` with a one-line ``"<source>: <problem>"`` message if inconsistent."""
        problem = self._problem()
        if problem is not None:
            raise DataError(f"{source}: {problem}")

    def _problem(self) -> str | None:
        """Describe the first inconsistency found, or return None if the data is valid."""
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or not isinstance(labels, np.ndarray):
            return "images and labels must be numpy arrays"
        if images.ndim not in (4, 5):
            return f"images must have shape (N, C, H, W) or (N, C, D, H, W), got {images.shape}"
        if labels.ndim != images.ndim - 1:
            return f"labels must have shape (N, *spatial) with {images.ndim - 2} spatial dims, got {labels.shape}"
        if images.shape[0] == 0:
            return "data set is empty (0 cases)"
        if images.shape[1] == 0:
            return "images have 0 channels"
        if images.shape[0] != labels.shape[0] or images.shape[2:] != labels.shape[1:]:
            return f"image shape {images.shape} does not match label shape {labels.shape}"
        if images.dtype != np.float32:
            return f"images must be float32, got {images.dtype}"
        if labels.dtype != np.int64:
            return f"labels must be int64, got {labels.dtype}"
        if len(self.class_names) < 2:
            return f"need at least 2 class names (background + foreground), got {self.class_names}"
        if not np.isfinite(images).all():
            return "images contain NaN or inf values"
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= self.num_classes:
            return f"label values span {lo}..{hi}, outside 0..{self.num_classes - 1}"
        n = images.shape[0]
        if self.presence is not None:
            expected = (n, self.num_classes - 1)
            if self.presence.shape != expected:
                return f"presence must have shape {expected}, got {self.presence.shape}"
        if self.scene is not None:
            if self.scene.shape != (n,):
                return f"scene must have shape ({n},), got {self.scene.shape}"
            if self.scene_names is not None and n and (
                self.scene.min() < 0 or self.scene.max() >= len(self.scene_names)
            ):
                return f"scene values outside 0..{len(self.scene_names) - 1}"
        return None

    def subset(self, indices: Sequence[int] | np.ndarray) -> SegmentationData:
        """Return a new data set holding copies of the given cases, in the given order."""
        idx = np.asarray(indices, dtype=np.int64)
        return SegmentationData(
            name=self.name,
            images=self.images[idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            presence=None if self.presence is None else self.presence[idx],
            scene=None if self.scene is None else self.scene[idx],
            scene_names=None if self.scene_names is None else list(self.scene_names),
        )


def save_arrays(data: SegmentationData, path: str | os.PathLike[str]) -> None:
    """Validate ``data`` and write it to ``path`` as ``.npz``, atomically (temp file + ``os.replace``)."""
    path = Path(path)
    data.validate(str(path))
    arrays: dict[str, np.ndarray] = {
        "name": np.asarray(data.name),
        "images": data.images,
        "labels": data.labels,
        "class_names": np.asarray(data.class_names, dtype=str),
    }
    if data.presence is not None:
        arrays["presence"] = data.presence.astype(np.float32, copy=False)
    if data.scene is not None:
        arrays["scene"] = data.scene.astype(np.int64, copy=False)
    if data.scene_names is not None:
        arrays["scene_names"] = np.asarray(data.scene_names, dtype=str)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_arrays(path: str | os.PathLike[str]) -> SegmentationData:
    """Read and validate a data set written by :func:`save_arrays`; problems raise :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in _REQUIRED_KEYS if k not in npz.files]
            if missing:
                raise DataError(f"{path}: missing keys {missing} (found {sorted(npz.files)})")
            raw = {k: npz[k] for k in npz.files}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{path}: unreadable or corrupt .npz file ({type(exc).__name__}: {exc})") from exc
    images, labels = raw["images"], raw["labels"]
    if not np.issubdtype(images.dtype, np.floating):
        raise DataError(f"{path}: images must be floating point, got {images.dtype}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be integers, got {labels.dtype}")
    if raw["name"].ndim != 0 or raw["class_names"].ndim != 1:
        raise DataError(f"{path}: 'name' must be a scalar string and 'class_names' a 1-D string array")
    data = SegmentationData(
        name=str(raw["name"]),
        images=images.astype(np.float32, copy=False),
        labels=labels.astype(np.int64, copy=False),
        class_names=[str(c) for c in raw["class_names"]],
        presence=raw["presence"].astype(np.float32, copy=False) if "presence" in raw else None,
        scene=raw["scene"].astype(np.int64, copy=False) if "scene" in raw else None,
        scene_names=[str(s) for s in raw["scene_names"]] if "scene_names" in raw else None,
    )
    data.validate(str(path))
    return data


def split_indices(num_cases: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministically shuffle ``range(num_cases)`` into sorted (train, val) index lists.

    The validation side gets ``round(num_cases * val_fraction)`` cases, clamped so that
    each side holds at least one case.
    """
    if num_cases < 2:
        raise DataError(f"cannot split {num_cases} case(s) into train and validation; need at least 2")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(num_cases)
    n_val = min(max(int(round(num_cases * val_fraction)), 1), num_cases - 1)
    val = sorted(int(i) for i in perm[:n_val])
    train = sorted(int(i) for i in perm[n_val:])
    return train, val
