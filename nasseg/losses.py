"""Segmentation training losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DiceCELoss"]


class DiceCELoss(nn.Module):
    """Weighted sum of cross-entropy and batch-level soft Dice over the foreground classes.

    Takes logits ``(N, C, *spatial)`` and int64 labels ``(N, *spatial)`` for 2D or 3D
    data.  Cross-entropy gives well-behaved per-voxel gradients while the Dice term
    counters the background/foreground imbalance; Dice sums are taken over the whole
    batch (not per case) so cases lacking a class do not produce unstable ratios.
    """

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1e-5) -> None:
        super().__init__()
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the scalar loss ``ce_weight * CE + dice_weight * (1 - mean foreground soft Dice)``."""
        if logits.ndim < 3 or logits.shape[1] < 2:
            raise ValueError(f"logits must be (N, C>=2, *spatial), got {tuple(logits.shape)}")
        if target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(
                f"target shape {tuple(target.shape)} does not match logits shape {tuple(logits.shape)}"
            )
        target = target.long()
        num_classes = logits.shape[1]
        ce = F.cross_entropy(logits, target)
        probs = torch.softmax(logits, dim=1)[:, 1:]
        onehot = F.one_hot(target, num_classes).movedim(-1, 1)[:, 1:].to(probs.dtype)
        dims = (0, *range(2, logits.ndim))
        intersection = (probs * onehot).sum(dims)
        denominator = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * intersection + self.smooth) / (denominator + self.smooth)
        return self.ce_weight * ce + self.dice_weight * (1 - dice.mean())
