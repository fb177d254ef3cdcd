"""Run a space's training stages: what trains, what stays in eval mode, at which rate.

One AdamW holds every weight for the whole run. Its parameter groups are the weights that
share a learning-rate factor in every stage, so entering a stage only switches
``requires_grad`` and the groups' rates: a checkpoint holds one optimizer state whatever the
stage, and a resumed run continues exactly. A weight a stage does not train has no gradient,
so AdamW leaves it bit for bit as it was (no decay, no momentum).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nasseg.space import TrainingStage

__all__ = ["StagedWeights"]


class StagedWeights:
    """The weights of ``model`` and their optimizer across ``stages``."""

    def __init__(self, model: nn.Module, stages: Sequence[TrainingStage], lr: float,
                 weight_decay: float) -> None:
        self.model = model
        self.stages = list(stages)
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups: dict[tuple[float, ...], list[nn.Parameter]] = {}
        for name, p in self.named:
            groups.setdefault(tuple(s.lr_factor(name) for s in self.stages), []).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": ps} for ps in groups.values()], lr=lr, weight_decay=weight_decay)
        self._keys = list(groups)
        self.stage: TrainingStage | None = None
        for stage in self.stages:
            if not any(stage.trains(n) for n, _ in self.named):
                raise ValueError(f"training stage {stage.name!r} selects no parameters "
                                 f"(prefixes {stage.trainable})")

    @property
    def params(self) -> list[nn.Parameter]:
        """Every weight the optimizer holds."""
        return [p for _, p in self.named]

    def release(self) -> None:
        """Every weight trainable again, as before the first stage (parameter counts and later
        use of the network see it whole)."""
        for _, p in self.named:
            p.requires_grad_(True)
        self.stage = None

    def trainable(self) -> list[nn.Parameter]:
        """The weights the current stage trains."""
        return [p for _, p in self.named if p.requires_grad]

    def enter(self, stage: TrainingStage, lr: float) -> None:
        """Switch to ``stage`` at the schedule's learning rate ``lr`` for this epoch."""
        index = self.stages.index(stage)
        for name, p in self.named:
            p.requires_grad_(stage.trains(name))
        for key, group in zip(self._keys, self.optimizer.param_groups):
            group["lr"] = lr * key[index]
        self.stage = stage

    def train_mode(self) -> None:
        """``model.train()``, then the stage's eval-mode modules back to eval."""
        self.model.train()
        if self.stage is not None and self.stage.eval_modules:
            for name, module in self.model.named_modules():
                if self.stage.in_eval(name):
                    module.eval()
