"""Data-parallel search over several processes (``torchrun``): Gloo on CPU, NCCL on GPU.

Each rank searches on its own shard of the weight half and of the architecture half. Gradients
of the weights and of the architecture parameters are averaged over ranks before every step, so
all ranks take identical steps; the run checks that after every epoch (the largest difference
of the architecture parameters across ranks is recorded, and must be 0). Only rank 0 writes.
NNI's DARTS is known to end with a different architecture on each rank; this is why the
architecture gradients are reduced explicitly rather than left to a wrapper.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

__all__ = ["DistContext", "shard", "is_main_process", "launched_world_size", "launch_command"]


def is_main_process() -> bool:
    """Whether this process is rank 0 (or not part of a distributed run)."""
    return int(os.environ.get("RANK", "0")) == 0


def launched_world_size() -> int:
    """How many processes ``torchrun`` started for this run (1 outside one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launch_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """The command that re-runs ``nasseg`` with ``argv`` as ``nproc`` local processes."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "-m", "nasseg.cli", *argv]


def shard(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This rank's share of ``indices`` (every ``world_size``-th, from ``rank``)."""
    part = list(indices)[rank::world_size]
    if not part:
        raise ValueError(f"{len(indices)} cases cannot be shared by {world_size} processes")
    return part


@dataclass
class DistContext:
    """Rank, world size and the collective operations the engine needs."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and logs."""
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: torch.device) -> "DistContext":
        """Join the process group ``torchrun`` describes in the environment, if any."""
        world = launched_world_size()
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    def average_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Average ``p.grad`` over ranks in one flat all-reduce (missing grads count as 0)."""
        if not self.enabled or not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.world_size
        for p, g in zip(params, _unflatten_dense_tensors(flat, grads)):
            p.grad = g

    def broadcast(self, tensors: Sequence[torch.Tensor]) -> None:
        """Copy rank 0's values of ``tensors`` to every rank (identical starting points)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=0)

    def broadcast_value(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (decisions all ranks must take alike)."""
        if not self.enabled:
            return value
        # NCCL moves only CUDA tensors; Gloo only CPU ones
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor([float(value)], dtype=torch.float64, device=device)
        dist.broadcast(t, src=0)
        return float(t)

    def max_difference(self, tensors: Sequence[torch.Tensor]) -> float:
        """The largest absolute difference between any rank's ``tensors`` and rank 0's."""
        if not self.enabled or not tensors:
            return 0.0
        mine = _flatten_dense_tensors([t.detach() for t in tensors])
        reference = mine.clone()
        dist.broadcast(reference, src=0)
        diff = (mine - reference).abs().max().reshape(1)
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        return float(diff)

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
