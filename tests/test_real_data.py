"""Real data set folders: MSD / nnU-Net v2 / 2D PNG readers, preprocessing, HDF5 cache, verification.

Every data set is built on the fly in a temporary folder with nibabel and PIL.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from nasseg.data.arrays import DataError
from nasseg.data.cases import CaseSet
from nasseg.data.formats import read_dataset, read_image, read_label
from nasseg.data.h5cache import CACHE_DIRNAME, H5CaseSet, build_cache, load_folder
from nasseg.data.preprocess import META_KEYS, crop_to_nonzero, resample, restore_label
from nasseg.data.source import load_data
from nasseg.data.verify import verify_dataset

SHAPES = [(20, 22, 9), (21, 22, 9), (20, 23, 8), (21, 21, 9)]
SPACINGS = [(0.8, 0.8, 2.5)] * 3 + [(1.0, 1.0, 2.5)]  # median (0.8, 0.8, 2.5): case 3 is resampled
BORDER = 2
CLASSES = ["background", "liver", "tumour"]
OUTLIER = 3000.0


def _affine(spacing: tuple[float, ...]) -> np.ndarray:
    """Voxel -> world: 20 degree rotation about z, anisotropic spacing, an offset."""
    th = np.deg2rad(20.0)
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag(spacing)
    a[:3, 3] = [-50.0, 30.0, 12.0]
    return a


def _case_arrays(i: int) -> tuple[np.ndarray, np.ndarray]:
    """(image (X, Y, Z, 2) float32 [CT, MRI], label (X, Y, Z) uint8) of 3D case ``i``."""
    rng = np.random.default_rng(i)
    shape = SHAPES[i]
    grid = np.stack(np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij"))
    centre = np.array([s / 2 for s in shape], dtype=np.float32)[:, None, None, None]
    r = np.sqrt((((grid - centre) / np.array([6, 6, 2.5])[:, None, None, None]) ** 2).sum(0))
    label = np.zeros(shape, np.uint8)
    label[r < 1.0] = 1
    if i != 2:  # case 2 has no tumour
        label[r < 0.45] = 2
    body = np.zeros(shape, bool)
    body[BORDER:-BORDER, BORDER:-BORDER, BORDER:-BORDER] = True
    label[~body] = 0
    ct = np.where(body, -100 + 40 * rng.standard_normal(shape) + 300 * (label == 1) + 700 * (label == 2), 0)
    ct[tuple(int(c) for c in centre[:, 0, 0, 0])] = OUTLIER  # one foreground outlier per case
    mri = np.where(body, 100 + 20 * rng.standard_normal(shape) + 50 * label, 0)
    return np.stack([ct, mri], axis=-1).astype(np.float32), label


def _save(arr: np.ndarray, spacing: tuple[float, ...], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, _affine(spacing)), str(path))


def make_msd(root: Path) -> Path:
    """MSD folder: 2-channel 4D NIfTI images, 3 classes, 4 cases."""
    folder = root / "Task01_Toy"
    training = []
    for i in range(len(SHAPES)):
        image, label = _case_arrays(i)
        _save(image, SPACINGS[i], folder / "imagesTr" / f"case_{i:03d}.nii.gz")
        _save(label, SPACINGS[i], folder / "labelsTr" / f"case_{i:03d}.nii.gz")
        training.append({"image": f"./imagesTr/case_{i:03d}.nii.gz",
                         "label": f"./labelsTr/case_{i:03d}.nii.gz"})
    (folder / "dataset.json").write_text(json.dumps({
        "name": "Toy", "modality": {"0": "CT", "1": "MRI"},
        "labels": {str(k): v for k, v in enumerate(CLASSES)},
        "numTraining": len(training), "training": training, "test": []}))
    return folder


def make_nnunet(root: Path) -> Path:
    """nnU-Net v2 folder with the same content as :func:`make_msd`, one file per channel."""
    folder = root / "Dataset001_Toy"
    for i in range(len(SHAPES)):
        image, label = _case_arrays(i)
        for c in range(2):
            _save(image[..., c], SPACINGS[i], folder / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz")
        _save(label, SPACINGS[i], folder / "labelsTr" / f"case_{i:03d}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "name": "Toy", "channel_names": {"0": "CT", "1": "MRI"},
        "labels": {v: k for k, v in enumerate(CLASSES)},
        "numTraining": len(SHAPES), "file_ending": ".nii.gz"}))
    return folder


PNG_SCENES = ["day", "night", "day", "dusk"]


def _png_arrays(i: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 (30, 34, 3) with no zero pixel, label uint8 (30, 34)) of 2D case ``i``."""
    rng = np.random.default_rng(100 + i)
    rgb = rng.integers(1, 256, size=(30, 34, 3), dtype=np.uint8)
    label = np.zeros((30, 34), np.uint8)
    label[5:15, 6:20] = 1
    if i != 1:  # case 1 has no class 2
        label[18:25, 20:30] = 2
    return rgb, label


