"""Wall-time budgets: a run's epochs fitted to ``--time-budget`` (``10m``, ``2h``, ``1h30m``).

A budget does not cut a run short; it sizes it. After every epoch the run re-plans its total
number of epochs from what its epochs have cost so far, so the warm-up, the cosine learning
rate and the stages stretch or shrink to end on time. The first epoch runs on the initial plan
(nothing has been measured yet). The budget covers the epochs (steps, validation,
checkpoints); building the network before and the final whole-case evaluation after are extra
and show in ``cost.json``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

__all__ = ["parse_duration", "TimeBudget", "SEARCH_EPOCH_FACTOR"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
#: Before any architecture step has been timed, a searching epoch is taken to cost this many
#: warm-up epochs (first-order arch step ~0.45x a weight step, measured on the UXNet demo).
SEARCH_EPOCH_FACTOR = 1.5


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``text``: ``90``, ``90s``, ``10m``, ``2h``, ``1h30m``; an error line if not."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        value = text.strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", value):
            seconds = float(value)
        elif value and _DURATION.sub("", value) == "":
            seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(value))
        else:
            raise ValueError(f"time budget {text!r}: expected a duration such as 90s, 10m, 2h "
                             "or 1h30m")
    if not seconds > 0:
        raise ValueError(f"time budget {text!r}: must be positive")
    return seconds


@dataclass
class TimeBudget:
    """A budget of ``seconds`` for a run's epochs, and what its epochs have spent so far.

    ``epoch_costs`` holds ``(kind, seconds)`` per finished epoch (kind: ``warmup`` or
    ``train``); it is saved in checkpoints so a resumed run keeps the budget it had left.
    """

    seconds: float
    epoch_costs: list[tuple[str, float]] = field(default_factory=list)

    @property
    def spent(self) -> float:
        return sum(cost for _, cost in self.epoch_costs)

    def record(self, kind: str, seconds: float) -> None:
        """One finished epoch of ``kind`` took ``seconds`` (everything between two epochs)."""
        self.epoch_costs.append((kind, float(seconds)))

    def estimate(self, kind: str) -> float:
        """The expected cost of the next epoch of ``kind``: the mean of the last three of that
        kind; a searching epoch nobody has timed costs :data:`SEARCH_EPOCH_FACTOR` warm-ups."""
        same = [c for k, c in self.epoch_costs if k == kind][-3:]
        if same:
            return sum(same) / len(same)
        others = [c for _, c in self.epoch_costs][-3:]
        if not others:
            raise ValueError("no epoch has been timed yet")
        factor = SEARCH_EPOCH_FACTOR if kind == "train" else 1 / SEARCH_EPOCH_FACTOR
        return factor * sum(others) / len(others)

    def fit_epochs(self, done: int, warmup_of: Callable[[int], int] = lambda total: 0,
                   minimum: int = 1) -> int:
        """The largest total ``T >= done`` whose remaining epochs fit the budget left, where
        ``warmup_of(T)`` is the number of warm-up epochs in a plan of ``T`` epochs (the others
        are ``train`` epochs); never below ``minimum`` (what the run needs to end properly,
        e.g. one epoch per stage), even when that overruns the budget."""
        left = self.seconds - self.spent
        per_kind = {kind: self.estimate(kind) for kind in ("warmup", "train")}

        def cost(total: int) -> float:
            warm = min(max(warmup_of(total), done), total)
            return (warm - done) * per_kind["warmup"] + (total - warm) * per_kind["train"]

        best = done
        while cost(best + 1) <= left:
            best += 1
        return max(best, minimum)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready state (checkpoints, ``cost.json``)."""
        return {"seconds": self.seconds, "spent": self.spent,
                "epoch_costs": [list(c) for c in self.epoch_costs]}

    @classmethod
    def from_state(cls, seconds: float, state: dict | None) -> "TimeBudget":
        """The budget of a resumed run: its own ``seconds``, its epochs' recorded costs."""
        costs: Sequence = (state or {}).get("epoch_costs", [])
        return cls(seconds, [(str(k), float(c)) for k, c in costs])
