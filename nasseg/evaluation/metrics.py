"""Segmentation evaluation metrics.

Whole-set Dice for training (:class:`DiceAccumulator`), and per-case metrics on label maps for
evaluation (:func:`case_metrics`: Dice, IoU, HD95, pixel accuracy). For multi-task spaces:
class-presence accuracy and F1 (:class:`FlagAccumulator`) and the per-image mean IoU of the
ROBOT18 challenge (:func:`image_mean_iou`). For classes ordered by severity (BACH: normal,
benign, in situ, invasive), :class:`ConfusionAccumulator` pools a confusion matrix over a set and
gives IoU of every class (background included), their mean, pixel accuracy and the ordinal
score of the BACH challenge (:func:`ordinal_score`). For small targets: the per-object Dice of
the reference objects up to a size (:class:`SmallObjectDice`). Per-class lists cover the
foreground classes ``1..num_classes-1``; a class absent from prediction and reference scores NaN
and means ignore NaN.
"""

from __future__ import annotations

import math

from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage

__all__ = ["DiceAccumulator", "FlagAccumulator", "ConfusionAccumulator", "ordinal_score",
           "SmallObjectDice", "ball_size", "object_dice",
           "image_mean_iou", "chance_dice", "dice_per_class", "iou_per_class", "hd95_per_class",
           "pixel_accuracy", "case_metrics"]


class DiceAccumulator:
    """Global (whole-set) Dice per foreground class from accumulated TP/FP/FN counts.

    Counting over the whole evaluation set, instead of averaging per-case scores, keeps
    cases that lack a class from dominating the mean with 0/0 or tiny-object scores.
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.reset()

    def reset(self) -> None:
        """Clear the accumulated counts."""
        self.tp = np.zeros(self.num_classes, dtype=np.int64)
        self.fp = np.zeros(self.num_classes, dtype=np.int64)
        self.fn = np.zeros(self.num_classes, dtype=np.int64)

    def update(self, logits_or_labels: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add a batch: logits ``(N, C, *spatial)`` (argmaxed over C) or predicted labels ``(N, *spatial)``."""
        pred = torch.as_tensor(logits_or_labels).detach().cpu()
        ref = torch.as_tensor(target).detach().cpu().long()
        if pred.is_floating_point():
            if pred.ndim != ref.ndim + 1 or pred.shape[1] != self.num_classes:
                raise ValueError(
                    f"logits shape {tuple(pred.shape)} must be (N, {self.num_classes}, *spatial) "
                    f"for target shape {tuple(ref.shape)}"
                )
            pred = pred.argmax(dim=1)
        pred = pred.long()
        if pred.shape != ref.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(ref.shape)}")
        k = self.num_classes
        for name, values in (("prediction", pred), ("target", ref)):
            if values.numel() and (values.min() < 0 or values.max() >= k):
                raise ValueError(f"{name} values outside 0..{k - 1}")
        confusion = torch.bincount((ref * k + pred).flatten(), minlength=k * k).reshape(k, k).numpy()
        diag = np.diag(confusion)
        self.tp += diag
        self.fp += confusion.sum(axis=0) - diag
        self.fn += confusion.sum(axis=1) - diag

    def per_class(self) -> list[float]:
        """Dice of each foreground class (1..C-1); NaN where absent from prediction and reference."""
        scores = []
        for c in range(1, self.num_classes):
            denom = 2 * self.tp[c] + self.fp[c] + self.fn[c]
            scores.append(float(2 * self.tp[c] / denom) if denom else math.nan)
        return scores

    def mean(self) -> float:
        """Mean foreground Dice ignoring NaN classes; 0.0 if every class is NaN."""
        scores = [s for s in self.per_class() if not math.isnan(s)]
        return float(sum(scores) / len(scores)) if scores else 0.0

    def iou_per_class(self, background: bool = True) -> list[float]:
        """IoU ``TP / (TP + FP + FN)`` of every class (from 0 with ``background``, else from 1);
        NaN where absent from prediction and reference."""
        first = 0 if background else 1
        return [float(self.tp[c] / d) if (d := self.tp[c] + self.fp[c] + self.fn[c]) else math.nan
                for c in range(first, self.num_classes)]

    def mean_iou(self, background: bool = True) -> float:
        """Mean IoU over the classes (semantic segmentation's mIoU counts the background class
        too) ignoring NaN classes; 0.0 if every class is NaN."""
        scores = [s for s in self.iou_per_class(background) if not math.isnan(s)]
        return float(sum(scores) / len(scores)) if scores else 0.0


