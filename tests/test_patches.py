"""Patch sampling from cases of different sizes: crops, padding, foreground oversampling."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from nasseg.data import Case, CaseSet, PatchDataset
from nasseg.data.patches import crop_box


@dataclass
class _Cases:
    """Three 3D cases of different shapes; the image is the label map (so alignment shows)."""

    name: str = "fake"
    class_names: tuple = ("bg", "fg")
    in_channels: int = 1
    spatial_dims: int = 3
    num_classes: int = 2
    num_cases: int = 3
    patch_size: tuple = (8, 8, 8)

    def case(self, index: int) -> Case:
        shape = [(20, 24, 12), (6, 10, 8), (16, 16, 16)][index]
        label = np.zeros(shape, np.int64)
        label[1:3, 2:4, 3:5] = 1  # a small foreground blob near a corner
        return Case(f"c{index}", label[None].astype(np.float32), label)


def test_fake_is_a_case_set():
    assert isinstance(_Cases(), CaseSet)


def test_patches_have_the_patch_size_and_stay_aligned():
    ds = PatchDataset(_Cases(), [0, 1, 2], augment=True, seed=3)
    for epoch in range(4):
        ds.set_epoch(epoch)
        for item in ds:
            assert item["image"].shape == (1, 8, 8, 8) and item["label"].shape == (8, 8, 8)
            assert ((item["image"][0] > 0.5) == (item["label"] > 0)).all()


def test_small_cases_are_zero_padded():
    item = PatchDataset(_Cases(), [1])[0]  # 6x10x8 case, 8^3 patch, no augmentation
    assert item["image"].shape == (1, 8, 8, 8)
    assert item["image"][0, 0].abs().sum() == 0 and item["image"][0, -1].abs().sum() == 0


def test_foreground_oversampling_finds_the_blob():
    ds = PatchDataset(_Cases(), [0], augment=True, seed=0, fg_fraction=1.0)
    hits = 0
    for epoch in range(10):
        ds.set_epoch(epoch)
        hits += int(ds[0]["label"].sum() > 0)
    assert hits == 10
    ds = PatchDataset(_Cases(), [0], augment=True, seed=0, fg_fraction=0.0)
    misses = 0
    for epoch in range(10):
        ds.set_epoch(epoch)
        misses += int(ds[0]["label"].sum() == 0)
    assert misses > 0


def test_draws_depend_only_on_seed_epoch_and_case():
    a = PatchDataset(_Cases(), [0, 2], augment=True, seed=7)
    b = PatchDataset(_Cases(), [2], augment=True, seed=7)
    a.set_epoch(5)
    b.set_epoch(5)
    assert np.array_equal(a[1]["image"], b[0]["image"])


@pytest.mark.parametrize("shape,patch,centre,expected", [
    ((20,), (8,), (0,), (0, 8)), ((20,), (8,), (19,), (12, 20)), ((6,), (8,), (3,), (0, 6)),
])
def test_crop_box_stays_inside(shape, patch, centre, expected):
    (box,) = crop_box(shape, patch, centre)
    assert (box.start, box.stop) == expected
