"""Tests for the array data format (nasseg.data.arrays) and the demo data sets (nasseg.data.demo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from nasseg.data import (
    DEMO_SETS,
    DataError,
    PatchDataset,
    SegmentationData,
    fresh_demo_cases,
    load_arrays,
    make_demo,
    save_arrays,
    split_indices,
)
from nasseg.data import demo as demo_module


@pytest.fixture(autouse=True)
def nasseg_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("NASSEG_HOME", str(home))
    return home


def _tiny(n: int = 4, spatial: tuple[int, ...] = (6, 5), with_meta: bool = True) -> SegmentationData:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(n, *spatial)).astype(np.int64)
    presence = np.stack([(labels == c).reshape(n, -1).any(1) for c in (1, 2)], 1).astype(np.float32)
    return SegmentationData(
        name="tiny",
        images=rng.normal(size=(n, 2, *spatial)).astype(np.float32),
        labels=labels,
        class_names=["background", "a", "b"],
        presence=presence if with_meta else None,
        scene=np.arange(n, dtype=np.int64) % 2 if with_meta else None,
        scene_names=["s0", "s1"] if with_meta else None,
    )


# ---------------------------------------------------------------- demo data sets


def test_demo_sets_listed() -> None:
    assert DEMO_SETS == ("demo3d", "demo2d", "demo_slides")


@pytest.mark.parametrize("name", ["demo3d", "demo2d"])  # demo_slides: tests/test_demo_slides.py
def test_demo_deterministic_and_cached(name: str, nasseg_home: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    first = make_demo(name)
    cached = list((nasseg_home / "demo").glob(f"{name}*.npz"))
    assert len(cached) == 1
    other = make_demo(name, cache_dir=tmp_path / "elsewhere")
    np.testing.assert_array_equal(first.images, other.images)
    np.testing.assert_array_equal(first.labels, other.labels)

    def fail() -> SegmentationData:
        raise AssertionError("generator called although a valid cache exists")

    monkeypatch.setitem(demo_module._GENERATORS, name, fail)
    again = make_demo(name)
    np.testing.assert_array_equal(first.images, again.images)
    assert again.class_names == first.class_names


def test_demo_corrupt_cache_is_regenerated(nasseg_home: Path) -> None:
    data = make_demo("demo2d")
    (path,) = (nasseg_home / "demo").glob("demo2d*.npz")
    path.write_bytes(b"not a zip file")
    again = make_demo("demo2d")
    np.testing.assert_array_equal(data.labels, again.labels)
    assert load_arrays(path).num_cases == 120


def test_demo_unknown_name() -> None:
    with pytest.raises(DataError, match="demo3d, demo2d, demo_slides"):
        make_demo("nope")


def test_demo3d_contents() -> None:
    d = make_demo("demo3d")
    assert d.images.shape == (40, 1, 32, 32, 32) and d.images.dtype == np.float32
    assert d.labels.shape == (40, 32, 32, 32) and d.labels.dtype == np.int64
    assert (d.spatial_dims, d.in_channels, d.num_classes, d.num_cases) == (3, 1, 3, 40)
    assert d.class_names == ["background", "bright_blob", "textured_blob"]
    assert set(np.unique(d.labels)) == {0, 1, 2}
    assert abs(float(d.images.mean())) < 0.05 and abs(float(d.images.std()) - 1) < 0.05
    present = d.presence.astype(bool)
    assert present.any(1).all()  # every volume has an object
    assert (present.sum(1) == 1).any() and (present.sum(1) == 2).any()
    _check_presence(d)
    # Similar mean intensity, but class 2 is far more textured (voxel-to-voxel differences).
    img, lab = d.images[:, 0], d.labels
    m1, m2 = img[lab == 1].mean(), img[lab == 2].mean()
    assert abs(m1 - m2) < 0.25 * abs(m1)
    diff = np.abs(np.diff(img, axis=-1))
    inner = (lab[..., 1:] == lab[..., :-1])
    t1 = diff[inner & (lab[..., 1:] == 1)].mean()
    t2 = diff[inner & (lab[..., 1:] == 2)].mean()
    assert t2 > 1.5 * t1


def test_demo2d_scene_determines_class() -> None:
    d = make_demo("demo2d")
    assert d.images.shape == (120, 1, 64, 64) and d.labels.shape == (120, 64, 64)
    assert (d.spatial_dims, d.num_classes) == (2, 3)
    assert d.class_names == ["background", "object_a", "object_b"]
    assert d.scene_names is not None and len(d.scene_names) == 2
    assert d.scene is not None and d.scene.dtype == np.int64
    assert np.bincount(d.scene).tolist() == [60, 60]
    for labels, scene in zip(d.labels, d.scene):
        assert set(np.unique(labels)) == {0, 1 + int(scene)}
    _check_presence(d)


@pytest.mark.parametrize("name", ["demo3d", "demo2d"])
def test_fresh_demo_cases_are_new_draws_of_the_same_generator(name: str) -> None:
    own, fresh = make_demo(name), fresh_demo_cases(name, 6)
    assert fresh.num_cases == 6 and fresh.images.shape[1:] == own.images.shape[1:]
    assert (fresh.class_names, fresh.scene_names) == (own.class_names, own.scene_names)
    assert fresh.case(0).case_id == f"{name}-fresh1_0000"  # never an id of the set's own cases
    assert not any(np.array_equal(f, o) for f in fresh.images for o in own.images)
    assert set(np.unique(fresh.labels)) == set(np.unique(own.labels))
    _check_presence(fresh)
    again = fresh_demo_cases(name, 6)
    np.testing.assert_array_equal(again.images, fresh.images)
    np.testing.assert_array_equal(again.labels, fresh.labels)


def test_fresh_demo_cases_of_a_set_without_a_generator_or_of_no_cases_are_refused() -> None:
    with pytest.raises(DataError, match="fresh cases come from demo sets demo3d, demo2d"):
        fresh_demo_cases("demo_slides", 4)
    with pytest.raises(DataError, match="must be positive, got 0"):
        fresh_demo_cases("demo3d", 0)


def _check_presence(d: SegmentationData) -> None:
    assert d.presence is not None and d.presence.dtype == np.float32
    for c in range(1, d.num_classes):
        expected = (d.labels == c).reshape(d.num_cases, -1).any(1)
        np.testing.assert_array_equal(d.presence[:, c - 1], expected.astype(np.float32))


# ---------------------------------------------------------------- save / load / validate


@pytest.mark.parametrize("with_meta", [True, False])
def test_save_load_roundtrip(tmp_path: Path, with_meta: bool) -> None:
    data = _tiny(with_meta=with_meta)
    path = tmp_path / "sub" / "tiny.npz"
    save_arrays(data, path)
    assert [p.name for p in path.parent.iterdir()] == ["tiny.npz"]  # no temp files left
    back = load_arrays(path)
    assert back.name == "tiny" and back.class_names == data.class_names
    np.testing.assert_array_equal(back.images, data.images)
    np.testing.assert_array_equal(back.labels, data.labels)
    if with_meta:
        np.testing.assert_array_equal(back.presence, data.presence)
        np.testing.assert_array_equal(back.scene, data.scene)
        assert back.scene_names == data.scene_names
    else:
        assert back.presence is None and back.scene is None and back.scene_names is None


def test_subset() -> None:
    data = _tiny(n=5)
    sub = data.subset([3, 1])
    assert sub.num_cases == 2
    np.testing.assert_array_equal(sub.images, data.images[[3, 1]])
    np.testing.assert_array_equal(sub.scene, data.scene[[3, 1]])
    sub.images[0] = 0
    assert data.images[3].any()


def _expect_error(path: Path, match: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        load_arrays(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_load_missing_file(tmp_path: Path) -> None:
    _expect_error(tmp_path / "absent.npz", "not found")


def test_load_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.npz"
    path.write_bytes(b"\x00garbage" * 10)
    _expect_error(path, "unreadable or corrupt")


def test_load_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "trunc.npz"
    save_arrays(_tiny(), path)
    path.write_bytes(path.read_bytes()[:200])
    _expect_error(path, "unreadable or corrupt")


def test_load_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.npz"
    np.savez(path, images=np.zeros((1, 1, 4, 4), np.float32))
    _expect_error(path, "missing keys.*labels")


def _write_raw(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(path, name=np.asarray("x"), images=images, labels=labels,
             class_names=np.asarray(["bg", "fg"]))
    return path


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (np.zeros((2, 1, 4, 4), np.float32), np.zeros((2, 4, 5), np.int64), "does not match"),
        (np.zeros((2, 1, 4, 4), np.float32), np.zeros((3, 4, 4), np.int64), "does not match"),
        (np.zeros((0, 1, 4, 4), np.float32), np.zeros((0, 4, 4), np.int64), "empty"),
        (np.zeros((2, 4, 4), np.float32), np.zeros((2, 4), np.int64), "must have shape"),
        (np.zeros((2, 1, 4, 4, 4, 4), np.float32), np.zeros((2, 4, 4, 4, 4), np.int64), "must have shape"),
        (np.zeros((2, 1, 4, 4), np.float32), np.zeros((2, 4, 4, 4), np.int64), "spatial dims"),
        (np.full((2, 1, 4, 4), np.nan, np.float32), np.zeros((2, 4, 4), np.int64), "NaN"),
        (np.full((2, 1, 4, 4), np.inf, np.float32), np.zeros((2, 4, 4), np.int64), "inf"),
        (np.zeros((2, 1, 4, 4), np.float32), np.full((2, 4, 4), 2, np.int64), "outside 0..1"),
        (np.zeros((2, 1, 4, 4), np.float32), np.full((2, 4, 4), -1, np.int64), "outside 0..1"),
        (np.zeros((2, 1, 4, 4), np.int64), np.zeros((2, 4, 4), np.int64), "floating point"),
        (np.zeros((2, 1, 4, 4), np.float32), np.zeros((2, 4, 4), np.float32), "integers"),
    ],
)
def test_load_bad_contents(tmp_path: Path, images: np.ndarray, labels: np.ndarray, match: str) -> None:
    _expect_error(_write_raw(tmp_path / "bad.npz", images, labels), match)


def test_load_casts_dtypes(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "f64.npz", np.zeros((1, 1, 3, 3)), np.zeros((1, 3, 3), np.uint8))
    data = load_arrays(path)
    assert data.images.dtype == np.float32 and data.labels.dtype == np.int64


def test_save_rejects_invalid(tmp_path: Path) -> None:
    data = _tiny()
    data.labels[0, 0, 0] = 7
    path = tmp_path / "bad.npz"
    with pytest.raises(DataError, match="bad.npz"):
        save_arrays(data, path)
    assert not path.exists()


def test_validate_metadata_shapes() -> None:
    data = _tiny()
    data.presence = data.presence[:, :1]
    with pytest.raises(DataError, match="^src: presence"):
        data.validate("src")
    data = _tiny()
    data.scene = data.scene + 5
    with pytest.raises(DataError, match="scene values"):
        data.validate("src")


# ---------------------------------------------------------------- split


def test_split_indices() -> None:
    train, val = split_indices(20, 0.25, seed=3)
    assert len(val) == 5 and len(train) == 15
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(20))
    assert (train, val) == split_indices(20, 0.25, seed=3)
    assert val != split_indices(20, 0.25, seed=4)[1]
    assert all(isinstance(i, int) for i in train + val)
    for fraction in (0.01, 0.99):
        tr, va = split_indices(2, fraction, seed=0)
        assert len(tr) == 1 and len(va) == 1


def test_split_errors() -> None:
    with pytest.raises(DataError, match="at least 2"):
        split_indices(1, 0.5, seed=0)
    with pytest.raises(DataError, match="val_fraction"):
        split_indices(10, 1.0, seed=0)


# ---------------------------------------------------------------- PatchDataset


def test_patch_dataset_items() -> None:
    data = _tiny(n=4, spatial=(3, 4, 5))
    ds = PatchDataset(data, [2, 0])
    assert len(ds) == 2
    item = ds[0]
    assert item["index"] == 2
    assert item["image"].dtype == torch.float32 and item["image"].shape == (2, 3, 4, 5)
    assert item["label"].dtype == torch.int64 and item["label"].shape == (3, 4, 5)
    assert item["presence"].shape == (2,) and item["scene"].dtype == torch.int64
    np.testing.assert_array_equal(item["image"].numpy(), data.images[2])
    item["image"].zero_()
    assert data.images[2].any()  # a copy, not a view
    # presence is the patch's own, computed from its label, also where the set has none
    bare = PatchDataset(_tiny(with_meta=False), [0])[0]
    expected = [float((bare["label"] == c).any()) for c in (1, 2)]
    assert bare["presence"].tolist() == expected
    with pytest.raises(DataError):
        PatchDataset(data, [4])


def _label_image_data() -> SegmentationData:
    """Image channel equals the label map, so any flip mismatch between the two shows."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=(6, 5, 6, 7)).astype(np.int64)
    return SegmentationData("flip", labels[:, None].astype(np.float32), labels, ["bg", "fg"])


