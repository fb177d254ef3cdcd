"""One trial: knobs suggested, a budgeted search + derive + short retrain (or a retrain of a given
architecture with the trial's knobs), the space's selection metric reported to the pruner every
epoch.

Objectives: a quality first, maximized: ``dice`` (the retrain's mean foreground Dice on whole
validation cases, ``metrics.json["dice_mean"]``) or any validation value of the space
(``metrics.json["validation"]``: ``dice_mean`` and what the space's ``metrics()`` report, e.g.
``miou``); optionally a cost second, minimized: ``params`` or ``latency``.

Files: ``OUT/trial-0007/search`` (the search run, its ``arch.json``) and ``OUT/trial-0007/train``
(the retrain, its ``metrics.json``); retrain-only trials write ``OUT/trial-0007/arch.json``.
"""
from __future__ import annotations

import copy
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import nni.mutable as nm
import optuna
import torch

from nasseg.artifacts.run_folder import RunFolderError
from nasseg.derive import build_derived, count_flops, count_parameters, write_arch
from nasseg.searches.tuning.suggest import suggest_knobs

__all__ = ["OBJECTIVES", "COSTS", "TrialSetup", "run_trial", "trial_dir", "apply_knobs",
           "measure_latency", "EpochReporter", "direction", "validation_names",
           "objective_value"]

#: Objective name -> study direction for the names every space has; a space's validation
#: values are maximized too.
OBJECTIVES = {"dice": "maximize", "params": "minimize", "latency": "minimize"}
#: The costs a second objective may minimize.
COSTS = ("params", "latency")


def direction(name: str) -> str:
    """The study direction of objective ``name``."""
    return OBJECTIVES.get(name, "maximize")


def validation_names(space: Any) -> list[str]:
    """The names of the space's validation values (``metrics.json["validation"]``):
    ``dice_mean`` and what a fresh accumulator of each of its ``metrics()`` computes."""
    names = ["dice_mean"]
    for metric in space.metrics():
        try:
            names += [n for n in metric.compute() if n not in names]
        except Exception as exc:
            raise ValueError(f"{type(space).__name__}: metric {type(metric).__name__} cannot name "
                             f"its values before any batch ({type(exc).__name__}: {exc}); tune "
                             "by dice instead") from None
    return names


def objective_value(name: str, metrics: Mapping[str, Any]) -> float:
    """Quality objective ``name`` of a retrain's ``metrics.json`` content."""
    if name == "dice":
        value = metrics["dice_mean"]
    elif name in metrics["validation"]:
        value = metrics["validation"][name]
    else:
        raise ValueError(f"the retrain reports no validation value {name!r}; it reports "
                         f"{', '.join(sorted(metrics['validation']))}")
    if value is None or not math.isfinite(value):
        raise ValueError(f"the retrain's {name} is {value}")
    return float(value)


@dataclass
class TrialSetup:
    """What every trial of a study shares.

    Attributes:
        out: the study folder; trial ``n`` works in ``out/trial-000n``.
        space, space_args: the space (search trials).
        data: the data set (resolved spec).
        fixed_knobs: knob values fixed for the study (``--set``).
        tuned: the knobs each trial suggests (label -> NNI mutable).
        conditions: the ``active_if`` of the tuned knobs that have one.
        arch: retrain-only trials: the base ``arch.json`` content (its path in ``arch_path``).
        search_epochs, warmup_epochs, train_epochs, batch_size, seed, device: the budgets.
        search_steps, train_steps: steps per search and retrain epoch (None: one pass).
        objectives: a quality (``dice`` or a validation value), optionally then a cost.
        reported: the value the pruner sees every epoch (the space's selection metric).
    """

    out: Path
    space: str | None
    space_args: dict[str, Any]
    data: str
    fixed_knobs: dict[str, Any]
    tuned: dict[str, nm.Mutable]
    conditions: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    arch: dict[str, Any] | None = None
    arch_path: Path | None = None
    search_epochs: int = 10
    warmup_epochs: int = 2
    train_epochs: int = 10
    search_steps: int | None = None
    train_steps: int | None = None
    batch_size: int = 2
    seed: int = 0
    device: str = "auto"
    objectives: tuple[str, ...] = ("dice",)
    reported: str = "dice_mean"
    latency_repeats: int = 20

    @property
    def total_steps(self) -> int:
        """Epochs a trial reports to the pruner (search and retrain)."""
        return (0 if self.arch is not None else self.search_epochs) + self.train_epochs


def trial_dir(out: Path, number: int) -> Path:
    """The folder of trial ``number``."""
    return Path(out) / f"trial-{number:04d}"


