"""Run a tuning study (one worker; start several on the same storage to work in parallel) and
write its results.

``--trials N`` is the size of the whole study, not of one worker: every worker takes the claim
lock (see :mod:`nasseg.searches.tuning.storage`), counts the study's trials and creates the next
one only while fewer than N exist, so N trials run in total however many workers join, and a
study resumed under the same name continues to N.

Nothing is lost when a worker dies. Before each claim a worker fails the running trials whose
worker process is gone from its host (any storage; see :mod:`nasseg.searches.tuning.workers`)
or, on a database, whose heartbeat went stale, and re-queues them with the same knobs
(``StudyStorage.requeue``, bounded by ``max_retry``). A re-queued trial replaces the failed one
(it does not count twice). A worker whose study is full stays while trials it can watch still run
(on a database: all; on a journal: those on its host), so it takes over one whose worker dies.

Results (``OUT``): ``best.json`` (best trial's knobs and costs; the Pareto front for several
objectives), ``best_arch.json`` (single objective: the best trial's architecture),
``trials.csv`` and ``trials.json`` (every trial), and the study's pictures (see
:mod:`nasseg.artifacts.pictures`), redrawn after every trial.
"""
from __future__ import annotations

import csv
import logging
import math
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from nasseg.artifacts.arch_file import read_arch, write_arch
from nasseg.artifacts.files import atomic_path, write_json
from nasseg.artifacts.pictures import STUDY_PICTURES, draw_study
from nasseg.searches.darts.config import SEARCH_STEPS_PER_EPOCH
from nasseg.searches.tuning.objective import (COSTS, TrialSetup, direction, run_trial,
                                             validation_names)
from nasseg.searches.tuning.storage import StudyStorage, open_storage
from nasseg.searches.tuning.suggest import (INACTIVE_ATTR, describe_distribution, knob_distribution,
                                            tunable_knobs)
from nasseg.searches.tuning.workers import WORKER_ATTR, on_this_host, this_worker, worker_alive
from nasseg.training.trainer import TRAIN_STEPS_PER_EPOCH

__all__ = ["TuneConfig", "TuneResult", "run_study", "prepare_setup", "make_sampler", "make_pruner",
           "trial_rows", "format_table", "write_results", "counted_trials", "PRUNERS", "SAMPLERS"]

logger = logging.getLogger("nasseg")

PRUNERS = ("median", "hyperband", "none")
SAMPLERS = ("tpe", "random", "nsga2")
SETTINGS_ATTR = "nasseg_settings"
WORKERS_ATTR = "nasseg_workers"


@dataclass
class TuneConfig:
    """Everything a tuning worker needs.

    Args:
        out: the study folder (trial folders, results, the default journal file).
        trials: the number of trials of the whole study (all workers together).
        space, space_args, data: what to search (``space`` may be None with ``arch``).
        arch: retrain this ``arch.json`` with each trial's knobs instead of searching.
        fixed_knobs: knob values fixed for the study (not tuned).
        storage: None (``out/study.journal``), a journal file path or a database URL.
        study_name: the study to create, join or resume (default: ``out``'s folder name).
        search_epochs, warmup_epochs, train_epochs, batch_size, seed, device: trial budgets.
        search_steps, train_steps: steps per search and retrain epoch (None: one pass over the
            cases), so trials on small and large data sets get the same budget.
        pruner: ``median``, ``hyperband``, ``none`` or an Optuna pruner.
        sampler: ``tpe``, ``random``, ``nsga2`` or an Optuna sampler.
        objectives: a quality, maximized (``dice`` or a validation value of the space, such as
            ``dice_mean`` or ``miou``), optionally followed by ``params`` or ``latency``
            (minimized).
        heartbeat_interval, grace_period: database storages (see ``open_storage``).
        max_retry: how often a dead worker's trial is re-queued (any storage).
    """

    out: Path
    trials: int
    space: str | None = None
    data: str | None = None
    arch: Path | None = None
    fixed_knobs: dict[str, Any] = field(default_factory=dict)
    space_args: dict[str, Any] = field(default_factory=dict)
    storage: str | None = None
    study_name: str | None = None
    search_epochs: int = 10
    warmup_epochs: int | None = None
    train_epochs: int = 10
    search_steps: int | None = SEARCH_STEPS_PER_EPOCH
    train_steps: int | None = TRAIN_STEPS_PER_EPOCH
    batch_size: int = 2
    seed: int = 0
    device: str = "auto"
    pruner: Any = "median"
    sampler: Any = "tpe"
    objectives: Sequence[str] = ("dice",)
    heartbeat_interval: int = 60
    grace_period: int | None = None
    max_retry: int | None = 3

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.objectives = tuple(self.objectives)
        if self.trials < 1:
            raise ValueError(f"--trials must be >= 1, got {self.trials}")
        if not 1 <= len(self.objectives) <= 2 or self.objectives[0] in COSTS or \
                any(o not in COSTS for o in self.objectives[1:]):
            raise ValueError(f"objectives are a quality (dice or a validation value of the space), "
                             f"optionally followed by {' or '.join(COSTS)}; got "
                             f"{','.join(self.objectives)}")
        if self.search_epochs < 1 or self.train_epochs < 1:
            raise ValueError("--search-epochs and --train-epochs must be >= 1")
        if self.space is None and self.arch is None:
            raise ValueError("give a space to search (--space) or an architecture to retrain "
                             "(--arch)")
        if isinstance(self.pruner, str) and self.pruner not in PRUNERS:
            raise ValueError(f"unknown pruner {self.pruner!r}; choose from {PRUNERS}")
        if isinstance(self.sampler, str) and self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {SAMPLERS}")

    @property
    def name(self) -> str:
        """The study name."""
        return self.study_name or self.out.resolve().name


