"""Settings every run shares, whether it searches or retrains."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RunSettings"]


@dataclass
class RunSettings:
    """Batch size, validation split, repeatability, device and loader workers.

    Args:
        batch_size: cases (patches) per step.
        val_fraction: share of cases held out for validation.
        seed, deterministic: repeatability; ``deterministic`` asks torch for deterministic kernels.
        device: ``cpu``, ``cuda``, ``cuda:1``... or ``auto``.
        num_workers: DataLoader worker processes (patch reading and augmentation).
    """

    batch_size: int = 2
    val_fraction: float = 0.2
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    num_workers: int = 0
