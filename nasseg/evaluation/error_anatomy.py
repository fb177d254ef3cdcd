"""Where a segmentation's errors lie: on the objects' edges, inside them, or away from them.

Dice says how much a network gets wrong, not what. :func:`error_anatomy` sorts every wrong
voxel of one case by its distance to the reference boundary, counts each class's edge misses
(the object's outer voxel layer given another label) against its edge extras (background
touching the object given its class), and judges whole reference objects (missed, or given the
wrong class) and predicted components with no reference object under them (strays). Summed over
cases (:func:`add_counts`), it tells shapes drawn too small or too large from objects missed or
confused: two nets with one Dice can fail in different ways, and only some can be fixed by
post-processing or by a wider net.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from scipy import ndimage

from nasseg.evaluation.metrics import _label_pair

__all__ = ["ERROR_PLACES", "error_anatomy", "add_counts"]

#: Wrong voxels by their distance (voxels, Euclidean) to the nearest voxel across the reference
#: boundary: ``edge`` <= 1 (the layers on both sides), ``near`` <= 2, then ``inside`` an object
#: or ``outside`` every object.
ERROR_PLACES = ("edge", "near", "inside", "outside")


def error_anatomy(pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor,
                  num_classes: int) -> dict[str, int]:
    """Counts of one case's errors (label maps of one shape, no batch axis).

    Keys: ``wrong`` (wrong voxels) and each of :data:`ERROR_PLACES`; per foreground class ``k``:
    ``voxels_k`` (reference voxels), ``overlap_k`` (voxels both call ``k``), ``predicted_k``,
    ``edge_misses_k`` and ``edge_extras_k``; ``objects``, ``missed`` (an object whose voxels are
    mostly predicted background), ``wrong_class`` (an object found but mostly given another
    foreground class) and ``strays`` (predicted components touching no reference object).
    Objects are the connected components (face neighbours) of the reference foreground.
    """
    pred, ref = _label_pair(pred, ref, num_classes)
    foreground = ref > 0
    depth = ndimage.distance_transform_edt(foreground)  # inside: distance to the background
    gap = ndimage.distance_transform_edt(~foreground)  # outside: distance to an object
    distance = np.where(foreground, depth, gap)
    wrong = pred != ref
    counts = {"wrong": int(wrong.sum()),
              "edge": int((wrong & (distance <= 1)).sum()),
              "near": int((wrong & (distance > 1) & (distance <= 2)).sum()),
              "inside": int((wrong & foreground & (distance > 2)).sum()),
              "outside": int((wrong & ~foreground & (distance > 2)).sum())}
    for k in range(1, num_classes):
        mine = ref == k
        counts[f"voxels_{k}"] = int(mine.sum())
        counts[f"overlap_{k}"] = int((mine & (pred == k)).sum())
        counts[f"predicted_{k}"] = int((pred == k).sum())
        inner = mine & (ndimage.distance_transform_edt(mine) <= 1)
        outer = ~foreground & (ndimage.distance_transform_edt(~mine) <= 1)
        counts[f"edge_misses_{k}"] = int((inner & (pred != k)).sum())
        counts[f"edge_extras_{k}"] = int((outer & (pred == k)).sum())
    counts.update(_object_errors(pred, ref, num_classes))
    return counts


def _object_errors(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> dict[str, int]:
    objects, n = ndimage.label(ref > 0)
    missed = wrong_class = 0
    for index in range(1, n + 1):
        voxels = objects == index
        truth = np.bincount(ref[voxels], minlength=num_classes)[1:].argmax()
        given = np.bincount(pred[voxels], minlength=num_classes)
        if given[1:].sum() * 2 < voxels.sum():
            missed += 1
        elif given[1:].argmax() != truth:
            wrong_class += 1
    components, m = ndimage.label(pred > 0)
    touched = np.unique(components[ref > 0])
    strays = m - int((touched > 0).sum())
    return {"objects": n, "missed": missed, "wrong_class": wrong_class, "strays": strays}


def add_counts(cases: Iterable[dict[str, int]]) -> dict[str, int]:
    """Sum :func:`error_anatomy`'s counts over cases."""
    total: dict[str, int] = {}
    for counts in cases:
        for key, value in counts.items():
            total[key] = total.get(key, 0) + value
    return total