class FlagAccumulator:
    """Accuracy and F1 of binary flags (e.g. per-class presence ``(N, K-1)``) over batches.

    F1 is micro-averaged: true and false positives of every class are pooled, so a class that
    is rarely present does not swing the score. F1 is 1.0 when no flag is set in either.
    """

    def __init__(self) -> None:
        self.tp = self.fp = self.fn = self.tn = 0

    def update(self, pred: torch.Tensor, ref: torch.Tensor) -> None:
        """Add flags of equal shape (any value > 0.5 counts as set)."""
        if pred.shape != ref.shape:
            raise ValueError(f"flag shapes differ: {tuple(pred.shape)} vs {tuple(ref.shape)}")
        p, r = pred.detach().cpu() > 0.5, ref.detach().cpu() > 0.5
        self.tp += int((p & r).sum())
        self.fp += int((p & ~r).sum())
        self.fn += int((~p & r).sum())
        self.tn += int((~p & ~r).sum())

    def accuracy(self) -> float:
        """Share of flags predicted right; NaN before any update."""
        total = self.tp + self.fp + self.fn + self.tn
        return (self.tp + self.tn) / total if total else math.nan

    def f1(self) -> float:
        """Micro F1 ``2TP / (2TP + FP + FN)``."""
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else 1.0


class ConfusionAccumulator:
    """A confusion matrix pooled over every pixel of a set (predictions of any batch shape).

    Reports per-class IoU over *all* classes (background included, as BACH's mIoU), their mean
    (classes absent from prediction and reference are left out), pixel accuracy and
    :func:`ordinal_score`, all from the pooled counts (the score's sums run over the whole set,
    as the BACH evaluation pools them).
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)  # [reference, pred]

    def update(self, pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor) -> None:
        """Add label maps (same shape, values in ``0..num_classes-1``)."""
        pred, ref = _label_pair(pred, ref, self.num_classes)
        k = self.num_classes
        self.matrix += np.bincount(ref.ravel() * k + pred.ravel(), minlength=k * k).reshape(k, k)

    def iou(self) -> list[float]:
        """IoU of every class, background first; NaN for a class seen nowhere."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        return [float(t / u) if u else math.nan for t, u in zip(tp, union)]

    def values(self) -> dict[str, float]:
        """``iou0`` .. ``iou{K-1}``, ``miou``, ``accuracy`` and ``score``."""
        iou = self.iou()
        total = self.matrix.sum()
        values = {f"iou{c}": v for c, v in enumerate(iou)}
        values.update(miou=_nanmean(iou),
                      accuracy=float(np.trace(self.matrix) / total) if total else math.nan,
                      score=_score_of(self.matrix))
        return values


def _score_of(matrix: np.ndarray) -> float:
    """:func:`ordinal_score` of a confusion matrix ``[reference, prediction]``."""
    k = matrix.shape[0]
    ref, pred = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    cost = (matrix * np.abs(pred - ref)).sum()
    weight = np.maximum(ref, k - 1 - ref) * ~((ref == 0) & (pred == 0))
    h = (matrix * weight).sum()
    return 1.0 if h == 0 else float(1.0 - cost / h)


def ordinal_score(pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor,
                  num_classes: int) -> float:
    """The BACH challenge score of label maps whose classes are ordered (eqs. 13-14 of
    DA-RefineNet): ``1 - sum|pred - ref| / h`` with ``h = sum max(ref, K-1-ref)`` over pixels
    where prediction or reference is not class 0. In [0, 1]; 1 when ``h`` is 0 (both all 0)."""
    acc = ConfusionAccumulator(num_classes)
    acc.update(pred, ref)
    return _score_of(acc.matrix)


def ball_size(radius: float, spatial_dims: int) -> float:
    """Voxels of a ball (3D) or pixels of a disc (2D) of ``radius``: a size threshold that reads
    the same in 2D and 3D."""
    return math.pi * radius ** 2 if spatial_dims == 2 else 4.0 / 3.0 * math.pi * radius ** 3


