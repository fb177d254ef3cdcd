"""Stop on a NaN or infinite loss instead of training on through it."""
from __future__ import annotations

import torch

__all__ = ["NonFiniteLossError", "check_finite"]


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the run stopped and its last checkpoint is intact."""


def check_finite(loss: torch.Tensor, what: str, epoch: int, step: int) -> None:
    """Raise :class:`NonFiniteLossError` naming the loss, epoch and step if ``loss`` is not finite."""
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(
            f"the {what} loss became {loss.detach().float().item()} at epoch {epoch}, step {step}; "
            "the run stopped (lower the learning rate or check the data); the last checkpoint "
            "is intact")
