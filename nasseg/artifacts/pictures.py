"""Pictures of a run, drawn beside its numbers and refreshed as it goes (PNG, matplotlib's Agg
back end, no display needed).

* search folder: ``progress.png`` (weight and architecture loss, validation values per epoch)
  and ``arch_evolution.png`` (per choice a heatmap: one row per candidate or gate, one column
  per epoch, colour = softmax(alpha) or sigmoid(beta));
* training folder: ``progress.png`` (training loss and validation values per epoch);
* study folder: ``history.png`` (optimization history), ``importances.png`` (knob
  importances) and, for two objectives, ``pareto.png``, drawn by
  ``optuna.visualization.matplotlib``.

Stage boundaries are dashed lines in the progress pictures. Every picture is written atomically
(a temporary file renamed over the old one), so a reader never sees half a PNG. A picture that
fails to draw logs a warning and leaves the run going: the numbers are what matter.
"""
from __future__ import annotations

import functools
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from nasseg.artifacts.files import atomic_path

__all__ = ["PROGRESS", "ARCH_EVOLUTION", "STUDY_PICTURES", "write_png", "draw_search",
           "draw_training", "draw_study"]

logger = logging.getLogger("nasseg")

PROGRESS = "progress.png"
ARCH_EVOLUTION = "arch_evolution.png"
#: The study pictures by what they show.
STUDY_PICTURES = {"history": "history.png", "importances": "importances.png",
                  "pareto": "pareto.png"}

_F = TypeVar("_F", bound=Callable[..., list[Path]])


def _warn_on_failure(draw: _F) -> _F:
    """``draw``, logging a warning (and returning no paths) instead of raising."""

    @functools.wraps(draw)
    def guarded(*args: Any, **kwargs: Any) -> list[Path]:
        try:
            return draw(*args, **kwargs)
        except Exception as exc:
            logger.warning("pictures: %s failed (%s: %s)", draw.__name__, type(exc).__name__, exc)
            return []

    return guarded  # type: ignore[return-value]


def _figure(width: float, height: float) -> Any:
    """A figure on an Agg canvas, outside pyplot (no global state, no window)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def write_png(fig: Any, target: Path) -> Path:
    """Save ``fig`` as ``target`` atomically."""
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return target


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _mark_stages(ax: Any, epochs: Sequence[int], stages: Sequence[str]) -> None:
    """Dashed lines where the stage changes, each labelled with the stage it starts."""
    for i in range(1, len(stages)):
        if stages[i] != stages[i - 1]:
            x = epochs[i] - 0.5
            ax.axvline(x, color="grey", linestyle="--", linewidth=1)
            ax.annotate(stages[i], (x, 1), xycoords=("data", "axes fraction"),
                        xytext=(3, -3), textcoords="offset points", va="top", fontsize=8,
                        color="grey")


def _progress(target: Path, title: str, epochs: Sequence[int], stages: Sequence[str],
              losses: Mapping[str, Sequence[Any]], values: Mapping[str, Sequence[Any]]
              ) -> Path:
    """Losses left, validation values right, per epoch (1-based), stages marked."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(11, 4)
    fig.suptitle(title)
    for ax, curves, what in zip(fig.subplots(1, 2), (losses, values), ("loss", "validation")):
        for name, ys in curves.items():
            ax.plot(epochs, [_number(y) for y in ys], marker="o", markersize=3, label=name)
        _mark_stages(ax, epochs, stages)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        if curves:
            ax.legend(fontsize=8)
    return write_png(fig, target)


@_warn_on_failure
def draw_training(folder: Path, history: Sequence[Mapping[str, Any]]) -> list[Path]:
    """A retrain's ``progress.png`` from its history (``epoch``, ``stage``, ``loss`` and the
    validation values of every epoch)."""
    epochs = [r["epoch"] + 1 for r in history]
    names = [k for k in history[-1] if k not in ("epoch", "stage", "loss")]
    return [_progress(Path(folder) / PROGRESS, "retrain", epochs, [r["stage"] for r in history],
                      {"training loss": [r["loss"] for r in history]},
                      {n: [r.get(n) for r in history] for n in names})]


