"""Validation: Dice and a space's own metrics of a network over a loader, in eval mode."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, ContextManager, Iterable, Sequence

import torch

from nasseg.evaluation.metrics import DiceAccumulator
from nasseg.runtime.placement import place_batch
from nasseg.space import SearchSpace

__all__ = ["Validation", "validate"]


@dataclass
class Validation:
    """What one validation measured.

    ``values`` holds ``dice_mean`` and every value the space's metrics report; ``selected`` is
    the one the space selects its best epoch by (``SearchSpace.selection_metric``).
    """

    values: dict[str, float]
    dice_per_class: list[float] = field(default_factory=list)
    selection_metric: str = "dice_mean"

    @property
    def dice(self) -> float:
        """Mean foreground Dice."""
        return self.values["dice_mean"]

    @property
    def selected(self) -> float:
        """The value of the selection metric (NaN where nothing was validated: the ranks other
        than 0 of a distributed run)."""
        return self.values.get(self.selection_metric, float("nan"))

    def scalars(self, class_names: Sequence[str]) -> dict[str, float]:
        """TensorBoard scalars: ``val/NAME`` for every value, ``dice/val_CLASS`` per class."""
        out = {f"val/{k}": v for k, v in self.values.items()}
        out.update({f"dice/val_{n}": d for n, d in zip(class_names[1:], self.dice_per_class)})
        return out


@torch.no_grad()
def validate(model: SearchSpace, batches: Iterable[dict[str, Any]], num_classes: int,
             device: torch.device, autocast: ContextManager | None = None) -> Validation:
    """Run ``model`` in eval mode over ``batches``: Dice (accumulated over the whole set, so
    small cases do not dominate; a class absent from prediction and reference gets NaN) and
    the metrics of ``model.metrics()``."""
    was_training = model.training
    model.eval()
    dice = DiceAccumulator(num_classes)
    extra = model.metrics()
    for batch in batches:
        batch = place_batch(batch, device)
        with autocast or nullcontext():
            outputs = model.forward_batch(batch)
        dice.update(model.segmentation(outputs).argmax(1).cpu(), batch["label"].cpu())
        for metric in extra:
            metric.update(outputs, batch)
    model.train(was_training)
    values = {"dice_mean": dice.mean()}
    for metric in extra:
        values.update({k: float(v) for k, v in metric.compute().items()})
    if model.selection_metric not in values:
        raise ValueError(f"{type(model).__name__}.selection_metric is "
                         f"{model.selection_metric!r}, but validation reports only "
                         f"{sorted(values)}")
    return Validation(values, dice.per_class(), model.selection_metric)
