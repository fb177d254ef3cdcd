"""Evaluate a folder of predicted label files against a folder of reference label files.

Files are paired by name (``case.nii.gz`` in both folders).  NIfTI (``.nii``, ``.nii.gz``) is read
with nibabel and its header spacing makes HD95 physical; PNG is read with PIL (pixel units).
Every problem raises :class:`EvaluationError` with one line naming the file or folder, so a
wrong folder or a missing case is plain before any number is reported.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nasseg.artifacts.files import write_json
from nasseg.data.arrays import DataError
from nasseg.data.formats import read_label_file
from nasseg.evaluation.metrics import ConfusionAccumulator, _nanmean, case_metrics

__all__ = ["EvaluationError", "LABEL_SUFFIXES", "evaluate_folders",
           "summarize_cases", "write_evaluation"]

#: Label file kinds evaluated; other files in the folders (JSON, logs) are ignored.
LABEL_SUFFIXES = (".nii.gz", ".nii", ".png", ".tif", ".tiff")
_METRICS = ("dice", "iou", "hd95")
_MEANS = ("mean_dice", "mean_iou", "mean_hd95", "pixel_accuracy")


class EvaluationError(ValueError):
    """Prediction or reference folders that cannot be evaluated; the message names the file."""


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _read_labels(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A label image as int64 and its voxel spacing, read by :func:`nasseg.data.formats.read_label_file`
    (PNG: spacing 1, so HD95 is in pixels); any problem is an :class:`EvaluationError` naming the file."""
    try:
        data, spacing, _ = read_label_file(path)
    except DataError as exc:
        detail = str(exc).removeprefix(f"{path}: ")
        raise EvaluationError(f"{path}: not a readable label image ({' '.join(detail.split())})") from None
    except Exception as exc:  # readers raise many types (OSError, EOFError, ImageFileError, zlib...)
        raise EvaluationError(f"{path}: not a readable label image ({_one_line(exc)})") from None
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise EvaluationError(f"{path}: header spacing {spacing} is not positive")
    data = data.astype(np.int64)
    if data.size and data.min() < 0:
        raise EvaluationError(f"{path}: label image holds negative labels")
    return data, spacing


def _case_id(name: str) -> str:
    """A label file's case: its name without the label suffix."""
    return next(name[:-len(sfx)] for sfx in LABEL_SUFFIXES if name.lower().endswith(sfx))


def _label_files(folder: str | os.PathLike[str], what: str) -> dict[str, Path]:
    """File name -> path of the label files in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: no such {what} folder")
    files = {p.name: p for p in sorted(folder.iterdir())
             if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(LABEL_SUFFIXES)}
    if not files:
        raise EvaluationError(f"{folder}: {what} folder holds no label files ({', '.join(LABEL_SUFFIXES)})")
    return files


def _check_range(path: Path, labels: np.ndarray, num_classes: int) -> None:
    if labels.size and labels.max() >= num_classes:
        raise EvaluationError(f"{path}: label {int(labels.max())} outside 0..{num_classes - 1} "
                              f"(num_classes={num_classes})")


def evaluate_folders(pred_dir: str | os.PathLike[str], ref_dir: str | os.PathLike[str],
                     num_classes: int | None = None,
                     class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-case metrics (:func:`nasseg.evaluation.metrics.case_metrics`) and their means over the cases.

    ``num_classes`` defaults to ``len(class_names)`` when names are given, else to the largest
    reference label + 1 (at least 2); ``class_names`` lists all classes, background first.
    HD95 uses each reference's header spacing (NIfTI) or pixels (PNG).

    Returns ``{"pred_dir", "ref_dir", "num_classes", "class_names", "cases": [file names],
    "per_case": {file name: metrics}, "summary": metrics, "pooled": values}`` where each
    summary value is the NaN-ignoring mean over cases of that metric (per class and the per-case
    means), and ``pooled`` holds :meth:`ConfusionAccumulator.values` over every pixel of every
    case: IoU of each class (background included), their mean, pixel accuracy and the BACH
    score (meaningful when the classes are ordered by severity).
    """
    refs = _label_files(ref_dir, "reference")
    # a prediction pairs with the reference of its case, whatever the format (a large image's
    # label map is written as TIFF where its reference may be a PNG): keyed by reference name
    by_case = {_case_id(n): p for n, p in _label_files(pred_dir, "prediction").items()}
    ref_names = {_case_id(n): n for n in refs}
    preds = {ref_names.get(case, p.name): p for case, p in by_case.items()}
    missing_ref = sorted(set(preds) - set(refs))
    missing_pred = sorted(set(refs) - set(preds))
    if missing_ref or missing_pred:
        parts = []
        if missing_ref:
            parts.append(f"predictions without reference in {ref_dir}: {', '.join(missing_ref)}")
        if missing_pred:
            parts.append(f"references without prediction in {pred_dir}: {', '.join(missing_pred)}")
        raise EvaluationError(f"{pred_dir}: " + "; ".join(parts))
    cases = sorted(refs)

    if num_classes is None and class_names is not None:
        num_classes = len(class_names)
    if num_classes is None:
        num_classes = 2
        for name in cases:
            labels, _ = _read_labels(refs[name])
            if labels.size:
                num_classes = max(num_classes, int(labels.max()) + 1)
    if num_classes < 2:
        raise EvaluationError(f"num_classes must be >= 2, got {num_classes}")
    names = [str(c) for c in range(num_classes)] if class_names is None else [str(c) for c in class_names]
    if len(names) != num_classes:
        raise EvaluationError(f"class_names has {len(names)} names but num_classes is {num_classes}")

    per_case: dict[str, dict[str, Any]] = {}
    pooled = ConfusionAccumulator(num_classes)
    for name in cases:
        ref, spacing = _read_labels(refs[name])
        pred, _ = _read_labels(preds[name])
        if pred.shape != ref.shape:
            raise EvaluationError(f"{preds[name]}: shape {pred.shape} does not match reference "
                                  f"{refs[name]} shape {ref.shape}")
        _check_range(refs[name], ref, num_classes)
        _check_range(preds[name], pred, num_classes)
        per_case[name] = case_metrics(pred, ref, num_classes, spacing=spacing, class_names=names)
        pooled.update(pred, ref)

    summary = summarize_cases(per_case, names)
    return {
        "pred_dir": str(pred_dir),
        "ref_dir": str(ref_dir),
        "num_classes": num_classes,
        "class_names": names,
        "cases": cases,
        "per_case": per_case,
        "summary": summary,
        "pooled": pooled.values(),
    }


def summarize_cases(per_case: dict[str, dict[str, Any]], class_names: Sequence[str]
                    ) -> dict[str, Any]:
    """The NaN-ignoring mean over cases of every :func:`case_metrics` value, per class and
    overall (shared by ``nasseg evaluate`` and the trainer's ``metrics.json``)."""
    summary: dict[str, Any] = {
        metric: {c: _nanmean([m[metric][c] for m in per_case.values()]) for c in class_names[1:]}
        for metric in _METRICS
    }
    summary.update({key: _nanmean([m[key] for m in per_case.values()]) for key in _MEANS})
    return summary


def write_evaluation(summary: dict[str, Any], out_json: str | os.PathLike[str]) -> None:
    """Write an :func:`evaluate_folders` result as strict JSON (NaN -> null), atomically."""
    write_json(out_json, summary)
