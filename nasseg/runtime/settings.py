"""Settings every run shares, whether it searches or retrains."""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RunSettings", "cosine_lr"]


@dataclass
class RunSettings:
    """Batch size, validation split, repeatability, device and loader workers.

    Args:
        batch_size: cases (patches) per step.
        val_fraction: share of cases held out for validation.
        seed, deterministic: repeatability; ``deterministic`` asks torch for deterministic kernels.
        device: ``cpu``, ``cuda``, ``cuda:1``... or ``auto``.
        num_workers: DataLoader worker processes (patch reading and augmentation).
        patch_size: the crop size of training patches; None takes the data set's own.
        steps_per_epoch: weight steps in an epoch, whatever the data set's size (further passes
            over the cases when needed, as nnU-Net fixes 250), so a small data set gets as much
            training as a large one; None: one pass over the cases. Searches and retrains set
            their own default (``SearchConfig``, ``TrainConfig``).
        amp: mixed precision (autocast bf16 where the GPU supports it, else fp16 with a
            GradScaler; bf16 autocast on CPU).
        channels_last: channels-last memory format (``channels_last_3d`` for 3D) for the
            weights and the inputs.
        compile: ``torch.compile`` the network (``Module.compile``; checkpoints keep their keys).
        time_budget: seconds the epochs may take; the number of epochs is then re-planned
            after each epoch to end on time (see :mod:`nasseg.runtime.time_budget`).
    """

    batch_size: int = 2
    val_fraction: float = 0.2
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    num_workers: int = 0
    patch_size: tuple[int, ...] | None = None
    steps_per_epoch: int | None = None
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    time_budget: float | None = None

    def __post_init__(self) -> None:
        if self.patch_size is not None:  # JSON gives lists
            self.patch_size = tuple(int(p) for p in self.patch_size)
            if not self.patch_size or min(self.patch_size) < 1:
                raise ValueError(f"patch_size must be positive sizes, got {self.patch_size}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget must be positive seconds, got {self.time_budget}")


def cosine_lr(base_lr: float, epoch: int, epochs: int, ramp: int = 0) -> float:
    """Cosine decay from ``base_lr`` to 10 % of it, a function of the epoch alone (so a resumed
    run sets the same rate as an unbroken one); the first ``ramp`` epochs (at most a fifth of
    ``epochs``) climb to it linearly, epoch ``e`` at ``(e + 1) / ramp`` of the rate."""
    rate = base_lr * (0.1 + 0.9 * (1 + math.cos(math.pi * epoch / epochs)) / 2)
    ramp = min(ramp, epochs // 5)
    return rate * min(1.0, (epoch + 1) / ramp) if ramp else rate
