"""Option parsing shared by several verbs."""
from __future__ import annotations

from typing import Any, Sequence

import click

from nasseg.space.knobs import parse_knob_value

__all__ = ["parse_assignments", "parse_patch_size", "PatchSize", "Duration", "relaunch_argv",
           "StepsPerEpoch", "steps_per_epoch_option", "time_budget_option"]


def parse_assignments(items: Sequence[str], option: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``; a malformed item is a usage error."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected LABEL=VALUE, got {item!r}", param_hint=option)
        values[key.strip()] = parse_knob_value(text.strip())
    return values


class StepsPerEpoch(click.ParamType):
    """Steps per epoch: a positive number, or ``pass`` (None) for one pass over the cases."""

    name = "steps"

    def get_metavar(self, param: Any, ctx: Any = None) -> str:
        return "N|pass"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | None:
        if value is None or isinstance(value, int) and value >= 1:
            return value
        if str(value).strip().lower() == "pass":
            return None
        try:
            steps = int(value)
        except ValueError:
            steps = 0
        if steps < 1:
            self.fail(f"expected a positive number of steps or 'pass', got {value!r}", param, ctx)
        return steps


def steps_per_epoch_option(default: int) -> Any:
    """``--steps-per-epoch`` of ``search`` and ``train``: an epoch's length set in steps, so a
    small data set gets as much training per epoch as a large one."""
    return click.option(
        "--steps-per-epoch", type=StepsPerEpoch(), default=default, show_default=True,
        help="Weight steps per epoch, whatever the data set's size (more passes over the "
             "cases when needed); 'pass': one pass over the cases.")


class Duration(click.ParamType):
    """A wall time written ``90s``, ``10m``, ``2h`` or ``1h30m`` (plain numbers are seconds)."""

    name = "DURATION"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        from nasseg.runtime.time_budget import parse_duration

        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


#: ``--time-budget`` of ``search`` and ``train``: candidates compared at equal wall time.
time_budget_option = click.option(
    "--time-budget", type=Duration(), default=None,
    help="Wall time for the epochs (e.g. 10m, 2h): the number of epochs is re-planned after "
         "each one so the warm-up, learning-rate decay and stages end on time; exclusive "
         "with --epochs. Recorded in run.json.")


def relaunch_argv(argv: Sequence[str]) -> list[str]:
    """The command's arguments less ``--nproc N``: what each launched process runs."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def parse_patch_size(text: str) -> tuple[int, ...]:
    """``96x96x64`` (or with commas) as one positive size per axis; ValueError otherwise."""
    try:
        sizes = tuple(int(v) for v in str(text).replace(",", "x").split("x"))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise ValueError(f"expected sizes such as 96x96x64, got {text!r}")
    return sizes


class PatchSize(click.ParamType):
    """A patch size written ``96x96x64`` (or with commas): one positive size per axis."""

    name = "SIZE"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_patch_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
