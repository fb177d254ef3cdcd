"""How decided a search is, and how alike the architectures of several searches are.

``gate_spread`` reads ``arch_params.json`` scores: the share of connection scores (the gates,
or a selection's scores, whichever derive thresholds) that a threshold anywhere in [0.3, 0.7]
would not flip (a search whose scores sit near 0.5 has not decided; tau then picks the
network). ``agreement`` reads several ``arch.json`` samples: how many kept connections
and chosen ops they share (a search that finds a different network with every seed has
found noise); ``kept_by_all`` names the connections they all keep (what the seeds agree on).
"""
from __future__ import annotations

from itertools import combinations
from typing import Any, Mapping, Sequence

__all__ = ["gate_spread", "agreement", "kept_by_all"]


def gate_spread(scores: Mapping[str, Any], low: float = 0.3, high: float = 0.7) -> float | None:
    """Share of the connection scores outside ``[low, high]`` (None for a space without
    connection choices)."""
    gates = [p for entry in scores.get("connection", {}).values() for p in entry["probs"]]
    if not gates:
        return None
    return sum(not low <= p <= high for p in gates) / len(gates)


def _kept_edges(arch: Mapping[str, Any]) -> set[tuple[str, int]]:
    return {(label, int(i)) for label, entry in arch["choices"].items()
            if entry["kind"] == "connection" for i in entry["kept"]}


def _used_ops(arch: Mapping[str, Any]) -> dict[str, str]:
    return {label: entry["chosen"] for label, entry in arch["choices"].items()
            if entry["kind"] == "op" and entry.get("used", True)}


def agreement(archs: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Mean over pairs of ``archs`` (``arch.json`` contents of one space): the Jaccard index of
    their kept connections, and the share of op choices both build that chose alike."""
    if len(archs) < 2:
        return {"connections_jaccard": None, "ops_agree": None}
    jaccard, ops = [], []
    for a, b in combinations(archs, 2):
        ea, eb = _kept_edges(a), _kept_edges(b)
        if ea or eb:
            jaccard.append(len(ea & eb) / len(ea | eb))
        oa, ob = _used_ops(a), _used_ops(b)
        common = set(oa) & set(ob)
        if common:
            ops.append(sum(oa[k] == ob[k] for k in common) / len(common))
    return {"connections_jaccard": sum(jaccard) / len(jaccard) if jaccard else None,
            "ops_agree": sum(ops) / len(ops) if ops else None}


def kept_by_all(archs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The connections every one of ``archs`` keeps, as ``"source -> node"``, in space order."""
    if not archs:
        return []
    common = set.intersection(*(_kept_edges(a) for a in archs))
    return [f"{entry['sources'][i]} -> {entry.get('node', label)}"
            for label, entry in archs[0]["choices"].items() if entry["kind"] == "connection"
            for i in entry["kept"] if (label, int(i)) in common]
