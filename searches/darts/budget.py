"""Fit a search into a memory budget: the largest batch or patch whose search steps fit.

``nasseg search --memory-budget 20GB --fit batch`` (or ``--fit patch``, or ``auto``) probes
before the search starts. Each candidate runs real search steps (an architecture step and a
weight step, first order, three times: sampled modes draw different paths) on real batches, in
a throwaway engine built the way the search builds its own, and its peak memory is measured:

* on CUDA, ``torch.cuda.max_memory_reserved`` (what the caching allocator took from the GPU,
  so fragmentation counts); running out of memory is "does not fit";
* on CPU, the process's resident memory, sampled every 2 ms while the steps run (the whole
  process counts: interpreter, data, model).

Candidates go from small to large and the probe stops at the first that does not fit, so a
large one that would crash is never tried twice. ``batch`` tries 1, 2, 3, 4, 6, 8, 12, 16, ...
up to the cases in the smaller training half; ``patch`` keeps the batch size and scales the
patch from 1/4 to all of the data set's patch size (multiples of 8 per axis). The choice and
every probe are recorded in ``run.json`` (``memory_fit``); the chosen batch or patch size is
written into the search settings, so a resumed search uses it without probing again.

``auto`` is 90 % of the GPU's memory, or on CPU 80 % of the memory available when the probe
starts (this process's own included).
"""
from __future__ import annotations

import gc
import os
import re
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

import torch

from nasseg.data import CaseSet
from nasseg.runtime.device import resolve_device
from nasseg.runtime.runlog import logger
from nasseg.space import SearchSpace

if TYPE_CHECKING:
    from nasseg.searches.darts.config import SearchConfig

__all__ = ["FITS", "parse_memory_size", "is_auto", "check_budget", "resolve_budget",
           "batch_candidates", "patch_candidates", "largest_fitting", "measure_peak",
           "fit_memory"]

FITS = ("batch", "patch")
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6,
          "mib": 2**20, "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12,
          "tib": 2**40}
T = TypeVar("T")


