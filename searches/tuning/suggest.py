"""Knob -> Optuna suggestion: every knob of a space becomes one parameter of a trial.

A ``Categorical`` knob becomes ``suggest_categorical`` (its values must be JSON values; values
Optuna cannot hold directly, such as lists, are suggested as their JSON text and decoded back);
a ``Numerical`` knob becomes ``suggest_int`` (``quantize=1``) or ``suggest_float`` (with ``step``
for any other quantization), log-scaled when the knob is log-distributed.

Conditional knobs (``active_if``) are suggested after the knobs their condition names, and only
while it holds; an inactive knob gets no value in the trial's parameters (the space uses its
default) and is listed in the trial's user attribute ``inactive_knobs``.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable, Mapping

from nasseg.space.knobs import Condition, condition_holds

import nni.mutable as nm
import optuna
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)

__all__ = ["knob_distribution", "suggest_knob", "suggest_knobs", "tunable_knobs", "knob_order",
           "describe_distribution", "INACTIVE_ATTR"]

#: The trial user attribute listing the knobs whose condition did not hold.
INACTIVE_ATTR = "inactive_knobs"

#: Values Optuna's categorical distribution holds as they are.
_PLAIN = (type(None), bool, int, float, str)


def _is_plain(values: Iterable[Any]) -> bool:
    return all(isinstance(v, _PLAIN) for v in values)


def _check_json(label: str, values: Iterable[Any]) -> None:
    for v in values:
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(f"knob {label!r}: value {v!r} is not a JSON value; Optuna can only "
                             "tune knobs whose values are JSON values") from None


def knob_distribution(label: str, mutable: nm.Mutable) -> BaseDistribution:
    """The Optuna distribution a knob is suggested from (a ``ValueError`` if it has none)."""
    if isinstance(mutable, nm.Categorical):
        values = list(mutable.values)
        _check_json(label, values)
        if not _is_plain(values):
            values = [json.dumps(v, sort_keys=True) for v in values]
        return CategoricalDistribution(values)
    if isinstance(mutable, nm.Numerical):
        if mutable.mu is not None or mutable.sigma is not None:
            raise ValueError(f"knob {label!r}: normal-distributed knobs cannot be tuned; give it "
                             "a low/high range")
        low, high, log = float(mutable.low), float(mutable.high), bool(mutable.log_distributed)
        if not (math.isfinite(low) and math.isfinite(high)) or low > high:
            raise ValueError(f"knob {label!r}: needs a finite range low <= high, got "
                             f"[{mutable.low}, {mutable.high}]")
        if log and low <= 0:
            raise ValueError(f"knob {label!r}: a log-scaled range must be positive, got "
                             f"[{mutable.low}, {mutable.high}]")
        q = mutable.quantize
        if q == 1:
            lo, hi = math.ceil(low), math.floor(high)
            if lo > hi:
                raise ValueError(f"knob {label!r}: no integer in [{low}, {high}]")
            return IntDistribution(lo, hi, log=log)
        if q is not None and not log:
            return FloatDistribution(low, high, step=float(q))
        return FloatDistribution(low, high, log=log)
    raise ValueError(f"knob {label!r}: unsupported kind {type(mutable).__name__}")


def _decode(mutable: nm.Mutable, value: Any) -> Any:
    """A suggested value as the knob's own value (JSON text back to a list, say)."""
    if isinstance(mutable, nm.Categorical) and not _is_plain(mutable.values):
        return json.loads(value)
    return value


def suggest_knob(trial: optuna.Trial, label: str, mutable: nm.Mutable) -> Any:
    """Ask ``trial`` for the value of one knob (the trial's parameter is named ``label``)."""
    dist = knob_distribution(label, mutable)
    if isinstance(dist, CategoricalDistribution):
        value = trial.suggest_categorical(label, list(dist.choices))
    elif isinstance(dist, IntDistribution):
        value = trial.suggest_int(label, dist.low, dist.high, log=dist.log)
    else:
        assert isinstance(dist, FloatDistribution)
        value = trial.suggest_float(label, dist.low, dist.high, log=dist.log, step=dist.step)
    return _decode(mutable, value)


def tunable_knobs(specs: Mapping[str, nm.Mutable], fixed: Iterable[str] = (),
                  exclude: Iterable[str] = ()) -> dict[str, nm.Mutable]:
    """The knobs a study tunes: all of ``specs`` except those fixed (``--set``) or excluded."""
    skip = set(fixed) | set(exclude)
    return {label: m for label, m in specs.items() if label not in skip}


def knob_order(labels: Iterable[str], conditions: Mapping[str, Condition]) -> list[str]:
    """``labels`` sorted, each after the knobs its condition names (conditions name knobs
    declared earlier, so there are no cycles)."""
    pending, order = sorted(labels), []
    while pending:
        ready = next(label for label in pending
                     if not set(conditions.get(label, {})) & set(pending))
        pending.remove(ready)
        order.append(ready)
    return order


def suggest_knobs(trial: optuna.Trial, specs: Mapping[str, nm.Mutable],
                  conditions: Mapping[str, Condition] | None = None,
                  known: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Suggest the active knobs of ``specs`` (label -> value) in :func:`knob_order`.

    ``conditions`` maps conditional knobs to their ``active_if``; ``known`` gives the values of
    the knobs not tuned (fixed ones) that conditions may name. Inactive knobs are left out and
    listed in the trial's ``inactive_knobs`` user attribute.
    """
    conditions = conditions or {}
    values = dict(known or {})
    suggested, inactive = {}, []
    for label in knob_order(specs, conditions):
        if condition_holds(conditions.get(label), values):
            suggested[label] = values[label] = suggest_knob(trial, label, specs[label])
        else:
            inactive.append(label)
    if inactive:
        trial.set_user_attr(INACTIVE_ATTR, inactive)
    return suggested


def describe_distribution(dist: BaseDistribution) -> dict[str, Any]:
    """A JSON-ready description of a distribution (written into the study's settings)."""
    if isinstance(dist, CategoricalDistribution):
        return {"kind": "categorical", "choices": list(dist.choices)}
    if isinstance(dist, IntDistribution):
        return {"kind": "int", "low": dist.low, "high": dist.high, "log": dist.log}
    assert isinstance(dist, FloatDistribution)
    return {"kind": "float", "low": dist.low, "high": dist.high, "log": dist.log,
            "step": dist.step}
