"""The cost card of a run: ``RUN/cost.json``, written after every checkpoint.

Wall time per phase (``perf_counter`` around data loading, weight steps, architecture steps,
validation and checkpointing), step counts and rates, peak memory (peak RSS from
``getrusage``; ``torch.cuda.max_memory_allocated`` on a GPU), the device, torch version, threads
and the search settings that shape the cost (mode, AMP, channels-last, compile). A resumed
search appends a session; the top-level numbers add the sessions up (peaks: the maximum).

On a GPU the step timings are exact without extra synchronisation: every step ends with
``loss.item()``, which waits for the GPU.
"""
from __future__ import annotations

import dataclasses
import platform
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from nasseg.artifacts.files import FileFormatError, read_json

__all__ = ["CostCard", "peak_rss_mb", "saved_activation_bytes"]


def saved_activation_bytes(fn: Any) -> int:
    """Bytes of the distinct tensor storages autograd saves for backward while ``fn()`` runs: the
    activation memory of a step, exact and independent of the allocator and machine noise."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        storages[st.data_ptr()] = max(storages.get(st.data_ptr(), 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (``getrusage``: KB on Linux, B on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _rates(seconds: dict[str, float], steps: dict[str, int]) -> dict[str, float]:
    step_s = seconds["weight_steps"] + seconds["arch_steps"] + seconds["data"]
    return {"weight": steps["weight"] / max(seconds["weight_steps"], 1e-9),
            "arch": steps["arch"] / max(seconds["arch_steps"], 1e-9),
            # one search step = a weight step and its architecture step, data loading included
            "search": steps["weight"] / max(step_s, 1e-9)}


class CostCard:
    """Wall time per phase (``perf_counter`` around each), step counts and peak memory of a
    search or a retrain, written to ``RUN/cost.json`` after every checkpoint. A resumed run
    appends a session; the top-level numbers add the sessions up."""

    PHASES = ("data", "weight_steps", "arch_steps", "validation", "checkpoint", "selection")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self.steps = {"weight": 0, "arch": 0}
        self.start = time.perf_counter()
        self.first_epoch = 0
        self.previous: list[dict[str, Any]] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t

    def timed(self, name: str, batches: Iterator[dict]) -> Iterator[dict]:
        """``batches``, the time spent producing them added to phase ``name``."""
        it = iter(batches)
        while True:
            with self.phase(name):
                item = next(it, None)
            if item is None:
                return
            yield item

    def resume(self, path: Path, first_epoch: int) -> None:
        """Continue the card at ``path`` from ``first_epoch`` (its earlier sessions kept; an
        unreadable card leaves this session's costs only)."""
        self.first_epoch = first_epoch
        try:
            self.previous = list(read_json(path, "cost card")["sessions"])
        except (FileFormatError, KeyError, TypeError):
            self.previous = []

    def session(self, epochs_done: int, device: torch.device) -> dict[str, Any]:
        cuda = (torch.cuda.max_memory_allocated(device) / 2**20
                if device.type == "cuda" else None)
        return {"epochs": [self.first_epoch, epochs_done],
                "wall_seconds": time.perf_counter() - self.start,
                "seconds": dict(self.seconds), "steps": dict(self.steps),
                "steps_per_second": _rates(self.seconds, self.steps),
                "peak_memory_mb": {"rss": peak_rss_mb(), "cuda_allocated": cuda}}

    def card(self, epochs_done: int, device: torch.device, settings: Mapping[str, Any] | Any,
             extra: dict[str, Any]) -> dict[str, Any]:
        """The JSON content of ``cost.json``. ``settings`` is a mapping or a dataclass (a
        search's ``SearchConfig``, a retrain's settings); the keys that shape the cost are
        copied from it, missing ones as None."""
        if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
            settings = dataclasses.asdict(settings)
        config = dict(settings)
        sessions = self.previous + [self.session(epochs_done, device)]
        seconds = {k: sum(s["seconds"].get(k, 0.0) for s in sessions) for k in self.PHASES}
        steps = {k: sum(s["steps"][k] for s in sessions) for k in ("weight", "arch")}
        cuda = [s["peak_memory_mb"]["cuda_allocated"] for s in sessions
                if s["peak_memory_mb"]["cuda_allocated"] is not None]
        return {
            "epochs_done": epochs_done,
            "wall_seconds": sum(s["wall_seconds"] for s in sessions),
            "seconds": seconds, "steps": steps, "steps_per_second": _rates(seconds, steps),
            "peak_memory_mb": {"rss": max(s["peak_memory_mb"]["rss"] for s in sessions),
                               "cuda_allocated": max(cuda) if cuda else None},
            "device": str(device),
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else platform.processor() or platform.machine()),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "mode": config.get("mode"), "order": config.get("order"),
            "batch_size": config.get("batch_size"),
            "patch_size": list(config["patch_size"]) if config.get("patch_size") else None,
            "amp": config.get("amp"), "channels_last": config.get("channels_last"),
            "compile": config.get("compile"),
            **extra, "sessions": sessions,
        }
