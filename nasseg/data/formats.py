"""Read data set folders (Medical Segmentation Decathlon, nnU-Net v2 raw, 2D PNG) into raw cases.

:func:`read_dataset` parses ``dataset.json`` and lists the training cases as :class:`RawCase`
objects; :func:`read_image` / :func:`read_label` read one case's arrays.  Formats:

* **MSD** (also nnU-Net v1): keys ``modality`` (index -> name), ``labels`` (index -> name),
  ``training`` (list of ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}``);
  multi-channel images are 4D NIfTI with channels on the last axis.
* **nnU-Net v2 raw**: keys ``channel_names`` (index -> name), ``labels`` (name -> index),
  ``file_ending`` (``.nii.gz``, ``.nii`` or ``.png``); cases are the label files
  ``labelsTr/CASE<ending>``, images ``imagesTr/CASE_XXXX<ending>``, one file per channel.  With
  ``.png`` an RGB(A) file ``CASE_0000.png`` may hold channels R, G, B at once (alpha dropped).

NIfTI arrays are used in stored voxel order (axes x, y, z), spacing from the header zooms; PNG
arrays are (rows, columns) with spacing 1 and no affine.  Optional scene labels come from a
``scene`` dict (case -> scene name) in dataset.json, else from ``scenes.csv`` (``case,scene``
rows, optional header).  Every problem raises :class:`DataError` naming the file.
"""
from __future__ import annotations

import csv
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasseg.data.arrays import DataError

__all__ = [
    "RawCase",
    "RawDataset",
    "read_dataset",
    "read_image",
    "read_label",
    "read_spacing",
    "read_image_file",
    "read_label_file",
    "SUPPORTED_ENDINGS",
]

SUPPORTED_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".png")
_SCENES_CSV = "scenes.csv"


@dataclass
class RawCase:
    """One training case as stored: image file(s) (one per channel, or one multi-channel file)."""

    case_id: str
    image_files: list[Path]
    label_file: Path | None
    scene: str | None = None


@dataclass
class RawDataset:
    """A data set folder as described by its ``dataset.json``.

    ``label_values`` are the integers a label map may hold (``0..num_classes-1``);
    ``extra_files`` are further inputs (``scenes.csv``) that affect the cases.
    """

    name: str
    folder: Path
    format: str  # "msd" or "nnunetv2"
    class_names: list[str]
    channel_kinds: list[str]
    spatial_dims: int
    file_ending: str
    cases: list[RawCase]
    scene_names: list[str] | None = None
    num_training: int | None = None
    extra_files: list[Path] = field(default_factory=list)

    @property
    def dataset_json(self) -> Path:
        """The ``dataset.json`` file."""
        return self.folder / "dataset.json"

    @property
    def label_values(self) -> list[int]:
        """Label values dataset.json allows."""
        return list(range(len(self.class_names)))

    def source_files(self) -> list[Path]:
        """Every file the cases are read from, dataset.json and scene file included."""
        files = [self.dataset_json, *self.extra_files]
        for case in self.cases:
            files.extend(case.image_files)
            if case.label_file is not None:
                files.append(case.label_file)
        return files


# ----------------------------------------------------------------------------- dataset.json