def make_png(root: Path, packed: bool = True) -> Path:
    """2D nnU-Net PNG folder: RGB in ``_0000.png`` (``packed``) or one grey file per channel."""
    folder = root / ("Dataset002_Rgb" if packed else "Dataset003_Grey")
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for i in range(4):
        rgb, label = _png_arrays(i)
        if packed:
            Image.fromarray(rgb, "RGB").save(folder / "imagesTr" / f"img_{i:02d}_0000.png")
        else:
            for c in range(3):
                Image.fromarray(rgb[..., c], "L").save(folder / "imagesTr" / f"img_{i:02d}_{c:04d}.png")
        Image.fromarray(label, "L").save(folder / "labelsTr" / f"img_{i:02d}.png")
    (folder / "dataset.json").write_text(json.dumps({
        "name": "Rgb", "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, "road": 1, "car": 2}, "numTraining": 4, "file_ending": ".png"}))
    (folder / "scenes.csv").write_text("case,scene\n" + "".join(
        f"img_{i:02d},{s}\n" for i, s in enumerate(PNG_SCENES)))
    return folder


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Clean MSD, nnU-Net v2 and PNG folders (never modified: tests copy them)."""
    root = tmp_path_factory.mktemp("sets")
    return {"msd": make_msd(root), "nnunet": make_nnunet(root), "png": make_png(root)}


@pytest.fixture(scope="module")
def msd_cached(sets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> H5CaseSet:
    return load_folder(sets["msd"], cache_dir=tmp_path_factory.mktemp("cache"), show_progress=False)


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / src.name))


# ----------------------------------------------------------------------------- loading


def test_readers_give_stored_voxel_order(sets: dict[str, Path]) -> None:
    ds = read_dataset(sets["msd"])
    assert (ds.format, ds.spatial_dims, ds.channel_kinds) == ("msd", 3, ["CT", "MRI"])
    assert ds.class_names == CLASSES
    image, spacing, affine = read_image(ds.cases[0])
    expected, label = _case_arrays(0)
    assert image.shape == (2, *SHAPES[0]) and image.dtype == np.float32
    np.testing.assert_array_equal(image, np.moveaxis(expected, -1, 0))
    np.testing.assert_array_equal(read_label(ds.cases[0]), label)
    assert np.allclose(spacing, SPACINGS[0]) and np.allclose(affine, _affine(SPACINGS[0]))
    nn = read_dataset(sets["nnunet"])
    assert nn.format == "nnunetv2" and [c.case_id for c in nn.cases] == [c.case_id for c in ds.cases]
    assert len(nn.cases[0].image_files) == 2


def test_msd_and_nnunet_load_to_the_same_cases(sets: dict[str, Path], msd_cached: H5CaseSet,
                                               tmp_path: Path) -> None:
    nn = load_folder(sets["nnunet"], cache_dir=tmp_path, show_progress=False)
    for cs in (msd_cached, nn):
        assert isinstance(cs, CaseSet)
        assert (cs.in_channels, cs.spatial_dims, cs.num_classes, cs.num_cases) == (2, 3, 3, 4)
        assert cs.class_names == CLASSES and cs.scene_names is None
    assert msd_cached.case_ids == nn.case_ids == [f"case_{i:03d}" for i in range(4)]
    for i in range(4):
        a, b = msd_cached.case(i), nn.case(i)
        assert a.image.dtype == np.float32 and a.label.dtype == np.int64
        np.testing.assert_allclose(a.image, b.image, atol=1e-5)
        np.testing.assert_array_equal(a.label, b.label)
        np.testing.assert_array_equal(a.presence, b.presence)
        assert a.meta["crop_bbox"] == b.meta["crop_bbox"]
    # patch size: median shape (16, 18, 5) -> multiples of 8, at least 8
    assert msd_cached.patch_size == (16, 16, 8)


def test_crop_resample_normalise(sets: dict[str, Path], msd_cached: H5CaseSet) -> None:
    cs = msd_cached
    assert cs.target_spacing == pytest.approx((0.8, 0.8, 2.5))
    for i in range(4):
        case = cs.case(i)
        meta = case.meta
        assert set(META_KEYS) <= set(meta) and meta["dataset_folder"] == str(sets["msd"].resolve())
        assert meta["original_shape"] == list(SHAPES[i])
        assert meta["crop_bbox"] == [[BORDER, s - BORDER] for s in SHAPES[i]]
        assert meta["cropped_shape"] == [s - 2 * BORDER for s in SHAPES[i]]
        assert meta["original_spacing"] == pytest.approx(SPACINGS[i])
        assert meta["target_spacing"] == pytest.approx((0.8, 0.8, 2.5))
        assert np.allclose(meta["affine"], _affine(SPACINGS[i]))
        assert meta["image_files"] == [f"imagesTr/case_{i:03d}.nii.gz"]
        assert case.image.shape == (2, *meta["preprocessed_shape"]) == (2, *cs.shapes[i])
        assert case.presence.tolist() == ([1.0, 0.0] if i == 2 else [1.0, 1.0])
        original = _case_arrays(i)[1]
        if i < 3:  # spacing equals the median: no resampling, crop only
            assert not meta["resampled"] and meta["preprocessed_shape"] == meta["cropped_shape"]
            np.testing.assert_array_equal(restore_label(case.label, meta), original)
            corner = np.asarray(meta["preprocessed_affine"]) @ [0, 0, 0, 1]
            assert np.allclose(corner, _affine(SPACINGS[i]) @ [BORDER, BORDER, BORDER, 1])
        else:  # 1.0 mm -> 0.8 mm in x and y
            crop = meta["cropped_shape"]
            assert meta["resampled"]
            assert meta["preprocessed_shape"] == [round(crop[0] * 1.25), round(crop[1] * 1.25), crop[2]]
            assert (restore_label(case.label, meta) == original).mean() > 0.97
        # MRI: per-case z-score
        assert case.image[1].mean() == pytest.approx(0.0, abs=1e-4)
        assert case.image[1].std() == pytest.approx(1.0, abs=1e-3)
    # CT: clipped to the set's foreground 0.5 / 99.5 percentiles, z-scored with the set's stats
    fg = np.concatenate([_case_arrays(i)[0][..., 0][_case_arrays(i)[1] > 0] for i in range(4)])
    lower, upper = np.percentile(fg.astype(np.float64), [0.5, 99.5])
    stats = cs.ct_stats["0"]
    assert (stats["lower"], stats["upper"]) == pytest.approx((lower, upper))
    clipped = np.clip(fg, lower, upper)
    assert (stats["mean"], stats["std"]) == pytest.approx((clipped.mean(), clipped.std()), rel=1e-4)
    top = (upper - stats["mean"]) / stats["std"]
    case0 = cs.case(0)
    assert case0.image[0].max() == pytest.approx(top, rel=1e-5)  # the 3000 outlier is clipped
    assert case0.meta["normalisation"][0]["scheme"] == "ct"
    assert case0.meta["normalisation"][1]["scheme"] == "zscore"
    assert all(cs.case(i).image[0].max() <= top + 1e-4 for i in range(4))


def test_crop_and_resample_functions() -> None:
    image = np.zeros((2, 10, 12, 6), np.float32)
    image[1, 2:5, 3:9, 1:4] = 1.0
    label = np.zeros((10, 12, 6), np.int64)
    cropped, lab, bbox = crop_to_nonzero(image, label)
    assert bbox == [[2, 5], [3, 9], [1, 4]] and cropped.shape == (2, 3, 6, 3) and lab.shape == (3, 6, 3)
    out, out_label, done = resample(image, label, (1.0, 1.0, 2.0), (1.0, 1.0, 2.0))
    assert not done and out is image
    out, out_label, done = resample(image, label, (1.0, 1.0, 2.0), (2.0, 0.5, 1.0))
    assert done and out.shape == (2, 5, 24, 12) and out_label.shape == (5, 24, 12)
    assert out_label.dtype == label.dtype


def test_cache_is_reused_and_rebuilt(sets: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(sets["nnunet"], tmp_path)
    first = load_folder(folder, show_progress=False)
    assert first.path.parent == folder / CACHE_DIRNAME
    mtime = first.path.stat().st_mtime_ns
    again = load_folder(folder, show_progress=False)
    assert again.path == first.path and again.path.stat().st_mtime_ns == mtime
    # a changed source file: rebuilt, outdated cache removed
    label_file = folder / "labelsTr" / "case_001.nii.gz"
    _, label = _case_arrays(1)
    label[label == 2] = 1
    _save(label, SPACINGS[1], label_file)
    os.utime(label_file, ns=(mtime + 5 * 10**9, mtime + 5 * 10**9))
    changed = load_folder(folder, show_progress=False)
    assert changed.path != first.path and not first.path.exists()
    assert changed.case(1).presence.tolist() == [1.0, 0.0]
    # other settings: another cache, resampled shapes
    coarse = load_folder(folder, target_spacing=(1.6, 1.6, 2.5), show_progress=False)
    assert coarse.path != changed.path and changed.path.exists()
    assert coarse.case(0).image.shape == (2, 8, 9, 5) and coarse.target_spacing == (1.6, 1.6, 2.5)
    assert load_folder(folder, show_progress=False).path == changed.path


class _CaseImages(Dataset):
    """Torch view of a case set's images (module level so workers can unpickle it)."""

    def __init__(self, cases: H5CaseSet) -> None:
        self.cases = cases

    def __len__(self) -> int:
        return self.cases.num_cases

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.cases.case(i).image)


def test_case_set_pickles_and_works_in_workers(msd_cached: H5CaseSet) -> None:
    expected = [msd_cached.case(i).image for i in range(4)]  # opens the file in this process
    clone = pickle.loads(pickle.dumps(msd_cached))
    np.testing.assert_array_equal(clone.case(3).image, expected[3])
    loader = DataLoader(_CaseImages(msd_cached), batch_size=None, num_workers=1)
    for got, want in zip(loader, expected):
        np.testing.assert_array_equal(got.numpy(), want)
    msd_cached.close()
    np.testing.assert_array_equal(msd_cached.case(0).image, expected[0])


def test_a_part_of_a_folder_is_preprocessed_alone_and_loads_by_its_path(
        sets: dict[str, Path], msd_cached: H5CaseSet, tmp_path: Path) -> None:
    ds = read_dataset(sets["msd"])
    part = build_cache(replace(ds, cases=ds.cases[:3]), tmp_path / "part.h5", show_progress=False)
    again = load_data(str(tmp_path / "part.h5"))
    assert isinstance(again, H5CaseSet) and again.case_ids == part.case_ids == [
        "case_000", "case_001", "case_002"]
    # its own statistics: without case 3's foreground the CT clip and z-score change
    assert again.target_spacing == msd_cached.target_spacing
    assert again.ct_stats["0"] != msd_cached.ct_stats["0"]
    fg = np.concatenate([_case_arrays(i)[0][..., 0][_case_arrays(i)[1] > 0] for i in range(3)])
    assert again.ct_stats["0"]["lower"] == pytest.approx(np.percentile(fg.astype(np.float64), 0.5))
    np.testing.assert_array_equal(again.case(1).label, msd_cached.case(1).label)
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match=r"bad\.h5: not a readable nasseg cache"):
        load_data(str(tmp_path / "bad.h5"))
    with pytest.raises(DataError, match=r"missing\.h5: file not found"):
        load_data(str(tmp_path / "missing.h5"))


def test_png_set_channels_presence_scenes(sets: dict[str, Path], tmp_path: Path) -> None:
    packed = load_folder(sets["png"], cache_dir=tmp_path / "a", show_progress=False)
    grey = load_folder(make_png(tmp_path, packed=False), cache_dir=tmp_path / "b", show_progress=False)
    for cs in (packed, grey):
        assert (cs.in_channels, cs.spatial_dims, cs.num_classes) == (3, 2, 3)
        assert cs.scene_names == ["day", "dusk", "night"] and cs.patch_size == (24, 32)
        assert cs.target_spacing == (1.0, 1.0)
    for i in range(4):
        a, b = packed.case(i), grey.case(i)
        np.testing.assert_allclose(a.image, b.image, atol=1e-6)
        rgb, label = _png_arrays(i)
        assert a.image.shape == (3, 30, 34) and not a.meta["resampled"] and a.meta["affine"] is None
        np.testing.assert_array_equal(a.label, label)
        assert a.presence.tolist() == ([1.0, 0.0] if i == 1 else [1.0, 1.0])
        assert packed.scene_names[a.scene] == PNG_SCENES[i]
        want = (rgb[..., 2] - rgb[..., 2].mean()) / rgb[..., 2].std()
        np.testing.assert_allclose(a.image[2], want, atol=1e-4)
    # scenes from dataset.json instead of scenes.csv
    folder = _copy(sets["png"], tmp_path / "c")
    (folder / "scenes.csv").unlink()
    meta = json.loads((folder / "dataset.json").read_text())
    meta["scene"] = {f"img_{i:02d}": "x" if i % 2 else "y" for i in range(4)}
    (folder / "dataset.json").write_text(json.dumps(meta))
    cs = load_folder(folder, show_progress=False)
    assert cs.scene_names == ["x", "y"] and [cs.case(i).scene for i in range(4)] == [1, 0, 1, 0]


# ----------------------------------------------------------------------------- errors and verification


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _drop_key(key: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        meta = json.loads((folder / "dataset.json").read_text())
        del meta[key]
        (folder / "dataset.json").write_text(json.dumps(meta))
    return edit


LOAD_ERRORS: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "no dataset.json": ("msd", lambda f: (f / "dataset.json").unlink(), "dataset.json"),
    "bad json": ("msd", lambda f: _write(f / "dataset.json", "{not json"), "dataset.json"),
    "missing key": ("nnunet", _drop_key("file_ending"), "dataset.json"),
    "listed file missing": ("msd", lambda f: (f / "imagesTr" / "case_002.nii.gz").unlink(),
                            "case_002.nii.gz"),
    "bad nifti": ("nnunet", lambda f: _write(f / "imagesTr" / "case_001_0001.nii.gz", "junk"),
                  "case_001_0001.nii.gz"),
    "bad png": ("png", lambda f: _write(f / "labelsTr" / "img_03.png", "junk"), "img_03.png"),
}


@pytest.mark.parametrize("problem", list(LOAD_ERRORS))
def test_load_errors_name_the_file(problem: str, sets: dict[str, Path], tmp_path: Path) -> None:
    kind, edit, name = LOAD_ERRORS[problem]
    folder = _copy(sets[kind], tmp_path)
    edit(folder)
    with pytest.raises(DataError, match=name.replace(".", r"\.")):
        load_folder(folder, cache_dir=tmp_path / "cache", show_progress=False)


def _rewrite_label(folder: Path, i: int, change: Callable[[np.ndarray], np.ndarray],
                   affine_shift: float = 0.0) -> None:
    path = folder / "labelsTr" / f"case_{i:03d}.nii.gz"
    img = nib.load(str(path))
    affine = img.affine.copy()
    affine[0, 3] += affine_shift
    nib.save(nib.Nifti1Image(change(np.asarray(img.dataobj)), affine), str(path))


def _set_voxel(folder: Path, name: str, value: float) -> None:
    path = folder / "imagesTr" / name
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).copy()
    data.reshape(-1)[data.size // 2] = value
    nib.save(nib.Nifti1Image(data, img.affine), str(path))


def _one_channel(folder: Path) -> None:
    path = folder / "imagesTr" / "case_003.nii.gz"
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), str(path))