def parse_memory_size(text: str) -> int:
    """Bytes of ``"20GB"``, ``"1.5GiB"``, ``"800M"`` (K/M/G/T alone are binary units)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"memory budget {text!r}: expected 'auto' or a size such as 20GB, "
                         "1.5GiB or 800M")
    return int(float(match.group(1)) * _UNITS[unit])


def is_auto(text: str) -> bool:
    """Whether a budget is ``auto`` (any case, surrounding spaces ignored)."""
    return str(text).strip().lower() == "auto"


def check_budget(text: str) -> None:
    """Raise ValueError unless ``text`` is ``auto`` or a size :func:`parse_memory_size` reads."""
    if not is_auto(text):
        parse_memory_size(text)


def _available_cpu_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
        return info["MemAvailable"] + _rss_bytes()
    except (OSError, KeyError, ValueError):
        raise ValueError("memory budget 'auto' needs /proc/meminfo on CPU; give a size such "
                         "as 8GB") from None


def resolve_budget(text: str, device: torch.device) -> int:
    """The budget in bytes: a size, or ``auto`` (90 % of the GPU, 80 % of free CPU memory)."""
    if not is_auto(text):
        return parse_memory_size(text)
    if device.type == "cuda":
        return int(0.9 * torch.cuda.get_device_properties(device).total_memory)
    return int(0.8 * _available_cpu_bytes())


def batch_candidates(limit: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, 24, ... up to ``limit``."""
    sizes, base = [1], 2
    while base <= limit:
        sizes += [s for s in (base, base * 3 // 2) if s <= limit and s > sizes[-1]]
        base *= 2
    return sizes


def patch_candidates(full: Sequence[int], multiple: int = 8) -> list[tuple[int, ...]]:
    """Patches from 1/4 to all of ``full``, each axis a multiple of ``multiple`` (at least one
    ``multiple``, at most the axis of ``full``), smallest first, without repeats."""
    out: list[tuple[int, ...]] = []
    for eighths in range(2, 9):
        patch = tuple(min(p, max(multiple, p * eighths // 8 // multiple * multiple))
                      for p in full)
        if eighths == 8:
            patch = tuple(int(p) for p in full)
        if patch not in out:
            out.append(patch)
    return out


def largest_fitting(candidates: Sequence[T], measure: Callable[[T], int | None], budget: int
                    ) -> tuple[T | None, list[tuple[T, int | None]]]:
    """The largest candidate (they are sorted small to large) whose ``measure`` (peak bytes,
    None for out of memory) is within ``budget``, and the probes taken. Stops at the first
    candidate that does not fit."""
    probes: list[tuple[T, int | None]] = []
    best = None
    for candidate in candidates:
        peak = measure(candidate)
        probes.append((candidate, peak))
        if peak is None or peak > budget:
            break
        best = candidate
    return best, probes


def _rss_bytes() -> int:
    """This process's resident size now (Linux), else its peak so far (``getrusage``)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        from nasseg.runtime.cost import peak_rss_mb

        return int(peak_rss_mb() * 2**20)


class _RssSampler:
    """The largest resident size of this process seen while the block runs (2 ms samples)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(0.002)

    def __enter__(self) -> "_RssSampler":
        self.peak = _rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def measure_peak(build_space: Callable[[], SearchSpace], data: CaseSet, config: SearchConfig
                 ) -> int | None:
    """Peak memory (bytes) of three search steps under ``config``, None if out of memory."""
    from nasseg.artifacts.run_folder import RunFolder
    from nasseg.searches.darts.engine import DartsSearch

    device = resolve_device(config.device)
    engine = None
    try:
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        with tempfile.TemporaryDirectory() as tmp, _RssSampler() as rss:
            engine = DartsSearch(build_space(), data, RunFolder(Path(tmp)), config,
                                 show_progress=False)
            engine.model.train()
            weight_loader, arch_loader, _ = engine.stage_loaders(engine.schedule[0])
            weight_batches, arch_batches = weight_loader.epoch(0), arch_loader.epoch(0)
            weight_batch, arch_batch = next(weight_batches), next(arch_batches)
            for step in range(3):
                if engine.arch_opt is not None:
                    engine._arch_step(arch_batch, weight_batch, 0, step)
                engine._weight_step(weight_batch, 0, step)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                return int(torch.cuda.max_memory_reserved(device))
        return rss.peak
    except torch.cuda.OutOfMemoryError:
        return None
    except RuntimeError as exc:  # the CPU allocator's out-of-memory error
        if "can't allocate memory" in str(exc):
            return None
        raise
    finally:
        del engine
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def fit_memory(build_space: Callable[[], SearchSpace], data: CaseSet, config: SearchConfig
               ) -> tuple[SearchConfig, dict[str, Any]]:
    """``config`` with the largest batch (``config.fit == "batch"``) or patch (``"patch"``)
    that fits ``config.memory_budget``, and the record of the probes for ``run.json``.
    Raises ValueError when even the smallest candidate does not fit."""
    device = resolve_device(config.device)
    budget = resolve_budget(config.memory_budget, device)
    full_patch = tuple(config.patch_size or data.patch_size)
    if config.fit == "batch":
        from nasseg.searches.darts.engine import search_split

        split = search_split(data, config)
        limit = min(len(split["weights"]), len(split["arch"]))
        candidates: list[Any] = batch_candidates(limit)
        make = lambda b: replace(config, batch_size=b, patch_size=full_patch)  # noqa: E731
    else:
        candidates = patch_candidates(full_patch)
        make = lambda p: replace(config, patch_size=p)  # noqa: E731

    def measure(candidate: Any) -> int | None:
        peak = measure_peak(build_space, data, make(candidate))
        shown = "out of memory" if peak is None else f"{peak / 2**20:,.0f} MB"
        logger.info("memory probe: %s %s: peak %s (budget %s MB)", config.fit,
                    _describe(candidate), shown, f"{budget / 2**20:,.0f}")
        return peak

    start = time.perf_counter()
    best, probes = largest_fitting(candidates, measure, budget)
    record = {"budget": config.memory_budget, "budget_mb": budget / 2**20, "fit": config.fit,
              "device": str(device), "seconds": time.perf_counter() - start,
              "probes": [{config.fit: _describe(c), "peak_mb": None if p is None else p / 2**20}
                         for c, p in probes]}
    if best is None:
        smallest = probes[0][1]
        need = "out of memory" if smallest is None else f"needs {smallest / 2**20:,.0f} MB"
        raise ValueError(
            f"memory budget {config.memory_budget} ({budget / 2**20:,.0f} MB on {device}): "
            f"even {config.fit} {_describe(candidates[0])} does not fit ({need}); raise the "
            "budget, try --fit patch, or a memory-saving --mode (partial, gumbel, binary)")
    record["chosen"] = _describe(best)
    logger.info("memory budget: %s %s fits (%d candidates probed)", config.fit,
                _describe(best), len(probes))
    return make(best), record


def _describe(candidate: Any) -> Any:
    return list(candidate) if isinstance(candidate, tuple) else candidate
