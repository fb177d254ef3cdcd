"""Check a data set folder case by case and list every problem found (nothing is written).

:func:`verify_dataset` returns one line ``"<file>: <problem>"`` per problem: unreadable or missing
files, channel files missing or channel counts that differ from dataset.json / between cases,
NaN or inf image values, image and label shapes or (NIfTI) affines that differ, label values
dataset.json does not list, image files without a label, a ``numTraining`` that does not match, a
case without a scene label while others have one, and an empty data set.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from nasseg.data.arrays import DataError
from nasseg.data.formats import RawCase, RawDataset, read_dataset, read_image_file, read_label_file

__all__ = ["verify_dataset", "AFFINE_ATOL"]

AFFINE_ATOL = 1e-3


def _check_case(ds: RawDataset, case: RawCase) -> tuple[list[str], int | None]:
    """Problems of one case, and its channel count (None when an image file is unusable)."""
    problems: list[str] = []
    images: list[tuple[Path, tuple[int, ...], np.ndarray | None]] = []
    channels: int | None = 0
    expected = len(ds.channel_kinds)
    for f in case.image_files:
        if not f.is_file():
            what = "channel file" if ds.format == "nnunetv2" else "listed image file"
            problems.append(f"{f}: {what} does not exist (case {case.case_id}; dataset.json lists "
                            f"{expected} channel(s))")
            channels = None
            continue
        try:
            arr, _, affine = read_image_file(f)
        except DataError as exc:
            problems.append(str(exc))
            channels = None
            continue
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            problems.append(f"{f}: image holds {bad} NaN/inf value(s)")
        if images and arr.shape[1:] != images[0][1]:
            problems.append(f"{f}: shape {arr.shape[1:]} differs from channel file {images[0][0].name} "
                            f"shape {images[0][1]}")
        if channels is not None:
            channels += arr.shape[0]
        images.append((f, tuple(arr.shape[1:]), affine))
    if channels is not None and channels != expected:
        problems.append(f"{case.image_files[0]}: case {case.case_id} has {channels} channel(s), "
                        f"dataset.json lists {expected} ({', '.join(ds.channel_kinds)})")
    lf = case.label_file
    if lf is None:
        return problems, channels
    if not lf.is_file():
        problems.append(f"{lf}: label file does not exist (case {case.case_id})")
        return problems, channels
    try:
        label, _, label_affine = read_label_file(lf)
    except DataError as exc:
        problems.append(str(exc))
        return problems, channels
    bad_values = np.setdiff1d(np.unique(label), ds.label_values)
    if bad_values.size:
        problems.append(f"{lf}: label values {bad_values.tolist()} not in dataset.json labels "
                        f"{ds.label_values}")
    for f, shape, affine in images:
        if shape != label.shape:
            problems.append(f"{f}: image shape {shape} differs from label {lf.name} shape {label.shape}")
        if affine is not None and label_affine is not None and not np.allclose(
                affine, label_affine, atol=AFFINE_ATOL):
            problems.append(f"{f}: image affine differs from label {lf.name} affine "
                            f"(max difference {np.abs(affine - label_affine).max():.4g})")
    return problems, channels


_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ending>\.nii\.gz|\.nii|\.png)$")


def _orphans(ds: RawDataset) -> list[str]:
    """nnU-Net image files without a label, or with a channel index dataset.json does not list."""
    images_dir = ds.folder / "imagesTr"
    if ds.format != "nnunetv2" or not images_dir.is_dir():
        return []
    known = {c.case_id for c in ds.cases}
    problems = []
    for f in sorted(images_dir.iterdir()):
        m = _CHANNEL_FILE.match(f.name)
        if f.name.startswith(".") or m is None or m["ending"] != ds.file_ending:
            continue
        if m["case"] not in known:
            problems.append(f"{f}: image without label file labelsTr/{m['case']}{ds.file_ending}")
        elif int(m["channel"]) >= len(ds.channel_kinds):
            problems.append(f"{f}: channel {int(m['channel'])} beyond the {len(ds.channel_kinds)} "
                            "channel(s) dataset.json lists")
    return problems


def verify_dataset(folder: str | Path) -> list[str]:
    """Every problem of the data set in ``folder``, one ``"<file>: <problem>"`` line each."""
    try:
        ds = read_dataset(folder, check_files=False)
    except DataError as exc:
        return [str(exc)]
    problems: list[str] = []
    if not ds.cases:
        problems.append(f"{ds.dataset_json}: the data set has no training cases")
    if ds.num_training is not None and ds.num_training != len(ds.cases):
        problems.append(f"{ds.dataset_json}: numTraining is {ds.num_training} but "
                        f"{len(ds.cases)} training case(s) were found")
    for case_id, n in Counter(c.case_id for c in ds.cases).items():
        if n > 1:
            problems.append(f"{ds.dataset_json}: case {case_id} is listed {n} times")
    problems.extend(_orphans(ds))
    counts: dict[str, int] = {}
    for case in ds.cases:
        case_problems, channels = _check_case(ds, case)
        problems.extend(case_problems)
        if channels is not None:
            counts[case.case_id] = channels
    if len(set(counts.values())) > 1:
        tally = Counter(counts.values())
        problems.append(f"{ds.folder / 'imagesTr'}: channel counts differ across cases ("
                        + ", ".join(f"{k} channel(s) in {v} case(s)" for k, v in sorted(tally.items()))
                        + ")")
    if ds.scene_names is not None:
        source = ds.extra_files[0] if ds.extra_files else ds.dataset_json
        for case in ds.cases:
            if case.scene is None:
                problems.append(f"{source}: no scene for case {case.case_id}")
    return problems