def _load_json(path: Path) -> dict[str, Any]:
    """``dataset.json`` as a dict; DataError naming the file when missing or malformed."""
    if not path.is_file():
        raise DataError(f"{path}: not found (a data set folder needs the dataset.json of a Medical "
                        "Segmentation Decathlon or nnU-Net v2 raw data set)")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _require(obj: dict[str, Any], keys: tuple[str, ...], path: Path, fmt: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataError(f"{path}: {fmt} dataset.json lacks key(s) {missing}")


def _index_map(mapping: Any, key: str, path: Path) -> list[str]:
    """Names of an ``index -> name`` dict, ordered by index; indices must be 0..n-1."""
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(f"{path}: '{key}' must be a non-empty object of index -> name")
    try:
        items = sorted((int(k), str(v)) for k, v in mapping.items())
    except ValueError:
        raise DataError(f"{path}: '{key}' keys must be integer indices, got {list(mapping)}") from None
    if [i for i, _ in items] != list(range(len(items))):
        raise DataError(f"{path}: '{key}' indices must be 0..{len(items) - 1}, got {[i for i, _ in items]}")
    return [name for _, name in items]


def _name_map(mapping: Any, path: Path) -> list[str]:
    """Class names of nnU-Net v2 ``labels`` (name -> index), ordered by index."""
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(f"{path}: 'labels' must be a non-empty object of name -> index")
    items = []
    for name, value in mapping.items():
        if isinstance(value, (list, tuple)):
            raise DataError(f"{path}: label '{name}' is a region ({value}); region-based labels "
                            "are not supported")
        if isinstance(value, bool) or not isinstance(value, int):
            raise DataError(f"{path}: label '{name}' must map to an integer, got {value!r}")
        if name == "ignore":
            raise DataError(f"{path}: the nnU-Net 'ignore' label is not supported")
        items.append((value, str(name)))
    items.sort()
    if [i for i, _ in items] != list(range(len(items))):
        raise DataError(f"{path}: 'labels' values must be 0..{len(items) - 1}, got {[i for i, _ in items]}")
    return [name for _, name in items]


def _read_scenes(folder: Path, obj: dict[str, Any], path: Path) -> tuple[dict[str, str] | None, list[Path]]:
    """Scene map (case -> scene name) from dataset.json ``scene`` or ``scenes.csv``, and its file."""
    if "scene" in obj:
        scenes = obj["scene"]
        if not isinstance(scenes, dict):
            raise DataError(f"{path}: 'scene' must be an object of case -> scene name")
        return {str(k): str(v) for k, v in scenes.items()}, []
    csv_path = folder / _SCENES_CSV
    if not csv_path.is_file():
        return None, []
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{csv_path}: unreadable ({exc})") from None
    if rows and [c.strip().lower() for c in rows[0]] == ["case", "scene"]:
        rows = rows[1:]
    scenes: dict[str, str] = {}
    for n, row in enumerate(rows, 1):
        if len(row) != 2:
            raise DataError(f"{csv_path}: row {n} {row} is not 'case,scene'")
        scenes[row[0].strip()] = row[1].strip()
    return scenes, [csv_path]


def _msd_cases(folder: Path, obj: dict[str, Any], path: Path) -> list[RawCase]:
    training = obj["training"]
    if not isinstance(training, list):
        raise DataError(f"{path}: 'training' must be a list of {{image, label}} entries")
    cases = []
    for n, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DataError(f"{path}: training entry {n} lacks 'image' or 'label': {entry!r}")
        image = folder / str(entry["image"])
        label = folder / str(entry["label"])
        cases.append(RawCase(_stem(image, ".nii.gz"), [image], label))
    return cases


def _nnunet_cases(folder: Path, ending: str, num_channels: int) -> list[RawCase]:
    labels_dir, images_dir = folder / "labelsTr", folder / "imagesTr"
    names = sorted(p.name for p in labels_dir.iterdir()
                   if p.name.endswith(ending) and not p.name.startswith(".")) if labels_dir.is_dir() else []
    cases = []
    for name in names:
        case_id = name[: -len(ending)]
        files = [images_dir / f"{case_id}_{c:04d}{ending}" for c in range(num_channels)]
        if ending == ".png" and num_channels > 1 and files[0].is_file() and not files[1].is_file():
            files = files[:1]  # one RGB file holds the channels
        cases.append(RawCase(case_id, files, labels_dir / name))
    return cases


def _stem(path: Path, ending: str) -> str:
    name = path.name
    for end in (ending, ".nii.gz", ".nii", ".png"):
        if name.endswith(end):
            return name[: -len(end)]
    return path.stem


def read_dataset(folder: str | Path, check_files: bool = True) -> RawDataset:
    """Parse ``folder/dataset.json`` and list the training cases.

    With ``check_files`` (default) a listed file that does not exist, or a case without a scene
    while others have one, raises :class:`DataError`; :func:`~nasseg.data.verify.verify_dataset`
    passes False and reports such problems itself.
    """
    folder = Path(folder)
    path = folder / "dataset.json"
    obj = _load_json(path)
    if "channel_names" in obj or "file_ending" in obj:
        fmt = "nnunetv2"
        _require(obj, ("channel_names", "labels", "file_ending"), path, "nnU-Net v2")
        ending = str(obj["file_ending"])
        if ending not in SUPPORTED_ENDINGS:
            raise DataError(f"{path}: file_ending '{ending}' is not supported (nasseg reads "
                            f"{', '.join(SUPPORTED_ENDINGS)})")
        kinds = _index_map(obj["channel_names"], "channel_names", path)
        class_names = _name_map(obj["labels"], path)
        cases = _nnunet_cases(folder, ending, len(kinds))
    elif "modality" in obj or "training" in obj:
        fmt = "msd"
        _require(obj, ("modality", "labels", "training"), path, "Medical Segmentation Decathlon")
        ending = ".nii.gz"
        kinds = _index_map(obj["modality"], "modality", path)
        class_names = _index_map(obj["labels"], "labels", path)
        cases = _msd_cases(folder, obj, path)
    else:
        raise DataError(f"{path}: unrecognised dataset.json; expected Medical Segmentation Decathlon "
                        "keys (modality, labels, training) or nnU-Net v2 keys (channel_names, labels, "
                        f"file_ending), found {sorted(obj)}")
    if len(class_names) < 2:
        raise DataError(f"{path}: need background and at least one foreground label, got {class_names}")
    num_training = obj.get("numTraining")
    scenes, extra = _read_scenes(folder, obj, path)
    scene_names = None
    if scenes is not None:
        for case in cases:
            case.scene = scenes.get(case.case_id)
        scene_names = sorted({c.scene for c in cases if c.scene is not None}) or None
    ds = RawDataset(
        name=str(obj.get("name") or folder.resolve().name),
        folder=folder,
        format=fmt,
        class_names=class_names,
        channel_kinds=kinds,
        spatial_dims=2 if ending == ".png" else 3,
        file_ending=ending,
        cases=cases,
        scene_names=scene_names,
        num_training=int(num_training) if isinstance(num_training, int) else None,
        extra_files=extra,
    )
    if check_files:
        _check_files(ds)
    return ds


def _check_files(ds: RawDataset) -> None:
    """Raise DataError for the first missing file, an empty set or a case without a scene."""
    if not ds.cases:
        raise DataError(f"{ds.dataset_json}: the data set has no training cases")
    seen: set[str] = set()
    for case in ds.cases:
        if case.case_id in seen:
            raise DataError(f"{ds.dataset_json}: case {case.case_id} is listed twice")
        seen.add(case.case_id)
        for f in [*case.image_files, case.label_file]:
            if f is not None and not f.is_file():
                raise DataError(f"{f}: listed file does not exist (case {case.case_id})")
    if ds.scene_names is not None:
        missing = [c.case_id for c in ds.cases if c.scene is None]
        if missing:
            src = ds.extra_files[0] if ds.extra_files else ds.dataset_json
            raise DataError(f"{src}: no scene for case(s) {missing[:5]}")


# ----------------------------------------------------------------------------- file readers

_NIFTI_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError, TypeError,
                                                   zlib.error, struct.error)


