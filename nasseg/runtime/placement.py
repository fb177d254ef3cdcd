"""Where a run's tensors live: the device, the memory format, compilation."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from nasseg.runtime.fastconv import speed_up_convs

__all__ = ["prepare_model", "place_batch", "memory_format"]


def memory_format(tensor: torch.Tensor) -> torch.memory_format | None:
    """Channels-last format for a 4D or 5D tensor, None for others."""
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(tensor.dim())


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool = False,
                  compile: bool = False) -> nn.Module:
    """Move ``model`` to ``device`` in place, with the CPU's faster exact conv gradients,
    channels-last weights and ``torch.compile`` (in place: state-dict keys and hooks stay)."""
    model.to(device)
    if device.type == "cpu":
        speed_up_convs(model)
    if channels_last:
        for t in list(model.parameters()) + list(model.buffers()):
            if memory_format(t) is not None:
                t.data = t.data.contiguous(memory_format=memory_format(t))
    if compile:
        model.compile()
    return model


def place_batch(batch: Mapping[str, Any], device: torch.device, channels_last: bool = False
                ) -> dict[str, Any]:
    """The batch with every tensor on ``device`` (float 4D/5D ones channels-last if asked)."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and value.is_floating_point() and memory_format(value) is not None:
                value = value.contiguous(memory_format=memory_format(value))
        out[key] = value
    return out