def test_augmentation_consistent_flips_and_intensity() -> None:
    data = _label_image_data()
    ds = PatchDataset(data, range(6), augment=True, seed=5)
    flipped = 0
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(6):
            item = ds[i]
            image, label = item["image"][0].numpy(), item["label"].numpy()
            assert item["image"].is_contiguous() and item["label"].is_contiguous()
            shift = image[label == 0]
            high = image[label == 1]
            assert np.ptp(shift) < 1e-6 and np.ptp(high) < 1e-6  # image follows label voxel for voxel
            scale = high[0] - shift[0]
            assert 0.9 <= scale <= 1.1 and -0.1 <= shift[0] <= 0.1
            flipped += not np.array_equal(label, data.labels[i])
    assert flipped > 0


def test_augmentation_determinism() -> None:
    data = _label_image_data()
    ds = PatchDataset(data, [0, 1, 2, 3, 4, 5], augment=True, seed=5)
    ds.set_epoch(2)
    a = ds[3]
    # Same (seed, epoch, case index) from a fresh dataset, at another position: identical.
    resumed = PatchDataset(data, [3], augment=True, seed=5)
    resumed.set_epoch(2)
    b = resumed[0]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    outcomes = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        outcomes.add(ds[3]["image"].numpy().tobytes())
    assert len(outcomes) > 1
    other_seed = PatchDataset(data, [3], augment=True, seed=6)
    other_seed.set_epoch(2)
    assert not torch.equal(other_seed[0]["image"], a["image"])


def test_augmentation_independent_of_workers() -> None:
    data = _label_image_data()
    ds = PatchDataset(data, range(6), augment=True, seed=1)
    ds.set_epoch(1)
    serial = [b["image"] for b in DataLoader(ds, batch_size=2, num_workers=0)]
    parallel = [b["image"] for b in DataLoader(ds, batch_size=2, num_workers=2)]
    for x, y in zip(serial, parallel):
        assert torch.equal(x, y)