def _is_png(path: Path) -> bool:
    return path.name.lower().endswith(".png")


def _load_tiff_label(path: Path) -> np.ndarray:
    """The full-resolution page of a (tiled) TIFF label map, as one 2D array."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            data = tif.pages[0].asarray()
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable TIFF ({' '.join(str(exc).split())})") from None
    if data.ndim != 2:
        raise DataError(f"{path}: a label map must be one 2D page, got shape {data.shape}")
    return data


def _load_nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray, bool]:
    """(data as stored, spacing of the first 3 axes, affine, integer-typed?) of a NIfTI file."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        affine = np.asarray(img.affine, dtype=np.float64)
    except (ImageFileError, *_NIFTI_ERRORS) as exc:
        raise DataError(f"{path}: unreadable NIfTI file ({type(exc).__name__}: {exc})") from None
    if data.ndim not in (3, 4):
        raise DataError(f"{path}: expected a 3D or 4D NIfTI image, got shape {data.shape}")
    return data, zooms, affine, np.issubdtype(data.dtype, np.integer)


def _load_png(path: Path, label: bool) -> np.ndarray:
    """PNG as (rows, cols) or, for colour images, (rows, cols, 3)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    try:
        with Image.open(path) as img:
            if not label:
                if img.mode == "P":
                    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                if img.mode in ("RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
                    img = img.convert("RGB")
                elif img.mode == "LA":
                    img = img.convert("L")
            img.load()
            mode = img.mode
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable PNG file ({type(exc).__name__}: {exc})") from None
    if label and arr.ndim != 2:
        raise DataError(f"{path}: label PNG must be single-channel integer, got shape {arr.shape} "
                        f"(PNG mode {mode})")
    return arr


def read_image_file(path: str | Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray | None]:
    """One image file as (float32 ``(C, *spatial)``, spacing, 4x4 affine or None for PNG)."""
    path = Path(path)
    if _is_png(path):
        arr = _load_png(path, label=False)
        arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
        return np.ascontiguousarray(arr, dtype=np.float32), (1.0, 1.0), None
    data, spacing, affine, _ = _load_nifti(path)
    try:
        arr = data.astype(np.float32)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: image data cannot be read as numbers ({exc})") from None
    arr = arr[None] if arr.ndim == 3 else np.moveaxis(arr, -1, 0)
    return np.ascontiguousarray(arr), spacing, affine


def _as_int_labels(arr: np.ndarray, path: Path) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.integer):
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{path}: label data of type {arr.dtype} is not numeric")
    if not np.isfinite(arr).all() or not np.equal(np.round(arr), arr).all():
        raise DataError(f"{path}: label map holds non-integer values")
    return arr.astype(np.int32)


def read_label_file(path: str | Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray | None]:
    """One label file as (integer ``(*spatial)`` array, spacing, 4x4 affine or None for PNG and
    TIFF, the label maps of large images)."""
    path = Path(path)
    if _is_png(path):
        return _as_int_labels(_load_png(path, label=True), path), (1.0, 1.0), None
    if path.name.lower().endswith((".tif", ".tiff")):
        return _as_int_labels(_load_tiff_label(path), path), (1.0, 1.0), None
    data, spacing, affine, _ = _load_nifti(path)
    if data.ndim == 4:
        if data.shape[-1] != 1:
            raise DataError(f"{path}: label map must be 3D, got shape {data.shape}")
        data = data[..., 0]
    return _as_int_labels(np.asarray(data), path), spacing, affine


def read_image(raw_case: RawCase, expected_channels: int | None = None
               ) -> tuple[np.ndarray, tuple[float, ...], np.ndarray | None]:
    """The case's image as (float32 ``(C, *spatial)``, spacing, affine or None).

    Channel files are stacked in order; spacing and affine come from the first.  With
    ``expected_channels`` a different channel count raises :class:`DataError`.
    """
    arrays, spacing, affine = [], None, None
    for f in raw_case.image_files:
        arr, sp, aff = read_image_file(f)
        if arrays and arr.shape[1:] != arrays[0].shape[1:]:
            raise DataError(f"{f}: shape {arr.shape[1:]} differs from channel file "
                            f"{raw_case.image_files[0].name} shape {arrays[0].shape[1:]}")
        if spacing is None:
            spacing, affine = sp, aff
        arrays.append(arr)
    if not arrays:
        raise DataError(f"case {raw_case.case_id}: no image files")
    image = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    if expected_channels is not None and image.shape[0] != expected_channels:
        raise DataError(f"{raw_case.image_files[0]}: case {raw_case.case_id} has {image.shape[0]} "
                        f"channel(s), dataset.json lists {expected_channels}")
    assert spacing is not None
    return image, spacing, affine


def read_label(raw_case: RawCase) -> np.ndarray:
    """The case's label map as an integer ``(*spatial)`` array."""
    if raw_case.label_file is None:
        raise DataError(f"case {raw_case.case_id}: no label file")
    return read_label_file(raw_case.label_file)[0]


def read_spacing(raw_case: RawCase) -> tuple[float, ...]:
    """Voxel spacing of the case's first image file, from the header only (1.0s for PNG)."""
    path = raw_case.image_files[0]
    if _is_png(path):
        return (1.0, 1.0)
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    try:
        return tuple(float(z) for z in nib.load(str(path)).header.get_zooms()[:3])
    except (ImageFileError, *_NIFTI_ERRORS) as exc:
        raise DataError(f"{path}: unreadable NIfTI file ({type(exc).__name__}: {exc})") from None

