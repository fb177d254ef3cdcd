"""Knobs: hyperparameters and variants a space exposes, fixed for one run and tuned by Optuna.

A knob is an NNI mutable (``Categorical`` or ``Numerical``) so NNI sees the same space language;
nasseg resolves its value at construction: the frozen sample first, then the values fixed for
this run (``--set label=value``), then the knob's default.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, Mapping

import nni.mutable as nm

__all__ = ["KnobError", "fixed_knobs", "current_fixed_knobs", "check_knob_value", "parse_knob_value",
           "knob_description"]

_FIXED: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("nasseg_fixed_knobs",
                                                                           default={})


class KnobError(ValueError):
    """A knob was set to a value it does not take, or a knob name is unknown."""


@contextlib.contextmanager
def fixed_knobs(values: Mapping[str, Any]) -> Iterator[None]:
    """Within this block, spaces built take these knob values instead of their defaults."""
    token = _FIXED.set(dict(values))
    try:
        yield
    finally:
        _FIXED.reset(token)


def current_fixed_knobs() -> Mapping[str, Any]:
    """The knob values fixed by the innermost :func:`fixed_knobs` block (empty outside one)."""
    return _FIXED.get()


def check_knob_value(mutable: nm.Mutable, value: Any) -> Any:
    """Return ``value`` coerced to the knob's type, or raise :class:`KnobError` saying why."""
    if isinstance(mutable, nm.Categorical):
        for candidate in mutable.values:
            if candidate == value or str(candidate) == str(value):
                return candidate
        raise KnobError(f"knob {mutable.label!r} takes one of {list(mutable.values)}, got {value!r}")
    if isinstance(mutable, nm.Numerical):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise KnobError(f"knob {mutable.label!r} takes a number, got {value!r}") from None
        if not mutable.low <= number <= mutable.high:
            raise KnobError(f"knob {mutable.label!r} takes a value in [{mutable.low}, "
                            f"{mutable.high}], got {value!r}")
        return int(number) if mutable.quantize == 1 and float(number).is_integer() else number
    raise KnobError(f"knob {mutable.label!r} has an unsupported type {type(mutable).__name__}")


def parse_knob_value(text: str) -> Any:
    """Read a ``--set`` value: JSON literals (numbers, true/false) become Python values."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def knob_description(mutable: nm.Mutable) -> dict[str, Any]:
    """A JSON-ready description of a knob: its kind, its range or values, and its default."""
    if isinstance(mutable, nm.Categorical):
        return {"kind": "categorical", "values": list(mutable.values), "default": mutable.default()}
    return {"kind": "int" if mutable.quantize == 1 else "float", "low": mutable.low,
            "high": mutable.high, "log": bool(mutable.log_distributed),
            "default": mutable.default()}