def _empty(folder: Path) -> None:
    meta = json.loads((folder / "dataset.json").read_text())
    meta.update(training=[], numTraining=0)
    (folder / "dataset.json").write_text(json.dumps(meta))


# name -> (set, break it, file named in the problem, word in the problem)
BREAKS: dict[str, tuple[str, Callable[[Path], None], str, str]] = {
    "unreadable nifti": ("msd", lambda f: _write(f / "imagesTr" / "case_001.nii.gz", "junk"),
                         "imagesTr/case_001.nii.gz", "unreadable"),
    "unreadable png": ("png", lambda f: _write(f / "imagesTr" / "img_02_0000.png", "junk"),
                       "imagesTr/img_02_0000.png", "unreadable"),
    "shape mismatch": ("msd", lambda f: _rewrite_label(f, 2, lambda a: a[:-1]),
                       "imagesTr/case_002.nii.gz", "shape"),
    "png shape mismatch": ("png", lambda f: Image.new("L", (33, 30)).save(f / "labelsTr" / "img_01.png"),
                           "imagesTr/img_01_0000.png", "shape"),
    "affine mismatch": ("nnunet", lambda f: _rewrite_label(f, 0, lambda a: a, affine_shift=0.5),
                        "imagesTr/case_000_0000.nii.gz", "affine"),
    "channel file missing": ("nnunet", lambda f: (f / "imagesTr" / "case_003_0001.nii.gz").unlink(),
                             "imagesTr/case_003_0001.nii.gz", "does not exist"),
    "channel count": ("msd", _one_channel, "imagesTr/case_003.nii.gz", "1 channel"),
    "nan": ("nnunet", lambda f: _set_voxel(f, "case_002_0001.nii.gz", np.nan),
            "imagesTr/case_002_0001.nii.gz", "NaN"),
    "inf": ("msd", lambda f: _set_voxel(f, "case_000.nii.gz", np.inf), "imagesTr/case_000.nii.gz", "inf"),
    "label value": ("nnunet", lambda f: _rewrite_label(f, 1, lambda a: np.where(a == 2, 5, a).astype(a.dtype)),
                    "labelsTr/case_001.nii.gz", "[5]"),
    "png label value": ("png", lambda f: Image.fromarray(np.full((30, 34), 7, np.uint8), "L").save(
        f / "labelsTr" / "img_00.png"), "labelsTr/img_00.png", "[7]"),
    "empty msd": ("msd", _empty, "dataset.json", "no training cases"),
    "empty nnunet": ("nnunet", lambda f: shutil.rmtree(f / "labelsTr"), "dataset.json", "no training cases"),
    "no dataset.json": ("png", lambda f: (f / "dataset.json").unlink(), "dataset.json", "not found"),
    "bad json": ("nnunet", lambda f: _write(f / "dataset.json", "[1, 2"), "dataset.json", "JSON"),
    "missing key": ("msd", _drop_key("training"), "dataset.json", "training"),
    "image without label": ("nnunet", lambda f: (f / "labelsTr" / "case_002.nii.gz").unlink(),
                            "imagesTr/case_002_0000.nii.gz", "without label"),
    "scene missing": ("png", lambda f: _write(f / "scenes.csv", "img_00,day\nimg_01,night\n"),
                      "scenes.csv", "img_02"),
}


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_clean_sets_verify(sets: dict[str, Path]) -> None:
    for folder in sets.values():
        before = _snapshot(folder)
        assert verify_dataset(folder) == []
        assert _snapshot(folder) == before  # never writes


