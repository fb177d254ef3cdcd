"""What every benchmark shares: how it saves what it measured (``NAME.json``: settings and rows;
``NAME.md``: the Markdown table; the table printed) and how it summarizes rows over seeds."""
from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import statistics
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

from nasseg.artifacts.files import write_json

__all__ = ["save_report", "mean_sd", "sign_flip_p", "least_sign_flip_p", "paired_evidence",
           "group_rows", "summary_table"]


def save_report(out: Path, name: str, args: argparse.Namespace, rows: list[dict[str, Any]],
                table: str) -> None:
    """Write ``out/NAME.json`` and ``out/NAME.md``; print the table and where the JSON is."""
    write_json(out / f"{name}.json", {"settings": report_settings(args), "rows": rows})
    (out / f"{name}.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    print(json.dumps({"written": str(out / f"{name}.json")}))


def report_settings(args: argparse.Namespace) -> dict[str, str]:
    """A benchmark's options as its report records them (each value as text)."""
    return {k: str(v) for k, v in vars(args).items()}


def mean_sd(values: Iterable[float | None], signed: bool = False) -> str:
    """``mean ± sd`` of the values (sd 0 for one), ignoring None and NaN; ``-`` for none;
    ``signed``: the mean with its sign (a difference)."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return "-"
    sd = statistics.stdev(kept) if len(kept) > 1 else 0.0
    return f"{statistics.mean(kept):{'+' if signed else ''}.3f} ± {sd:.3f}"


#: Up to this many pairs, :func:`sign_flip_p` enumerates every sign assignment.
EXACT_SIGN_FLIPS = 16


def sign_flip_p(diffs: Sequence[float], draws: int = 100_000) -> float:
    """Two-sided p-value of the paired sign-flip test that the mean difference is 0.

    Under that hypothesis each pair's difference is as likely to have either sign, so the p-value
    is the share of the 2^n sign assignments whose mean is at least as far from 0 as the
    observed one: no assumption of normality, which a dozen seeds cannot check. Exact up to
    :data:`EXACT_SIGN_FLIPS` pairs, else estimated from ``draws`` assignments drawn with a fixed
    seed (so a report is repeatable), counting the observed one."""
    if not diffs:
        raise ValueError("the sign-flip test needs at least one difference")
    observed = abs(sum(diffs)) - 1e-12 * len(diffs)  # ties count as extreme despite rounding

    def extreme(signs: Iterable[Sequence[int]]) -> int:
        return sum(abs(sum(s * d for s, d in zip(flip, diffs))) >= observed for flip in signs)

    if len(diffs) <= EXACT_SIGN_FLIPS:
        return extreme(itertools.product((1, -1), repeat=len(diffs))) / 2 ** len(diffs)
    rng = random.Random(0)
    drawn = extreme([rng.choice((1, -1)) for _ in diffs] for _ in range(draws))
    return (drawn + 1) / (draws + 1)  # the observed assignment counts: never 0


#: A paired mean difference this many standard errors from 0 is found four times in five by a
#: two-sided test at 0.05 (normal approximation: 1.96 + 0.84).
DETECTABLE_STANDARD_ERRORS = 2.8


def least_sign_flip_p(pairs: int) -> float:
    """The smallest two-sided p-value the sign-flip test can give with this many pairs: only
    the observed signs and their mirror image are as extreme when every pair agrees."""
    return min(1.0, 2 / 2 ** pairs)


def paired_evidence(diffs: Sequence[float]) -> str:
    """How sure a mean paired difference is: its standard error, the sign-flip p-value and
    what these pairs can resolve (``-`` for fewer than two pairs). Under six pairs the test
    cannot reach 0.05 whatever the data; from six on, the difference it would find four times
    in five (:data:`DETECTABLE_STANDARD_ERRORS` standard errors, the sd as observed), so a
    reader sees when a tie is a tie and when the run was too small to tell."""
    if len(diffs) < 2:
        return "-"
    p = sign_flip_p(diffs)
    shown = f"= {p:.2f}" if p >= 0.01 else f"= {p:.4f}" if p >= 1e-4 else "< 0.0001"
    error = statistics.stdev(diffs) / math.sqrt(len(diffs))
    floor = least_sign_flip_p(len(diffs))
    resolution = (f"{len(diffs)} seeds cannot give p below {floor:.2f}" if floor > 0.05 else
                  f"finds ±{DETECTABLE_STANDARD_ERRORS * error:.3f} with 80 % power")
    return f"standard error {error:.3f}, sign-flip p {shown}; {resolution}"


def group_rows(rows: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], Hashable]
               ) -> dict[Hashable, list[dict[str, Any]]]:
    """Rows grouped by ``key(row)``, in the order the groups first appear."""
    groups: dict[Hashable, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return groups


def summary_table(rows: Iterable[dict[str, Any]], group_by: Sequence[str],
                  metrics: Sequence[str],
                  extra: Mapping[str, Callable[[list[dict[str, Any]]], str]] | None = None) -> str:
    """A Markdown table with one line per group of rows (``group_by`` columns): the number of
    seeds, ``extra`` columns (name -> cell of the group) and ``mean ± sd`` of each metric."""
    extra = dict(extra or {})
    names = [*group_by, "seeds", *extra, *metrics]
    lines = ["| " + " | ".join(names) + " |", "|" + " --- |" * len(names)]
    for key, group in group_rows(rows, lambda r: tuple(r[k] for k in group_by)).items():
        cells = [*map(str, key), str(len(group)), *(cell(group) for cell in extra.values()),
                 *(mean_sd(r[m] for r in group) for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