def object_dice(pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor,
                num_classes: int, max_size: float) -> list[float]:
    """Dice of every reference object (connected component of one foreground class, face
    connectivity) of at most ``max_size`` voxels in one label map.

    An object ``C`` of class ``c`` is scored against the predicted components of class ``c``
    that touch it (``R``): ``2 |C & R| / (|C| + |R|)``. A missed object scores 0; predictions
    away from every small object do not count (whole-set Dice covers them).
    """
    p, r = _label_pair(pred, ref, num_classes)
    scores = []
    for c in range(1, num_classes):
        objects, n = ndimage.label(r == c)
        if not n:
            continue
        sizes = np.bincount(objects.ravel(), minlength=n + 1)
        small = [k for k in range(1, n + 1) if sizes[k] <= max_size]
        if not small:
            continue
        predicted, _ = ndimage.label(p == c)
        for k in small:
            obj = objects == k
            touching = np.unique(predicted[obj])
            hit = np.isin(predicted, touching[touching > 0])
            scores.append(float(2 * (obj & hit).sum() / (obj.sum() + hit.sum())))
    return scores


class SmallObjectDice:
    """Mean per-object Dice (:func:`object_dice`) of the small reference objects over batches of
    label maps; NaN while none was seen."""

    def __init__(self, num_classes: int, max_size: float) -> None:
        self.num_classes, self.max_size = int(num_classes), float(max_size)
        self.scores: list[float] = []

    def update(self, pred: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray) -> None:
        """Add a batch of predicted and reference label maps ``(N, *spatial)``."""
        for p, r in zip(torch.as_tensor(pred).cpu().numpy(), torch.as_tensor(ref).cpu().numpy()):
            self.scores += object_dice(p, r, self.num_classes, self.max_size)

    def mean(self) -> float:
        """Mean over every small object seen (NaN if none)."""
        return float(np.mean(self.scores)) if self.scores else math.nan


def image_mean_iou(pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor,
                   num_classes: int) -> float:
    """Mean foreground IoU of one image by the ROBOT18 convention (TDSNet's evaluation code):
    a class absent from both prediction and reference scores 1, so every image has a value."""
    return float(np.mean([1.0 if math.isnan(v) else v
                          for v in iou_per_class(pred, ref, num_classes)]))


def chance_dice(labels: np.ndarray, num_classes: int) -> float:
    """Expected mean foreground Dice of a predictor guessing each voxel from the class frequencies.

    For a class of frequency ``p`` both prediction and reference cover a fraction ``p``
    and overlap on ``p**2``, so its expected Dice is ``p``; the result is the mean over
    foreground classes that occur (0.0 if none does).  It is the floor a trained model
    must clearly beat.
    """
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"label values outside 0..{num_classes - 1}")
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=num_classes)[:num_classes]
    freqs = counts[1:] / max(labels.size, 1)
    present = freqs[counts[1:] > 0]
    return float(present.mean()) if present.size else 0.0


# ---------------------------------------------------------------- per-case metrics on label maps


