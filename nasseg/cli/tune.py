"""``nasseg tune``: tune a space's knobs with Optuna (one worker; start more to run in parallel)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from nasseg.cli.errors import user_errors
from nasseg.cli.options import StepsPerEpoch, parse_assignments
from nasseg.searches.darts.config import SEARCH_STEPS_PER_EPOCH
from nasseg.training.trainer import TRAIN_STEPS_PER_EPOCH

__all__ = ["tune"]

DEFAULT_SPACE = "uxnet"
DEFAULT_DATA = "demo3d"


@click.command()
@click.option("--space", default=None,
              help=f"Space to search: registered name or module:ClassName [default: "
                   f"{DEFAULT_SPACE}; with --arch: the architecture's space].")
@click.option("--data", default=None,
              help=f"Data set [default: {DEFAULT_DATA}; with --arch: the one it was searched on].")
@click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True,
              help="Trials of the whole study, all workers together (a resumed study "
                   "continues to this number).")
@click.option("--storage", default=None, metavar="URL|PATH",
              help="Study storage: a database URL (postgresql://user@host/db) for workers on "
                   "several machines, or a journal file [default: OUT/study.journal].")
@click.option("--study", "study_name", default=None,
              help="Study name: the same name joins or resumes a study [default: OUT's name].")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Study folder: trial-NNNN/ folders and results [default: runs/tune-SPACE-DATA].")
@click.option("--search-epochs", type=click.IntRange(min=1), default=10, show_default=True,
              help="Search budget of a trial.")
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=None,
              help="Weight-only epochs of a trial's search [default: a fifth of the search].")
@click.option("--train-epochs", type=click.IntRange(min=1), default=10, show_default=True,
              help="Retrain budget of a trial.")
@click.option("--search-steps", type=StepsPerEpoch(), default=SEARCH_STEPS_PER_EPOCH,
              show_default=True, help="Weight steps per search epoch of a trial ('pass': one "
                                      "pass over the cases).")
@click.option("--train-steps", type=StepsPerEpoch(), default=TRAIN_STEPS_PER_EPOCH,
              show_default=True, help="Steps per retrain epoch of a trial ('pass': one pass).")
@click.option("--arch", type=click.Path(path_type=Path), default=None,
              help="Do not search: retrain this arch.json with each trial's knob values.")
@click.option("--pruner", type=click.Choice(["median", "hyperband", "none"]), default="median",
              show_default=True, help="Stops weak trials early on their per-epoch Dice.")
@click.option("--sampler", type=click.Choice(["tpe", "random", "nsga2"]), default="tpe",
              show_default=True, help="nsga2: NSGA-II, for two objectives.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Sampler seed (worker k uses seed + 1000 k) and every trial's training seed.")
@click.option("--objectives", default="dice", show_default=True, metavar="QUALITY[,COST]",
              help="Maximize QUALITY: dice, or a validation value of the space (dice_mean, or "
                   "one its metrics report, e.g. miou; see metrics.json 'validation'); "
                   "optionally minimize COST: params or CPU latency (one patch).")
@click.option("--set", "knob_items", multiple=True, metavar="LABEL=VALUE",
              help="Fix a knob (it is not tuned; repeatable).")
@click.option("--space-arg", "arg_items", multiple=True, metavar="NAME=VALUE",
              help="A constructor argument of the space, e.g. features=16 (repeatable).")
@click.option("--batch-size", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--heartbeat", type=click.IntRange(min=1), default=60, show_default=True,
              help="Database storage: seconds between a running trial's heartbeats.")
@click.option("--grace-period", type=click.IntRange(min=1), default=None,
              help="Database storage: seconds without heartbeat before a trial counts as dead and "
                   "is re-queued [default: twice --heartbeat].")
@click.option("--max-retry", type=click.IntRange(min=0), default=3, show_default=True,
              help="How often a dead worker's trial is re-queued (any storage).")
@user_errors
def tune(space: str | None, data: str | None, trials: int, storage: str | None,
         study_name: str | None, out: Path | None, search_epochs: int,
         warmup_epochs: int | None, train_epochs: int, search_steps: int | None,
         train_steps: int | None, arch: Path | None, pruner: str,
         sampler: str, seed: int, objectives: str, knob_items: tuple[str, ...],
         arg_items: tuple[str, ...], batch_size: int, device: str, heartbeat: int,
         grace_period: int | None, max_retry: int) -> None:
    """Tune the knobs of SPACE (loss weights, variants...) with Optuna.

    Each trial runs a budgeted search, derives and briefly retrains the result (or, with
    --arch, only retrains that architecture with the trial's knobs); the space's selection
    metric goes to the pruner every epoch. Run the same command in several processes (or, with a
    database --storage, on several machines) to tune in parallel; rerun it to resume.
    """
    from nasseg.artifacts.pictures import STUDY_PICTURES
    from nasseg.searches.tuning import TuneConfig, format_table, run_study

    if not logging.getLogger().handlers:  # called outside the nasseg group
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if arch is not None and space is not None:
        raise click.UsageError("--arch retrains that architecture's space; drop --space")
    if arch is None and space is None:
        space = DEFAULT_SPACE
    if out is None:
        base = (f"tune-{arch.resolve().parent.name}" if arch is not None else
                f"tune-{space.replace(':', '.')}-{Path(data or DEFAULT_DATA).stem}")
        out = Path("runs") / base
    config = TuneConfig(
        out=out, trials=trials, space=space, data=data, arch=arch,
        fixed_knobs=parse_assignments(knob_items, "--set"),
        space_args=parse_assignments(arg_items, "--space-arg"), storage=storage,
        study_name=study_name, search_epochs=search_epochs, warmup_epochs=warmup_epochs,
        train_epochs=train_epochs, search_steps=search_steps, train_steps=train_steps,
        batch_size=batch_size, seed=seed, device=device, pruner=pruner, sampler=sampler,
        objectives=tuple(objectives.split(",")),
        heartbeat_interval=heartbeat, grace_period=grace_period, max_retry=max_retry)
    click.echo(f"tuning into {out} (study {config.name!r}, {trials} trials in total)", err=True)
    result = run_study(config)
    objs = result.best["objectives"]
    click.echo(format_table(result.rows, objs))
    click.echo(f"study {result.study.study_name!r}: {result.best['trials']} trials "
               f"({', '.join(f'{n} {s}' for s, n in result.best['states'].items())}); "
               f"this worker ran {result.trials_run}")
    if len(objs) == 1:
        best = result.best["best"]
        if best is None:
            click.echo("  no trial has completed yet")
        else:
            click.echo(f"  best: trial {best['trial']}, {objs[0]} "
                       f"{best['values'][objs[0]]:.4f}, knobs {best['knobs']}")
            if best.get("best_arch"):
                click.echo(f"  best architecture: {best['best_arch']}")
    else:
        click.echo(f"  Pareto front ({' vs '.join(objs)}): trials "
                   f"{', '.join(str(e['trial']) for e in result.best['pareto']) or 'none yet'}")
    click.echo(f"  results: {result.files['best']}  {result.files['trials_csv']}  "
               f"{result.files['trials_json']}")
    pictures = [str(result.files[name]) for name in STUDY_PICTURES if name in result.files]
    click.echo(f"  pictures: {'  '.join(pictures) or 'none yet (no finished trial)'}")
    click.echo(f"  dashboard: {result.storage.dashboard}   (pip install optuna-dashboard)")
    if "best_arch" in result.files:
        click.echo(f"next: nasseg train {result.files['best_arch']} --epochs 30")