@dataclass
class TuneResult:
    """What a worker leaves: the study and the result files it wrote."""

    study: optuna.Study
    out: Path
    storage: StudyStorage
    best: dict[str, Any]
    rows: list[dict[str, Any]]
    trials_run: int
    files: dict[str, Path]


# ----- setup ----------------------------------------------------------------------------------
def prepare_setup(config: TuneConfig) -> TrialSetup:
    """Check the space, knobs, data and architecture before any trial (user errors fail here)."""
    from nasseg.data import load_data, resolve_data_spec
    from nasseg.space import GATE_REG, KnobError, create_space
    from nasseg.space.knobs import check_knob_value

    arch = None
    if config.arch is not None:
        arch = read_arch(config.arch)
        data = resolve_data_spec(config.data) if config.data else arch.get("data")
        if data is None:
            raise ValueError(f"{config.arch}: names no data set; pass --data")
        space = create_space(arch["space"], knobs={k: arch["sample"][k]
                                                   for k in arch.get("knobs", {})},
                             **arch["space_args"])
        unknown = sorted(set(config.fixed_knobs) - set(space.knob_specs))
        if unknown:
            raise KnobError(f"{config.arch}: its space has no knob {', '.join(unknown)}; its "
                            f"knobs: {', '.join(sorted(space.knob_specs)) or 'none'}")
        space_name, space_args = arch["space"], dict(arch["space_args"])
        # The gate regularizer only steers a search: a retrain does not use it.
        exclude = {GATE_REG}
    else:
        data = resolve_data_spec(config.data or "demo3d")
        dataset = load_data(data)
        args = {"in_channels": dataset.in_channels, "num_classes": dataset.num_classes,
                "spatial_dims": dataset.spatial_dims, **config.space_args}
        space = create_space(config.space, knobs=config.fixed_knobs, **args)
        space_name, space_args = config.space, dict(config.space_args)
        exclude = set()
    if arch is not None:
        dataset = load_data(data)
        expected = arch["input_shape"][0], arch["space_args"].get("num_classes")
        if (dataset.in_channels, dataset.num_classes) != expected:
            raise ValueError(f"{data}: {dataset.in_channels} channels / {dataset.num_classes} "
                             f"classes, but {config.arch} was built for {expected[0]} / "
                             f"{expected[1]}")
    fixed = {label: check_knob_value(space.knob_specs[label], value)
             for label, value in config.fixed_knobs.items()}
    tuned = tunable_knobs(space.knob_specs, fixed, exclude)
    if not tuned:
        what = f"{config.arch}'s space" if arch is not None else f"space {space_name!r}"
        raise KnobError(f"{what} has no knob left to tune (knobs: "
                        f"{', '.join(sorted(space.knob_specs)) or 'none'}; fixed: "
                        f"{', '.join(sorted(fixed)) or 'none'}"
                        f"{'; a retrain does not tune ' + GATE_REG if exclude else ''})")
    for label, mutable in tuned.items():
        knob_distribution(label, mutable)  # unsupported knobs fail now, not in every trial
    warmup = config.warmup_epochs
    if warmup is None:
        warmup = config.search_epochs // 5
    quality = config.objectives[0]
    if quality != "dice":
        names = validation_names(space)
        if quality not in names:
            raise ValueError(f"objective {quality!r} is not a validation value of space "
                             f"{space_name!r}; choose from dice, {', '.join(names)}")
    conditions = {label: space.knob_conditions[label] for label in tuned
                  if label in space.knob_conditions}
    return TrialSetup(out=config.out.resolve(), space=space_name, space_args=space_args,
                      data=data, fixed_knobs=fixed, tuned=tuned, conditions=conditions, arch=arch,
                      arch_path=None if config.arch is None else Path(config.arch).resolve(),
                      search_epochs=config.search_epochs,
                      warmup_epochs=min(warmup, config.search_epochs),
                      train_epochs=config.train_epochs, search_steps=config.search_steps,
                      train_steps=config.train_steps, batch_size=config.batch_size,
                      seed=config.seed, device=config.device, objectives=config.objectives,
                      reported=space.selection_metric)


