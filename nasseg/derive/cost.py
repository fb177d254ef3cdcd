"""What a network costs at inference: parameters and FLOPs for one location of its view.

Modules a space marks as training-only (:meth:`SearchSpace.training_only`) are not counted:
they never run at inference, so the numbers compare with a plain network's.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_parameters", "count_flops", "inference_parameters", "is_under"]


def is_under(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether the parameter or module ``name`` lies inside one of the modules ``prefixes``."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def inference_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """Named parameters of ``model`` less those of its training-only modules."""
    skip = tuple(model.training_only()) if hasattr(model, "training_only") else ()
    for name, p in model.named_parameters():
        if not is_under(name, skip):
            yield name, p


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters used at inference."""
    return sum(p.numel() for _, p in inference_parameters(model) if p.requires_grad)


@torch.no_grad()
def count_flops(model: nn.Module, example: Mapping[str, torch.Tensor] | torch.Tensor) -> int:
    """FLOPs of one eval-mode forward pass on ``example`` (a batch dict of the network's view,
    or an image tensor), by torch's counter; a multiply-add counts 2."""
    was_training = model.training
    model.eval()
    batch = {"image": example} if isinstance(example, torch.Tensor) else dict(example)
    counter = FlopCounterMode(display=False)
    with counter:
        if hasattr(model, "forward_batch"):
            model.forward_batch(batch)
        else:
            model(batch["image"])
    model.train(was_training)
    return int(counter.get_total_flops())