class EpochReporter:
    """The per-epoch value of search and retrain (the space's selection metric, ``name``) ->
    ``trial.report``; raises ``TrialPruned`` when the pruner says so. Steps run through the
    search epochs, then the retrain epochs. Multi-objective trials cannot be pruned (Optuna has
    no multi-objective pruning), so nothing is reported for them."""

    def __init__(self, trial: optuna.Trial, multi_objective: bool, name: str) -> None:
        self.trial = trial
        self.multi = multi_objective
        self.name = name

    def at(self, offset: int) -> Callable[[int, float], None]:
        """The ``on_epoch`` callback of a phase whose first epoch is step ``offset``."""

        def on_epoch(epoch: int, value: float) -> None:
            step = offset + epoch
            if self.multi or value is None or not math.isfinite(value):
                return
            self.trial.report(float(value), step)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} ({self.name} {value:.4f})")

        return on_epoch


def apply_knobs(arch: Mapping[str, Any], knobs: Mapping[str, Any]) -> dict[str, Any]:
    """``arch`` with ``knobs`` replacing its knob values, its cost counts redone."""
    new = copy.deepcopy(dict(arch))
    new["sample"].update(knobs)
    new["knobs"] = {**new.get("knobs", {}), **knobs}
    net = build_derived(new)
    shape = new["input_shape"]
    new["params"] = count_parameters(net)
    new["flops"] = count_flops(net, net.example_batch(shape[1:], shape[0]))
    new.pop("format", None)
    return new


@torch.no_grad()
def measure_latency(arch: Mapping[str, Any], repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of one forward pass of the derived network on one patch, on the CPU.

    Measured with the current torch thread count. At batch 1 some CPU convolutions take slow
    fallback kernels, so this ranks networks for batch-1 CPU inference, not for training.
    """
    net = build_derived(dict(arch)).eval()
    shape = arch["input_shape"]
    batch = net.example_batch(shape[1:], shape[0])
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        net.forward_batch(batch)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_trial(trial: optuna.Trial, setup: TrialSetup) -> float | Sequence[float]:
    """Run one trial; return its objective values (Dice first)."""
    from nasseg.searches.darts import SearchConfig
    from nasseg.searches.darts.run import start_search
    from nasseg.training.trainer import TrainConfig, train_architecture

    folder = trial_dir(setup.out, trial.number)
    if folder.exists() and any(folder.iterdir()):
        raise RunFolderError(f"{folder} already holds files (from another study?); tune into a "
                             "fresh --out folder")
    folder.mkdir(parents=True, exist_ok=True)
    trial.set_user_attr("trial_dir", str(folder.resolve()))
    # Conditions may name knobs that are not tuned: fixed ones, or the base architecture's.
    known = {**(setup.arch["sample"] if setup.arch is not None else {}), **setup.fixed_knobs}
    tuned = suggest_knobs(trial, setup.tuned, setup.conditions, known)
    knobs = {**setup.fixed_knobs, **tuned}
    reporter = EpochReporter(trial, len(setup.objectives) > 1, setup.reported)

    if setup.arch is None:
        config = SearchConfig(epochs=setup.search_epochs,
                              warmup_epochs=min(setup.warmup_epochs, setup.search_epochs),
                              steps_per_epoch=setup.search_steps, batch_size=setup.batch_size,
                              seed=setup.seed, device=setup.device,
                              extend_unlearned=0)  # trials compare at equal budgets
        result = start_search(folder / "search", setup.space, setup.data, knobs,
                              setup.space_args, config, show_progress=False,
                              on_epoch=reporter.at(0))
        arch_path, arch = result.arch_path, result.arch
        offset = setup.search_epochs
    else:
        arch = apply_knobs(setup.arch, knobs)
        arch["tuned_from"] = os.path.relpath(Path(setup.arch_path).resolve(), folder.resolve())
        arch["data"] = setup.data  # write_arch stores it relative to the trial folder
        arch_path = folder / "arch.json"
        write_arch(arch_path, arch)
        offset = 0
    trial.set_user_attr("arch", str(Path(arch_path).resolve()))
    trial.set_user_attr("params", int(arch["params"]))
    trial.set_user_attr("flops", int(arch["flops"]))

    train = TrainConfig(epochs=setup.train_epochs, steps_per_epoch=setup.train_steps,
                        batch_size=setup.batch_size, seed=setup.seed, device=setup.device)
    metrics = train_architecture(arch_path, folder / "train", setup.data, train,
                                 on_epoch=reporter.at(offset))
    quality = setup.objectives[0]
    values = [objective_value(quality, metrics)]
    trial.set_user_attr(quality, values[0])
    if quality != "dice" and metrics["dice_mean"] is not None:
        trial.set_user_attr("dice", float(metrics["dice_mean"]))
    trial.set_user_attr("best_epoch", metrics.get("best_epoch"))
    for name in setup.objectives[1:]:
        if name == "params":
            values.append(float(arch["params"]))
        elif name == "latency":
            latency_ms = 1000.0 * measure_latency(arch, setup.latency_repeats)
            trial.set_user_attr("latency_ms", latency_ms)
            values.append(latency_ms)
        else:
            raise ValueError(f"unknown cost objective {name!r}; choose from {COSTS}")
    return values[0] if len(values) == 1 else values