def _settings(setup: TrialSetup) -> dict[str, Any]:
    """What every worker of one study must agree on (kept as a study attribute)."""
    return {
        "mode": "retrain" if setup.arch is not None else "search",
        "space": setup.space, "space_args": setup.space_args, "data": setup.data,
        "arch": None if setup.arch_path is None else str(setup.arch_path),
        "fixed_knobs": setup.fixed_knobs,
        "tuned": {label: {**describe_distribution(knob_distribution(label, m)),
                          **({"active_if": setup.conditions[label]}
                             if label in setup.conditions else {})}
                  for label, m in sorted(setup.tuned.items())},
        "search_epochs": None if setup.arch is not None else setup.search_epochs,
        "warmup_epochs": None if setup.arch is not None else setup.warmup_epochs,
        "search_steps": None if setup.arch is not None else setup.search_steps,
        "train_epochs": setup.train_epochs, "train_steps": setup.train_steps,
        "batch_size": setup.batch_size, "seed": setup.seed,
        "objectives": list(setup.objectives),
    }


def _normalized(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples -> lists), for comparisons."""
    import json

    return json.loads(json.dumps(value, sort_keys=True))


def make_sampler(kind: Any, seed: int | None, trials: int) -> optuna.samplers.BaseSampler:
    """The sampler ``kind`` names (an Optuna sampler is returned as it is)."""
    if not isinstance(kind, str):
        return kind
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        # Optuna's default population (50) would make a small study a random search.
        return optuna.samplers.NSGAIISampler(seed=seed,
                                             population_size=max(4, min(50, trials // 4)))
    raise ValueError(f"unknown sampler {kind!r}; choose from {SAMPLERS}")


def make_pruner(kind: Any, total_steps: int) -> optuna.pruners.BasePruner:
    """The pruner ``kind`` names (an Optuna pruner is returned as it is)."""
    if not isinstance(kind, str):
        return kind
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, total_steps),
                                              reduction_factor=3)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {kind!r}; choose from {PRUNERS}")


def _open_study(config: TuneConfig, setup: TrialSetup, storage: StudyStorage
                ) -> tuple[optuna.Study, int]:
    """Create, join or resume the study; check its settings; number this worker."""
    directions = [direction(o) for o in setup.objectives]
    settings = _normalized(_settings(setup))
    with storage.lock(config.name):
        study = optuna.create_study(storage=storage.storage, study_name=config.name,
                                    directions=directions, load_if_exists=True)
        known = study.user_attrs.get(SETTINGS_ATTR)
        if known is None:
            study.set_user_attr(SETTINGS_ATTR, settings)
        elif known != settings:
            differ = sorted(k for k in set(known) | set(settings)
                            if known.get(k) != settings.get(k))
            detail = "; ".join(f"{k}: study {known.get(k)!r}, now {settings.get(k)!r}"
                               for k in differ)
            raise ValueError(f"study {config.name!r} in {storage.display} was made with other "
                             f"settings ({detail}); give the same options, or another --study "
                             "or --out")
        worker = int(study.user_attrs.get(WORKERS_ATTR, 0))
        study.set_user_attr(WORKERS_ATTR, worker + 1)
    # Workers sample with different seeds (worker 0 with --seed itself), or parallel workers
    # would draw the same knobs.
    seed = None if config.seed is None else config.seed + 1000 * worker
    study = optuna.load_study(study_name=config.name, storage=storage.storage,
                              sampler=make_sampler(config.sampler, seed, config.trials),
                              pruner=make_pruner(config.pruner, setup.total_steps))
    return study, worker


# ----- the worker loop ------------------------------------------------------------------------
def counted_trials(trials: Sequence[FrozenTrial]) -> int:
    """Trials that count toward ``--trials``: all but failed trials that were re-queued (their
    retry counts in their place)."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(1 for t in trials if not (t.state == TrialState.FAIL and t.number in retried))