def _evolution(target: Path, history: Sequence[Mapping[str, Any]],
               sources: Mapping[str, Sequence[str]]) -> Path | None:
    """One heatmap per choice (rows: candidates or gates, columns: epochs); None without
    choices."""
    from matplotlib.ticker import MaxNLocator

    records = [r for r in history if r.get("scores")]
    last = records[-1]["scores"]
    panels = [(label, list(entry["candidates"]),
               [r["scores"]["op"][label]["probs"] for r in records])
              for label, entry in last["op"].items()]
    panels += [(label, [f"from {s}" for s in sources[label]] if label in sources
                else [f"gate {i}" for i in range(len(entry["probs"]))],
                [r["scores"]["connection"][label]["probs"] for r in records])
               for label, entry in last["connection"].items()]
    if not panels:
        return None
    # Columns of about 60 rows each, choices kept in order.
    total = sum(len(rows) + 2 for _, rows, _ in panels)
    ncols = max(1, math.ceil(total / 60))
    columns: list[list[Any]] = [[] for _ in range(ncols)]
    filled = 0
    for panel in panels:
        columns[min(ncols - 1, filled * ncols // total)].append(panel)
        filled += len(panel[1]) + 2
    columns = [col for col in columns if col]
    height = max(sum(len(p[1]) + 2 for p in col) for col in columns) * 0.22 + 1
    width = len(columns) * min(14.0, 6 + 0.12 * len(records))
    fig = _figure(width, height)
    fig.suptitle("architecture per epoch")
    epochs = [r["epoch"] + 1 for r in records]
    for sub, col in zip(fig.subfigures(1, len(columns), squeeze=False)[0], columns):
        axes = sub.subplots(len(col), 1, squeeze=False,
                            gridspec_kw={"height_ratios": [len(p[1]) + 1 for p in col]})[:, 0]
        for ax, (label, rows, probs) in zip(axes, col):
            image = ax.imshow(list(map(list, zip(*probs))), aspect="auto", vmin=0, vmax=1,
                              cmap="viridis", interpolation="nearest",
                              extent=(epochs[0] - 0.5, epochs[-1] + 0.5, len(rows) - 0.5, -0.5))
            ax.set_yticks(range(len(rows)), rows, fontsize=7)
            ax.set_title(label, fontsize=8, loc="left")
            ax.tick_params(axis="x", labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[-1].set_xlabel("epoch")
    sub.colorbar(image, ax=list(axes), shrink=0.5,  # beside the last column
                 label="op: softmax(alpha), connection: sigmoid(beta)")
    return write_png(fig, target)


@_warn_on_failure
def draw_search(folder: Path, history: Sequence[Mapping[str, Any]],
                choice_infos: Mapping[str, Any] | None = None) -> list[Path]:
    """A search's ``progress.png`` and ``arch_evolution.png`` from the engine's history (per
    epoch: ``weight_loss``, ``arch_loss``, ``val`` and the architecture ``scores``);
    ``choice_infos`` (the space's) names the inputs of each connection choice."""
    folder = Path(folder)
    sources = {label: info.candidates for label, info in (choice_infos or {}).items()
               if info.kind == "connection"}
    epochs = [r["epoch"] + 1 for r in history]
    names = list(history[-1]["val"])
    written = [_progress(folder / PROGRESS, "search", epochs, [r["stage"] for r in history],
                         {"weight loss": [r["weight_loss"] for r in history],
                          "architecture loss": [r["arch_loss"] for r in history]},
                         {n: [r["val"].get(n) for r in history] for n in names})]
    evolution = _evolution(folder / ARCH_EVOLUTION, history, sources)
    return written + ([evolution] if evolution is not None else [])


def _pyplot() -> Any:
    """pyplot (Optuna's plots draw with it) on the Agg back end, unless the caller's program
    chose its own back end by importing pyplot first."""
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib

        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@_warn_on_failure
def draw_study(study: Any, out: Path, objectives: Sequence[str]) -> list[Path]:
    """The study's pictures (see :data:`STUDY_PICTURES`) from its finished trials. Importances
    need two finished trials whose knobs differ; without them that picture is skipped."""
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as plots

    out = Path(out)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        logger.info("pictures: no finished trial yet; study pictures not drawn")
        return []
    multi = len(objectives) > 1
    quality = {"target": (lambda t: t.values[0]) if multi else None,
               "target_name": objectives[0]}
    draws: dict[str, Callable[[], Any]] = {
        "history": lambda: plots.plot_optimization_history(study, **quality)}
    varied = any(len({repr(t.params.get(n)) for t in complete}) > 1
                 for n in {k for t in complete for k in t.params})
    if varied:  # so at least two finished trials
        # With a target of its own, the evaluator takes low values as good: negate a maximized one.
        sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
        importance_target = {"target": (lambda t: sign * t.values[0]) if multi else None,
                             "target_name": objectives[0]}
        draws["importances"] = lambda: plots.plot_param_importances(study, **importance_target)
    else:
        logger.info("pictures: importances need 2 finished trials with different knobs; "
                    "skipped")
    if multi:
        draws["pareto"] = lambda: plots.plot_pareto_front(study, target_names=list(objectives))
    plt = _pyplot()
    written = []
    for name, draw in draws.items():
        # Optuna's plots switch pyplot to its ggplot style: keep that inside this block.
        with warnings.catch_warnings(), plt.rc_context():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # PED-ANOVA warns whenever a target is given (importance_target has the sign right)
            # and when a small study leaves it too few trials to tell knobs apart.
            warnings.filterwarnings("ignore", message="(PedAnovaImportanceEvaluator computes|"
                                                      "Target and region quantiles)")
            fig = draw().figure
            try:
                fig.set_size_inches(8, 5)
                written.append(write_png(fig, out / STUDY_PICTURES[name]))
            finally:
                plt.close(fig)
    return written
