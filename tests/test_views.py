"""Data views: context crops around a patch, the same in training, inference and the
multi-resolution reader of large images; per-patch presence."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from nasseg.data import Case, DataView, PatchDataset
from nasseg.data.multires import multires_crops
from nasseg.data.views import context_crop, patch_presence
from nasseg.inference import window_batch


def test_context_crops_match_the_large_image_reader():
    rng = np.random.default_rng(0)
    image = rng.random((3, 150, 170)).astype(np.float32)
    label = rng.integers(0, 4, (150, 170))
    cx, cy, p = 60, 70, 16
    crops, labels = multires_crops(image.transpose(1, 2, 0), (cx, cy), p, (1, 4, 16), label)
    start = [cy - p // 2, cx - p // 2]
    for f, crop, lab in zip((4, 16), crops[1:], labels[1:]):
        np.testing.assert_allclose(context_crop(image, start, (p, p), f),
                                   crop.transpose(2, 0, 1), atol=1e-5)
        np.testing.assert_array_equal(context_crop(label, start, (p, p), f, label=True), lab)
    np.testing.assert_array_equal(image[:, start[0]:start[0] + p, start[1]:start[1] + p],
                                  crops[0].transpose(2, 0, 1))


def test_context_is_zero_outside_and_concentric_in_3d():
    image = np.ones((1, 8, 8, 8), np.float32)
    crop = context_crop(image, (0, 0, 0), (4, 4, 4), 2)  # box -2..6 on every axis
    assert crop.shape == (1, 4, 4, 4)
    assert crop[0, 0, 0, 0] == 0.0 and crop[0, 1, 1, 1] == 1.0 and crop[0, 3, 3, 3] == 1.0
    ramp = np.arange(16, dtype=np.float32)[None, :, None, None] * np.ones((1, 16, 4, 4))
    ctx = context_crop(ramp, (6, 0, 0), (4, 4, 4), 2)  # rows 4..12 averaged in pairs
    np.testing.assert_allclose(ctx[0, :, 2, 2], [4.5, 6.5, 8.5, 10.5])


def test_inference_windows_get_the_training_context():
    rng = np.random.default_rng(1)
    image = rng.random((2, 40, 36)).astype(np.float32)
    view = DataView(context=(2, 4))
    batch = window_batch(torch.from_numpy(image), [(3, 5), (20, 16)], (16, 16), view)
    assert batch["context"].shape == (2, 2, 2, 16, 16)
    for i, start in enumerate([(3, 5), (20, 16)]):
        for j, f in enumerate(view.context):
            np.testing.assert_allclose(batch["context"][i, j].numpy(),
                                       context_crop(image, start, (16, 16), f), atol=1e-5)


@dataclass
class _Ramp:
    """One 2D case whose image encodes each pixel's row and column, so alignment shows."""

    name: str = "ramp"
    class_names: tuple = ("bg", "a", "b")
    in_channels: int = 2
    spatial_dims: int = 2
    num_classes: int = 3
    num_cases: int = 1
    patch_size: tuple = (8, 8)

    def case(self, index: int) -> Case:
        rows, cols = np.mgrid[0:64, 0:64].astype(np.float32)
        label = np.zeros((64, 64), np.int64)
        label[:, 40:] = 2
        return Case("r", np.stack([rows, cols]), label)


def test_augmented_context_stays_concentric_with_the_patch():
    ds = PatchDataset(_Ramp(), [0], augment=True, seed=0, view=DataView((2,), True),
                      fg_fraction=0.0)
    for epoch in range(12):
        ds.set_epoch(epoch)
        item = ds[0]
        image, ctx = item["image"], item["context"][0]
        # undo the intensity change: it is the same on patch and context
        centre_patch = image[:, 3:5, 3:5].mean((1, 2))
        centre_ctx = ctx[:, 3:5, 3:5].mean((1, 2))
        torch.testing.assert_close(centre_patch, centre_ctx, atol=1e-4, rtol=1e-4)
        assert item["context_label"].shape == (1, 8, 8)
        expected = [float((item["label"] == c).any()) for c in (1, 2)]
        assert item["presence"].tolist() == expected


def test_patch_presence_counts_foreground_only():
    assert patch_presence(np.array([[0, 2], [2, 0]]), 4).tolist() == [0.0, 1.0, 0.0]


def test_bad_views_are_refused():
    with pytest.raises(ValueError, match="whole numbers >= 2"):
        DataView(context=(1,))
    with pytest.raises(ValueError, match="needs at least one context"):
        DataView(context_labels=True)


def _large_image_folder(root, n: int = 2, shape: tuple[int, int] = (300, 260)):
    from PIL import Image

    folder = root / "slides"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    rng = np.random.default_rng(3)
    for i in range(n):
        rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        label = np.zeros(shape, np.uint8)
        label[100:180, 50:200] = 1 + i % 2
        Image.fromarray(rgb).save(folder / "images" / f"s{i}.png")
        Image.fromarray(label).save(folder / "labels" / f"s{i}.png")
    (folder / "dataset.json").write_text(
        '{"large_images": true, "labels": {"background": 0, "a": 1, "b": 2}, "patch_size": 32}')
    return folder


def test_large_images_give_the_view_region_by_region(tmp_path):
    from nasseg.data import load_data
    from nasseg.data.large_images import LargeImageSet

    data = load_data(str(_large_image_folder(tmp_path)))
    assert isinstance(data, LargeImageSet) and data.patch_size == (32, 32)
    assert (data.in_channels, data.num_classes, data.num_cases) == (3, 3, 2)
    view = DataView((4,), True)
    whole = data.case(1)
    assert whole.image.shape == (3, 300, 260) and 0.0 <= whole.image.min() <= whole.image.max() <= 1
    start = (134, 114)  # the patch centred on (150, 130)
    region = PatchDataset(data, [1], view=view)[0]  # evaluation: the image centre
    np.testing.assert_allclose(region["image"].numpy(), whole.image[:, 134:166, 114:146])
    np.testing.assert_allclose(region["context"][0].numpy(),
                               context_crop(whole.image, start, (32, 32), 4), atol=1e-5)
    np.testing.assert_array_equal(region["context_label"][0].numpy(),
                                  context_crop(whole.label, start, (32, 32), 4, label=True))
    assert region["presence"].tolist() == [0.0, 1.0]
    train = PatchDataset(data, [0, 1], augment=True, seed=1, view=view, fg_fraction=1.0)
    for epoch in range(3):
        train.set_epoch(epoch)
        assert all(item["label"].sum() > 0 for item in train)  # foreground-centred crops
