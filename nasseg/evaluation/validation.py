"""Validation: mean and per-class foreground Dice of a network over a loader."""
from __future__ import annotations

from typing import Iterable

import torch

from nasseg.evaluation.metrics import DiceAccumulator
from nasseg.runtime.loaders import move_batch
from nasseg.space import SearchSpace

__all__ = ["evaluate_dice"]


@torch.no_grad()
def evaluate_dice(model: SearchSpace, batches: Iterable[dict[str, torch.Tensor]],
                  num_classes: int, device: torch.device) -> tuple[float, list[float]]:
    """Run ``model`` in eval mode over ``batches``; return (mean Dice, Dice per foreground class).

    Dice is accumulated over the whole set (global true/false positives), so small cases do not
    dominate; a class absent from both prediction and reference gets NaN.
    """
    was_training = model.training
    model.eval()
    acc = DiceAccumulator(num_classes)
    for batch in batches:
        batch = move_batch(batch, device)
        logits = model.segmentation(model.forward_batch(batch))
        acc.update(logits.argmax(1).cpu(), batch["label"].cpu())
    model.train(was_training)
    return acc.mean(), acc.per_class()
