"""Patches for training: crops of cases, foreground oversampling, augmentation.

Every random draw of an item comes from a generator seeded by ``(seed, epoch, case index)``, so
batches are identical whatever the DataLoader worker count and after a resume.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from nasseg.data.arrays import DataError
from nasseg.data.cases import Case, CaseSet
from nasseg.data.views import PATCH_VIEW, DataView, context_crop, patch_presence

__all__ = ["PatchDataset", "crop_box", "patch_start", "ROTATION_PROBABILITY"]

#: Share of training patches rotated by a multiple of 90 degrees (nnU-Net rotates 20 %).
ROTATION_PROBABILITY = 0.2


def crop_box(shape: Sequence[int], patch: Sequence[int], centre: Sequence[int]
             ) -> tuple[slice, ...]:
    """The slices of a ``patch``-sized box around ``centre``, shifted to stay inside ``shape``
    (shorter than the patch where the case is smaller; padding fills the rest)."""
    box = []
    for size, p, c in zip(shape, patch, centre):
        start = min(max(0, int(c) - p // 2), max(0, size - p))
        box.append(slice(start, start + min(p, size)))
    return tuple(box)


def patch_start(shape: Sequence[int], patch: Sequence[int], centre: Sequence[int]) -> list[int]:
    """Where a patch around ``centre`` starts: :func:`crop_box`'s start, or, on an axis shorter
    than the patch, the negative offset that centres the case in the zero-padded patch."""
    box = crop_box(shape, patch, centre)
    return [b.start if s >= p else -((p - s) // 2) for b, s, p in zip(box, shape, patch)]


class PatchDataset(Dataset):
    """Patches of selected cases of a :class:`~nasseg.data.cases.CaseSet`, as a space's view.

    Items are dicts ``{"image": (C, *patch) float32, "label": (*patch) int64, "index": case}``,
    the view's ``"context"`` (and ``"context_label"``) crops around the patch (see
    :mod:`nasseg.data.views`), ``"presence"`` (the foreground classes in the patch's own label,
    after augmentation; the case's presence for unlabelled cases) and ``"scene"`` when known.

    Args:
        data: the cases.
        indices: which cases.
        augment: training mode: a random crop (centred on a foreground voxel with probability
            ``fg_fraction``), random flips along every spatial axis, for 20 % of patches a
            random 90-degree rotation in a plane whose two axes have the same patch size, intensity scale 0.9-1.1 and
            shift -0.1-0.1. Without it: the centre crop, unchanged.
        seed: run seed; call :meth:`set_epoch` before each epoch.
        patch_size: crop size; default ``data.patch_size``.
        fg_fraction: share of patches forced to contain foreground (nnU-Net uses 1/3).
        view: what else to cut around the patch; flips, rotations and the intensity change
            apply to every crop alike (the crops are concentric, so they stay aligned).

    A data set with a ``patches_per_case`` attribute (large images) gives that many patches of
    every case per pass; without augmentation they lie at fixed places drawn uniformly over the
    image (seeded by ``(seed, case, k)``), so every validation sees the same patches.
    """

    def __init__(self, data: CaseSet, indices: Sequence[int], augment: bool = False,
                 seed: int = 0, patch_size: Sequence[int] | None = None,
                 fg_fraction: float = 1 / 3, view: DataView = PATCH_VIEW) -> None:
        n = data.num_cases
        bad = [i for i in indices if not 0 <= int(i) < n]
        if bad:
            raise DataError(f"{data.name}: case indices {bad[:5]} outside 0..{n - 1}")
        self.data = data
        self.indices = [int(i) for i in indices]
        self.augment = augment
        self.seed = int(seed)
        self.patch = tuple(int(p) for p in (patch_size or data.patch_size))
        if len(self.patch) != data.spatial_dims or min(self.patch) < 1:
            raise DataError(f"{data.name}: patch size {self.patch} does not fit its "
                            f"{data.spatial_dims}D cases (need {data.spatial_dims} positive sizes)")
        self.fg_fraction = fg_fraction
        self.view = view
        self.per_case = int(getattr(data, "patches_per_case", 1))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws the following items use."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices) * self.per_case

    def _centre(self, label: np.ndarray | None, rng: np.random.Generator | None) -> list[int]:
        shape = label.shape if label is not None else ()
        if rng is None:
            return [s // 2 for s in shape]
        if label is not None and rng.random() < self.fg_fraction:
            fg = np.flatnonzero(label)
            if fg.size:
                return list(np.unravel_index(fg[rng.integers(fg.size)], label.shape))
        return [int(rng.integers(s)) for s in shape]

    def __getitem__(self, item: int) -> dict[str, torch.Tensor | int]:
        index, k = self.indices[item // self.per_case], item % self.per_case
        extra = (k,) if self.per_case > 1 else ()
        rng = (np.random.default_rng((self.seed, self.epoch, index, *extra)) if self.augment
               else None)
        if hasattr(self.data, "read_context"):  # large images: read region by region
            place = rng if rng is not None or self.per_case == 1 else \
                np.random.default_rng((self.seed, index, k))
            crops, case = self._region_crops(index, place, rng is not None), None
            labelled = self.data.labels[index] is not None
        else:
            case = self.data.case(index)
            crops, labelled = self._array_crops(case, rng), case.label is not None
        if rng is not None:
            crops = self._augment(crops, rng)
        sample: dict[str, torch.Tensor | int] = {"index": index}
        for key, (array, _) in crops.items():
            dtype = np.int64 if "label" in key else np.float32
            sample[key] = torch.from_numpy(np.array(array, dtype=dtype, order="C", copy=True))
        if labelled:
            sample["presence"] = torch.from_numpy(
                patch_presence(crops["label"][0], self.data.num_classes))
        elif case is not None and case.presence is not None:
            sample["presence"] = torch.from_numpy(np.asarray(case.presence, dtype=np.float32))
        if case is not None and case.scene is not None:
            sample["scene"] = torch.tensor(int(case.scene), dtype=torch.int64)
        return sample

    def _view_crops(self, cut: Callable[[Sequence[int], int, bool], np.ndarray],
                    start: Sequence[int]) -> dict[str, tuple[np.ndarray, int]]:
        """The view's crops around the patch at ``start``, cut by ``cut(start, factor, label)``,
        each with its number of leading non-spatial axes (so every crop is augmented alike)."""
        crops = {"image": (cut(start, 1, False), 1), "label": (cut(start, 1, True), 0)}
        if self.view.context:
            crops["context"] = (np.stack([cut(start, f, False) for f in self.view.context]), 2)
            if self.view.context_labels:
                crops["context_label"] = (np.stack([cut(start, f, True)
                                                    for f in self.view.context]), 1)
        return crops

    def _array_crops(self, case: Case, rng: np.random.Generator | None
                     ) -> dict[str, tuple[np.ndarray, int]]:
        """The view's crops of an in-memory case."""
        image, label = case.image, case.label
        if label is None:
            label = np.zeros(image.shape[1:], dtype=np.int64)
        start = [0] * len(self.patch)
        if tuple(label.shape) != self.patch:
            start = patch_start(label.shape, self.patch, self._centre(label, rng))
        return self._view_crops(lambda at, f, lab: context_crop(
            label if lab else image, at, self.patch, f, label=lab), start)

    def _region_crops(self, index: int, rng: np.random.Generator | None, train: bool
                      ) -> dict[str, tuple[np.ndarray, int]]:
        """The view's crops of a large image, read region by region around one centre (the
        image's centre without ``rng``; foreground oversampled only in ``train``ing)."""
        data = self.data
        width, height = data.images[index].size
        centre = ([height // 2, width // 2] if rng is None
                  else data.sample_centre(index, rng, self.fg_fraction if train else 0.0))
        return self._view_crops(lambda at, f, lab: data.read_context(
            index, at, self.patch, f, label=lab), [c - p // 2 for c, p in zip(centre, self.patch)])

    def _augment(self, crops: dict[str, tuple[np.ndarray, int]], rng: np.random.Generator
                 ) -> dict[str, tuple[np.ndarray, int]]:
        """Random flips, a 90-degree rotation for some patches, intensity scale and shift."""
        dims = len(self.patch)
        for axis in range(dims):
            if rng.random() < 0.5:
                crops = {k: (np.flip(a, axis=lead + axis), lead) for k, (a, lead) in crops.items()}
        planes = [(a, b) for a in range(dims) for b in range(a + 1, dims)
                  if self.patch[a] == self.patch[b]]
        if planes and rng.random() < ROTATION_PROBABILITY:
            a, b = planes[int(rng.integers(len(planes)))]
            k = int(rng.integers(4))
            crops = {key: (np.rot90(arr, k, axes=(lead + a, lead + b)), lead)
                     for key, (arr, lead) in crops.items()}
        scale, shift = np.float32(rng.uniform(0.9, 1.1)), np.float32(rng.uniform(-0.1, 0.1))
        for key in ("image", "context"):
            if key in crops:
                crops[key] = (crops[key][0] * scale + shift, crops[key][1])
        return crops