class _Heartbeat:
    """Records a running trial's heartbeat every interval, in a daemon thread."""

    def __init__(self, storage: StudyStorage, trial: optuna.Trial) -> None:
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        if storage.heartbeat:
            base = storage.storage
            trial_id = trial._trial_id

            def beat() -> None:
                while True:
                    try:
                        base.record_heartbeat(trial_id)  # type: ignore[attr-defined]
                    except Exception as exc:  # a lost connection must not kill the trial
                        logger.warning("heartbeat of trial %d failed: %s", trial.number, exc)
                    if self.stop_event.wait(storage.heartbeat_interval):
                        return

            self.thread = threading.Thread(target=beat, daemon=True,
                                           name=f"nasseg-heartbeat-{trial.number}")
            self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join()


def _recover(study: optuna.Study, config: TuneConfig, storage: StudyStorage) -> None:
    """Fail and re-queue the running trials whose worker is dead: its process gone from this
    host, or (database) its heartbeat stale."""
    with storage.lock(config.name):
        if storage.heartbeat:  # Optuna re-queues these through the storage's callback
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = t.user_attrs.get(WORKER_ATTR)
            if not on_this_host(worker) or worker_alive(worker):
                continue
            try:
                storage.storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:  # finished meanwhile
                continue
            storage.requeue(study, storage.storage.get_trial(t._trial_id))
            logger.warning("trial %d: its worker (pid %d) is gone; failed it and queued its knobs "
                           "again", t.number, worker["pid"])


def _watched(t: FrozenTrial, storage: StudyStorage) -> bool:
    """A running trial this worker would notice dying (and then take over)."""
    return storage.heartbeat or on_this_host(t.user_attrs.get(WORKER_ATTR))


def _claim(study: optuna.Study, config: TuneConfig, storage: StudyStorage
           ) -> tuple[optuna.Trial | None, int]:
    """The next trial for this worker (None when the study is full), and how many trials run
    elsewhere that this worker watches."""
    with storage.lock(config.name):
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        watched = sum(1 for t in trials if t.state == TrialState.RUNNING and _watched(t, storage))
        if counted_trials(trials) >= config.trials and not waiting:
            return None, watched
        # ask() takes a waiting (re-queued) trial first, else creates one. Heartbeats are sent
        # here (_Heartbeat), not by Study.optimize, which Optuna warns about.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
            trial = study.ask()
        # Under the lock, so no worker sees this trial running without knowing whose it is.
        trial.set_user_attr(WORKER_ATTR, this_worker())
        return trial, watched