@pytest.mark.parametrize("problem", list(BREAKS))
def test_verify_reports(problem: str, sets: dict[str, Path], tmp_path: Path) -> None:
    kind, edit, name, word = BREAKS[problem]
    folder = _copy(sets[kind], tmp_path)
    edit(folder)
    before = _snapshot(folder)
    problems = verify_dataset(folder)
    assert _snapshot(folder) == before
    hits = [p for p in problems if p.startswith(str(folder / name) + ":") and word in p]
    assert hits, problems


def test_verify_reports_all_problems_at_once(sets: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(sets["nnunet"], tmp_path)
    chosen = ["unreadable nifti", "affine mismatch", "nan", "label value", "channel file missing",
              "shape mismatch", "image without label"]
    edits = {"unreadable nifti": lambda f: _write(f / "imagesTr" / "case_001_0000.nii.gz", "junk"),
             "shape mismatch": lambda f: _rewrite_label(f, 3, lambda a: a[:, :-1]),
             "nan": lambda f: _set_voxel(f, "case_000_0001.nii.gz", np.nan)}
    expected = {"unreadable nifti": ("imagesTr/case_001_0000.nii.gz", "unreadable"),
                "shape mismatch": ("imagesTr/case_003_0000.nii.gz", "shape"),
                "nan": ("imagesTr/case_000_0001.nii.gz", "NaN")}
    for problem in chosen:
        edits.get(problem, BREAKS[problem][1])(folder)
    problems = verify_dataset(folder)
    for problem in chosen:
        name, word = expected.get(problem, BREAKS[problem][2:])
        hits = [p for p in problems if p.startswith(str(folder / name) + ":") and word in p]
        assert hits, (problem, problems)
    assert len(problems) >= len(chosen)
    assert all(": " in p and "\n" not in p for p in problems)
