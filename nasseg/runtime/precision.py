"""Mixed precision and the weight update, the same for the search and the retrain."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager, Sequence

import torch
from torch import nn

__all__ = ["Precision", "GRAD_CLIP"]

#: Gradient-norm clipping of every weight step (nnU-Net's 12).
GRAD_CLIP = 12.0


class Precision:
    """Autocast and loss scaling for one run.

    With ``amp``: bf16 autocast where supported (CPU, recent GPUs), else fp16 with a
    ``GradScaler``. Without: full precision, and every method is a plain pass-through.
    """

    def __init__(self, device: torch.device, amp: bool) -> None:
        self.device = device
        self.dtype: torch.dtype | None = None
        if amp:
            self.dtype = (torch.float16 if device.type == "cuda"
                          and not torch.cuda.is_bf16_supported() else torch.bfloat16)
        self.scaler = (torch.amp.GradScaler(device.type)
                       if self.dtype == torch.float16 else None)

    @property
    def name(self) -> str | None:
        """``bfloat16``, ``float16`` or None (for cost cards and run files)."""
        return None if self.dtype is None else str(self.dtype).replace("torch.", "")

    def autocast(self) -> ContextManager:
        """The autocast context of forward passes (a no-op without AMP)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, scaled under fp16."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: Sequence[nn.Parameter]) -> None:
        """Clip the gradients of ``params`` and step; fp16 unscales first and skips a step
        whose gradients overflowed."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any] | None:
        """The scaler's state (None without one)."""
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict`'s state."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
