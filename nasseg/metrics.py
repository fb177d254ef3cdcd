"""Segmentation evaluation metrics."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["DiceAccumulator", "chance_dice"]


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
