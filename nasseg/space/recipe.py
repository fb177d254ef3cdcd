"""A space's training recipe: its stages and the metrics it reports beyond Dice.

The search engine and the retrain read these declarations; neither knows a space by name.
Multi-step methods (MSN, DA-RefineNet, task decomposition) are lists of stages, not copies of
the training loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import torch

__all__ = ["TrainingStage", "BatchMetric", "stage_schedule", "schedule_in_passes",
           "final_stage_epochs"]


@dataclass(frozen=True)
class TrainingStage:
    """One stage of a space's training recipe.

    Args:
        name: shown in logs; spaces switch their loss on it (``compute_loss(..., stage)``).
        fraction: share of the epochs this stage gets (the fractions are normalised).
        trainable: prefixes of parameter names trained in this stage (empty: all parameters);
            the others keep their values bit for bit.
        eval_modules: prefixes of module names kept in eval mode during the stage (frozen
            batch-norm statistics, dropout off); ``""`` names the whole network.
        lr_scale: the stage's learning rate relative to the run's (on top of the schedule).
        lr_multipliers: ``{prefix: factor}`` per-part learning rates (e.g. a pretrained
            encoder at 0.1); the longest matching prefix wins.
        cases: the share ``(start, end)`` of the training cases this stage trains on, e.g.
            ``(0.8, 1.0)`` for a held-out sub-training set.
        search: whether the architecture is searched during this stage (search only).
    """

    name: str
    fraction: float = 1.0
    trainable: tuple[str, ...] = ()
    eval_modules: tuple[str, ...] = ()
    lr_scale: float = 1.0
    lr_multipliers: Mapping[str, float] = field(default_factory=dict)
    cases: tuple[float, float] = (0.0, 1.0)
    search: bool = True

    def __post_init__(self) -> None:
        if not self.fraction > 0:
            raise ValueError(f"stage {self.name!r}: fraction must be > 0, got {self.fraction}")
        if not self.lr_scale > 0 or any(not m >= 0 for m in self.lr_multipliers.values()):
            raise ValueError(f"stage {self.name!r}: learning-rate scales must be positive")
        lo, hi = self.cases
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"stage {self.name!r}: cases must be (start, end) with "
                             f"0 <= start < end <= 1, got {self.cases}")
        object.__setattr__(self, "trainable", tuple(self.trainable))
        object.__setattr__(self, "eval_modules", tuple(self.eval_modules))
        object.__setattr__(self, "lr_multipliers", dict(self.lr_multipliers))

    def trains(self, name: str) -> bool:
        """Whether the parameter ``name`` is trained in this stage."""
        return not self.trainable or name.startswith(self.trainable)

    def lr_factor(self, name: str) -> float:
        """The learning-rate factor of parameter ``name`` (stage scale times its multiplier)."""
        best = max((p for p in self.lr_multipliers if name.startswith(p)), key=len, default=None)
        return self.lr_scale * (1.0 if best is None else self.lr_multipliers[best])

    def in_eval(self, module_name: str) -> bool:
        """Whether the module ``module_name`` stays in eval mode during this stage."""
        return any(module_name.startswith(p) for p in self.eval_modules)

    def case_share(self, indices: Sequence[int]) -> list[int]:
        """The stage's share ``cases`` of ``indices`` (at least one case)."""
        n = len(indices)
        lo, hi = int(round(self.cases[0] * n)), int(round(self.cases[1] * n))
        lo = min(lo, n - 1)
        return list(indices[lo:max(hi, lo + 1)])

    def describe(self) -> dict[str, Any]:
        """JSON form for run folders and ``nasseg spaces``."""
        return {"name": self.name, "fraction": self.fraction, "trainable": list(self.trainable),
                "eval_modules": list(self.eval_modules), "lr_scale": self.lr_scale,
                "lr_multipliers": dict(self.lr_multipliers), "cases": list(self.cases),
                "search": self.search}


def stage_schedule(stages: Sequence[TrainingStage], epochs: int) -> list[TrainingStage]:
    """The stage of every epoch: each stage gets its share of ``epochs`` (at least one)."""
    if not stages:
        raise ValueError("a training recipe needs at least one stage")
    if epochs < len(stages):
        raise ValueError(f"{epochs} epoch(s) cannot hold the recipe's {len(stages)} stages "
                         f"({', '.join(s.name for s in stages)}); give more epochs")
    total = sum(s.fraction for s in stages)
    counts = [max(1, round(epochs * s.fraction / total)) for s in stages]
    while sum(counts) > epochs:  # rounding up short stages can overshoot
        counts[counts.index(max(counts))] -= 1
    counts[-1] += epochs - sum(counts)
    return [s for s, n in zip(stages, counts) for _ in range(n)]


def schedule_in_passes(stages: Sequence[TrainingStage], passes: Sequence[int]
                       ) -> list[TrainingStage]:
    """The stage of every epoch when the recipe runs once per entry of ``passes``, each time
    over that many epochs: epochs added to a planned run are another pass through its stages
    (the stages in order, each its share), not a redistribution of the epochs already run."""
    return [stage for epochs in passes for stage in stage_schedule(stages, epochs)]


def final_stage_epochs(schedule: Sequence[TrainingStage]) -> range:
    """The epochs of the last stage: the network it ends with is the one a run keeps, so the
    best epoch is chosen among them (earlier stages may not train the final output at all)."""
    last = schedule[-1]
    first = len(schedule)
    while first > 0 and schedule[first - 1] is last:
        first -= 1
    return range(first, len(schedule))


@runtime_checkable
class BatchMetric(Protocol):
    """A validation metric a space adds beyond Dice, accumulated over batches.

    ``update`` sees the network's outputs (eval mode) and the batch with its targets;
    ``compute`` returns named values (higher is better for the one a space selects by).
    A fresh object is asked for at every validation.
    """

    def update(self, outputs: Any, batch: Mapping[str, torch.Tensor]) -> None: ...

    def compute(self) -> dict[str, float]: ...
