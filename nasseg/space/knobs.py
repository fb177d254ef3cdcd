"""Knobs: hyperparameters and variants a space exposes, fixed for one run and tuned by Optuna.

A knob is an NNI mutable (``Categorical`` or ``Numerical``) so NNI sees the same space language;
nasseg resolves its value at construction: the frozen sample first, then the values fixed for
this run (``--set label=value``), then the knob's default.

A knob may apply only under a condition on knobs declared before it (``active_if={"variant":
["b", "c"]}``: active while ``variant`` is ``b`` or ``c``). An inactive knob takes its default
(the space still reads a value), and the tuner neither suggests nor records it.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, Mapping, Sequence

import nni.mutable as nm

__all__ = ["KnobError", "Condition", "fixed_knobs", "current_fixed_knobs", "check_knob_value",
           "parse_knob_value", "knob_description", "check_condition", "condition_holds"]

#: When a knob applies: knob label -> the values of that knob under which it is active.
Condition = Mapping[str, Sequence[Any]]

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


def check_condition(label: str, active_if: Condition, specs: Mapping[str, nm.Mutable]
                    ) -> dict[str, list[Any]]:
    """``active_if`` of knob ``label`` checked against the knobs declared before it (``specs``),
    its values coerced to theirs; a :class:`KnobError` says what is wrong."""
    if not active_if:
        raise KnobError(f"knob {label!r}: active_if names no knob")
    checked = {}
    for other, values in active_if.items():
        if other not in specs:
            raise KnobError(f"knob {label!r}: active_if names {other!r}, which is not a knob "
                            f"declared before it (declared: {', '.join(specs) or 'none'})")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise KnobError(f"knob {label!r}: active_if[{other!r}] must be a non-empty list of "
                            f"values, got {values!r}")
        checked[other] = [check_knob_value(specs[other], v) for v in values]
    return checked


def condition_holds(active_if: Condition | None, values: Mapping[str, Any]) -> bool:
    """True when every knob ``active_if`` names has one of its listed values in ``values``
    (no condition: always)."""
    return all(values.get(other) in allowed for other, allowed in (active_if or {}).items())


def parse_knob_value(text: str) -> Any:
    """Read a ``--set`` value: JSON literals (numbers, true/false) become Python values."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def knob_description(mutable: nm.Mutable, active_if: Condition | None = None) -> dict[str, Any]:
    """A JSON-ready description of a knob: its kind, its range or values, its default and, for
    a conditional knob, when it is active."""
    if isinstance(mutable, nm.Categorical):
        desc = {"kind": "categorical", "values": list(mutable.values),
                "default": mutable.default()}
    else:
        desc = {"kind": "int" if mutable.quantize == 1 else "float", "low": mutable.low,
                "high": mutable.high, "log": bool(mutable.log_distributed),
                "default": mutable.default()}
    if active_if:
        desc["active_if"] = {k: list(v) for k, v in active_if.items()}
    return desc