def _run_one(study: optuna.Study, trial: optuna.Trial, setup: TrialSetup,
             storage: StudyStorage) -> TrialState:
    heartbeat = _Heartbeat(storage, trial)
    values: Any = None
    state: TrialState | None = None
    start = time.perf_counter()
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    retry_of = frozen.system_attrs.get("failed_trial")
    if retry_of is not None:  # also as user attributes, which the dashboard shows
        trial.set_user_attr("retry_of", retry_of)
        trial.set_user_attr("retry", len(frozen.system_attrs["retry_history"]))
    logger.info("trial %d started%s", trial.number,
                "" if retry_of is None else f" (retry of trial {retry_of})")
    try:
        values = run_trial(trial, setup)
    except optuna.TrialPruned as exc:
        state = TrialState.PRUNED
        logger.info("trial %d %s", trial.number, exc)
    except KeyboardInterrupt:
        heartbeat.stop()
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    except Exception as exc:
        state = TrialState.FAIL
        logger.error("trial %d failed: %s: %s", trial.number, type(exc).__name__, exc,
                     exc_info=logger.isEnabledFor(logging.DEBUG))
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
    finally:
        heartbeat.stop()
    trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
    frozen = study.tell(trial, values if state is None else None, state=state,
                        skip_if_finished=True)
    if frozen.state == TrialState.COMPLETE:
        shown = ", ".join(f"{o} {v:.4g}" for o, v in zip(setup.objectives, frozen.values))
        logger.info("trial %d finished: %s  knobs %s", trial.number, shown, frozen.params)
    return frozen.state


def run_study(config: TuneConfig) -> TuneResult:
    """Work on the study until it holds ``config.trials`` finished trials; write the results.

    Start the same call (or ``nasseg tune``) in other processes, or on other machines with a
    database storage, to run trials in parallel.
    """
    setup = prepare_setup(config)
    config.out.mkdir(parents=True, exist_ok=True)
    storage = open_storage(config.storage, config.out, heartbeat_interval=config.heartbeat_interval,
                           grace_period=config.grace_period, max_retry=config.max_retry)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, worker = _open_study(config, setup, storage)
    logger.info("worker %d on study %r (%s): %d trials in total, tuning %s", worker, config.name,
                storage.display, config.trials, ", ".join(sorted(setup.tuned)))
    if len(setup.objectives) > 1 and config.pruner != "none":
        logger.info("several objectives: trials are not pruned (Optuna prunes single-objective "
                    "studies only)")
    ran, told_waiting = 0, False
    while True:
        _recover(study, config, storage)
        trial, watched = _claim(study, config, storage)
        if trial is None:
            if watched:
                # Stay while others run: if one of them dies, its trial comes back to us.
                if not told_waiting:
                    logger.info("the study is full; waiting for %d running trial(s) of other "
                                "workers", watched)
                    told_waiting = True
                time.sleep(min(storage.heartbeat_interval or 2, 10))
                continue
            break
        told_waiting = False
        _run_one(study, trial, setup, storage)
        ran += 1
        draw_study(study, config.out, setup.objectives)  # pictures refreshed as trials end
    return write_results(study, config.out, storage, setup.objectives, ran)


