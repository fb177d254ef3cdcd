"""Patches for training: crops of cases, foreground oversampling, augmentation.

Every random draw of an item comes from a generator seeded by ``(seed, epoch, case index)``, so
batches are identical whatever the DataLoader worker count and after a resume.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from nasseg.data.arrays import DataError
from nasseg.data.cases import CaseSet

__all__ = ["PatchDataset", "crop_box", "ROTATION_PROBABILITY"]

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


def _pad(array: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """Zero-pad the trailing ``len(patch)`` axes of ``array`` up to ``patch`` (centred)."""
    lead = array.ndim - len(patch)
    missing = [max(0, p - s) for s, p in zip(array.shape[lead:], patch)]
    if not any(missing):
        return array
    pads = [(0, 0)] * lead + [(m // 2, m - m // 2) for m in missing]
    return np.pad(array, pads)


class PatchDataset(Dataset):
    """Patches of selected cases of a :class:`~nasseg.data.cases.CaseSet`.

    Items are dicts ``{"image": (C, *patch) float32, "label": (*patch) int64, "index": case}``
    plus ``"presence"`` / ``"scene"`` when the case has them.

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
    """

    def __init__(self, data: CaseSet, indices: Sequence[int], augment: bool = False,
                 seed: int = 0, patch_size: Sequence[int] | None = None,
                 fg_fraction: float = 1 / 3) -> None:
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
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws the following items use."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

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
        index = self.indices[item]
        case = self.data.case(index)
        image, label = case.image, case.label
        if label is None:
            label = np.zeros(image.shape[1:], dtype=np.int64)
        rng = np.random.default_rng((self.seed, self.epoch, index)) if self.augment else None
        if tuple(label.shape) != self.patch:
            box = crop_box(label.shape, self.patch, self._centre(label, rng))
            image, label = _pad(image[(slice(None), *box)], self.patch), _pad(label[box], self.patch)
        if rng is not None:
            for axis in range(label.ndim):
                if rng.random() < 0.5:
                    image = np.flip(image, axis=axis + 1)
                    label = np.flip(label, axis=axis)
            planes = [(a, b) for a in range(label.ndim) for b in range(a + 1, label.ndim)
                      if label.shape[a] == label.shape[b]]
            if planes and rng.random() < ROTATION_PROBABILITY:
                a, b = planes[int(rng.integers(len(planes)))]
                k = int(rng.integers(4))
                image = np.rot90(image, k, axes=(a + 1, b + 1))
                label = np.rot90(label, k, axes=(a, b))
            scale, shift = rng.uniform(0.9, 1.1), rng.uniform(-0.1, 0.1)
            image = image * np.float32(scale) + np.float32(shift)
        sample: dict[str, torch.Tensor | int] = {
            "image": torch.from_numpy(np.array(image, dtype=np.float32, order="C", copy=True)),
            "label": torch.from_numpy(np.array(label, dtype=np.int64, order="C", copy=True)),
            "index": index,
        }
        if case.presence is not None:
            sample["presence"] = torch.from_numpy(np.asarray(case.presence, dtype=np.float32))
        if case.scene is not None:
            sample["scene"] = torch.tensor(int(case.scene), dtype=torch.int64)
        return sample
