"""Settings of a differentiable search (DARTS defaults for the architecture optimizer)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["SearchConfig"]


@dataclass
class SearchConfig:
    """Everything that shapes a search, saved in ``run.json`` so a resume continues the same run.

    Args:
        epochs: total epochs, warm-up included.
        warmup_epochs: epochs that train weights only, with the architecture frozen.
        batch_size: cases per step, for both halves.
        order: 1 (first-order DARTS) or 2 (unrolled, finite-difference Hessian-vector product).
        weight_lr, weight_decay: AdamW for the network weights.
        arch_lr, arch_betas, arch_weight_decay: Adam for alphas and betas (DARTS: 3e-4,
            (0.5, 0.999), 1e-3).
        val_fraction: share of cases held out for validation Dice; the rest is halved into a
            weight half and an architecture half.
        seed, deterministic: repeatability; ``deterministic`` asks torch for deterministic kernels.
        device: ``cpu``, ``cuda``, ``cuda:1``... or ``auto``.
        num_workers: DataLoader worker processes.
    """

    epochs: int = 20
    warmup_epochs: int = 4
    batch_size: int = 2
    order: int = 1
    weight_lr: float = 3e-3
    weight_decay: float = 1e-4
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    val_fraction: float = 0.2
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    num_workers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.arch_betas = tuple(self.arch_betas)  # JSON gives lists
        if self.order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {self.order}")
        if self.epochs < 1 or not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"need epochs >= 1 and 0 <= warmup_epochs <= epochs, got "
                             f"epochs={self.epochs}, warmup_epochs={self.warmup_epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SearchConfig":
        """Settings from ``to_dict`` output; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown search settings: {unknown}")
        return cls(**values)