# ----- results --------------------------------------------------------------------------------
def _number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def trial_rows(study: optuna.Study, objectives: Sequence[str]) -> list[dict[str, Any]]:
    """One JSON-ready row per trial: number, state, objective values, knobs, costs, folders."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        values = t.values or [None] * len(objectives)
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        row.update({o: _number(v) for o, v in zip(objectives, values)})
        if t.state == TrialState.PRUNED and t.intermediate_values:
            step = max(t.intermediate_values)
            row["pruned_at_step"] = step
            row["last_reported"] = _number(t.intermediate_values[step])
        row["knobs"] = dict(t.params)
        if INACTIVE_ATTR in t.user_attrs:
            row[INACTIVE_ATTR] = list(t.user_attrs[INACTIVE_ATTR])
        for key in ("params", "flops", "latency_ms", "seconds", "arch", "trial_dir", "error"):
            if key in t.user_attrs and key not in row:
                row[key] = t.user_attrs[key]
        if "failed_trial" in t.system_attrs:
            row["retry_of"] = t.system_attrs["failed_trial"]
            row["retry"] = len(t.system_attrs["retry_history"])
        rows.append(row)
    return rows


def _best_entry(t: FrozenTrial, objectives: Sequence[str], fixed: Mapping[str, Any]
                ) -> dict[str, Any]:
    return {"trial": t.number, "values": dict(zip(objectives, t.values)),
            "knobs": {**fixed, **t.params}, "tuned": dict(t.params), "fixed": dict(fixed),
            "arch": t.user_attrs.get("arch"), "params": t.user_attrs.get("params"),
            "flops": t.user_attrs.get("flops"), "latency_ms": t.user_attrs.get("latency_ms"),
            "trial_dir": t.user_attrs.get("trial_dir")}


def _knob_cell(row: dict[str, Any], label: str) -> Any:
    """A trial's value of a knob; ``inactive`` where its condition did not hold, None where
    the trial has none yet (it did not start, or failed before suggesting)."""
    if label in row["knobs"]:
        return row["knobs"][label]
    return "inactive" if label in row.get(INACTIVE_ATTR, ()) else None


def _knob_names(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({k for r in rows for k in (*r["knobs"], *r.get(INACTIVE_ATTR, ()))})


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    knob_names = _knob_names(rows)
    columns: list[str] = []
    for r in rows:
        for key in r:
            if key not in ("knobs", INACTIVE_ATTR) and key not in columns:
                columns.append(key)
    header = columns[:3] + [f"knob:{k}" for k in knob_names] + columns[3:]
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for r in rows:
                cells = [_knob_cell(r, h[5:]) if h.startswith("knob:") else r.get(h)
                         for h in header]
                writer.writerow(["" if c is None else c for c in cells])


def write_results(study: optuna.Study, out: Path, storage: StudyStorage,
                  objectives: Sequence[str], trials_run: int = 0) -> TuneResult:
    """Write ``best.json``, ``best_arch.json`` (single objective), ``trials.csv``,
    ``trials.json`` and the pictures into ``out`` from the study's current state."""
    out = Path(out)
    rows = trial_rows(study, objectives)
    settings = study.user_attrs.get(SETTINGS_ATTR, {})
    fixed = settings.get("fixed_knobs", {})
    states = {s.name.lower(): sum(1 for r in rows if r["state"] == s.name) for s in TrialState}
    best: dict[str, Any] = {
        "study": study.study_name, "storage": storage.display, "objectives": list(objectives),
        "directions": [direction(o) for o in objectives], "trials": len(rows),
        "states": {k: v for k, v in states.items() if v}, "settings": settings,
        "dashboard": storage.dashboard,
    }
    files = {"best": out / "best.json", "trials_csv": out / "trials.csv",
             "trials_json": out / "trials.json"}
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(objectives) == 1:
        entry = None
        if complete:
            entry = _best_entry(study.best_trial, objectives, fixed)
            arch = Path(entry["arch"]) if entry["arch"] else None
            if arch is not None and arch.is_file():
                write_arch(out / "best_arch.json", read_arch(arch))
                entry["best_arch"] = str((out / "best_arch.json").resolve())
                files["best_arch"] = out / "best_arch.json"
            elif arch is not None:
                logger.warning("the best trial's architecture %s is not on this machine (another "
                               "worker ran it); best_arch.json not written", arch)
        best["best"] = entry
    else:
        best["pareto"] = [_best_entry(t, objectives, fixed) for t in study.best_trials] \
            if complete else []
    write_json(files["best"], best)
    write_json(files["trials_json"], rows)
    _write_csv(files["trials_csv"], rows)
    written = draw_study(study, out, objectives)
    files.update({name: out / f for name, f in STUDY_PICTURES.items() if out / f in written})
    return TuneResult(study, out, storage, best, rows, trials_run, files)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(rows: list[dict[str, Any]], objectives: Sequence[str]) -> str:
    """A plain-text table of the trials (one line per trial)."""
    knob_names = _knob_names(rows)
    header = ["trial", "state", *objectives, *knob_names]
    extra = [c for c in ("params", "flops", "retry_of") if c not in header
             and any(c in r for r in rows)]
    header += extra
    table = [header] + [
        [_cell(r["trial"]), r["state"].lower(),
         *[_cell(r.get("last_reported")) + "*" if i == 0 and r["state"] == "PRUNED"
           else _cell(r.get(o)) for i, o in enumerate(objectives)],
         *[_cell(_knob_cell(r, k)) for k in knob_names],
         *[_cell(r.get(c)) for c in extra]]
        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in table]
    if any(r["state"] == "PRUNED" for r in rows):
        lines.append("(* pruned: the last value of the selection metric reported before "
                     "pruning)")
    return "\n".join(lines)