def _labels(values: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """``values`` as an int64 array; floats must hold whole numbers."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise ValueError(f"{name} holds non-integer values; pass label maps, not probabilities")
    elif values.dtype.kind not in "iub":
        raise ValueError(f"{name} must be a numeric label map, got dtype {values.dtype}")
    return values.astype(np.int64, copy=False)


def _label_pair(pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor,
                num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Checked int64 ``(pred, ref)`` of one shape with values in ``0..num_classes-1``."""
    pred, ref = _labels(pred, "prediction"), _labels(ref, "reference")
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match reference shape {ref.shape}")
    if num_classes is not None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        for name, values in (("prediction", pred), ("reference", ref)):
            if values.size and (values.min() < 0 or values.max() >= num_classes):
                raise ValueError(f"{name} values outside 0..{num_classes - 1}")
    return pred, ref


def _counts(pred: np.ndarray, ref: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class true positives, false positives and false negatives."""
    confusion = np.bincount((ref * k + pred).ravel(), minlength=k * k).reshape(k, k)
    tp = np.diag(confusion)
    return tp, confusion.sum(axis=0) - tp, confusion.sum(axis=1) - tp


def _dice(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> list[float]:
    return [float(2 * tp[c] / d) if (d := 2 * tp[c] + fp[c] + fn[c]) else math.nan
            for c in range(1, len(tp))]


def _iou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> list[float]:
    return [float(tp[c] / d) if (d := tp[c] + fp[c] + fn[c]) else math.nan
            for c in range(1, len(tp))]


def _nanmean(values: Sequence[float]) -> float:
    """Mean ignoring NaN; NaN when nothing is left."""
    kept = [float(v) for v in values if not math.isnan(v)]
    return float(sum(kept) / len(kept)) if kept else math.nan


def dice_per_class(pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor,
                   num_classes: int) -> list[float]:
    """Dice ``2|P&R| / (|P| + |R|)`` of each foreground class of one case; NaN if absent from both."""
    pred, ref = _label_pair(pred, ref, num_classes)
    return _dice(*_counts(pred, ref, num_classes))


def iou_per_class(pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor,
                  num_classes: int) -> list[float]:
    """IoU (Jaccard) ``|P&R| / |P|R|`` of each foreground class of one case; NaN if absent from both."""
    pred, ref = _label_pair(pred, ref, num_classes)
    return _iou(*_counts(pred, ref, num_classes))


def pixel_accuracy(pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor) -> float:
    """Fraction of voxels (background included) whose predicted label is right; NaN if empty."""
    pred, ref = _label_pair(pred, ref, None)
    return float(np.mean(pred == ref)) if ref.size else math.nan


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing {spacing} must be {ndim} positive numbers")
    return spacing


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (the image border counts as outside)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _hd95(pmask: np.ndarray, rmask: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Symmetric 95th-percentile surface distance of two non-empty masks."""
    # Cropping to the joint bounding box is exact: Euclidean distances do not depend on the
    # domain, and outside the box both masks are empty, as beyond the image border.
    box = ndimage.find_objects((pmask | rmask).astype(np.int8))[0]
    psurf, rsurf = _surface(pmask[box]), _surface(rmask[box])
    to_ref = ndimage.distance_transform_edt(~rsurf, sampling=spacing)[psurf]
    to_pred = ndimage.distance_transform_edt(~psurf, sampling=spacing)[rsurf]
    return float(max(np.percentile(to_ref, 95), np.percentile(to_pred, 95)))


def hd95_per_class(pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor,
                   num_classes: int, spacing: Sequence[float] | None = None) -> list[float]:
    """95th-percentile Hausdorff distance between the surfaces of each foreground class.

    Surfaces are the voxels of a class with a face neighbour outside it.  The result is the
    larger of the two directed 95th percentiles of surface-to-surface distances (as MedPy and
    MONAI), in physical units when ``spacing`` (one value per axis) is given, else in voxels.

    Conventions: NaN when the class is absent from both prediction and reference; when it is in
    only one of them, the diagonal of the image extent ``sqrt(sum((shape * spacing)**2))``: a
    finite penalty larger than any distance between two voxels of the image.
    """
    pred, ref = _label_pair(pred, ref, num_classes)
    sp = _spacing(spacing, ref.ndim)
    diagonal = float(math.sqrt(sum((n * s) ** 2 for n, s in zip(ref.shape, sp))))
    scores = []
    for c in range(1, num_classes):
        pmask, rmask = pred == c, ref == c
        has_p, has_r = bool(pmask.any()), bool(rmask.any())
        if not (has_p or has_r):
            scores.append(math.nan)
        elif not (has_p and has_r):
            scores.append(diagonal)
        else:
            scores.append(_hd95(pmask, rmask, sp))
    return scores


def case_metrics(pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor, num_classes: int,
                 spacing: Sequence[float] | None = None,
                 class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """All metrics of one case (label maps of one shape, no batch axis).

    Returns ``{"dice", "iou", "hd95"}``: per foreground class, keyed by ``class_names[1:]``
    (``class_names`` lists all ``num_classes`` names, background first; default ``"1"``,
    ``"2"``, ...), plus ``mean_dice``, ``mean_iou`` (the mIoU: mean over foreground classes in
    prediction or reference), ``mean_hd95`` (NaN-ignoring means, NaN if no class is present)
    and ``pixel_accuracy``.  HD95 conventions: see :func:`hd95_per_class`.
    """
    pred, ref = _label_pair(pred, ref, num_classes)
    if class_names is None:
        names = [str(c) for c in range(1, num_classes)]
    elif len(class_names) != num_classes:
        raise ValueError(f"class_names must name all {num_classes} classes (background first), "
                         f"got {list(class_names)}")
    else:
        names = [str(n) for n in class_names[1:]]
        if len(set(names)) != len(names):
            raise ValueError(f"class_names must be unique, got {list(class_names)}")
    counts = _counts(pred, ref, num_classes)
    dice, iou = _dice(*counts), _iou(*counts)
    hd95 = hd95_per_class(pred, ref, num_classes, spacing)
    return {
        "dice": dict(zip(names, dice)),
        "iou": dict(zip(names, iou)),
        "hd95": dict(zip(names, hd95)),
        "mean_dice": _nanmean(dice),
        "mean_iou": _nanmean(iou),
        "mean_hd95": _nanmean(hd95),
        "pixel_accuracy": pixel_accuracy(pred, ref),
    }
