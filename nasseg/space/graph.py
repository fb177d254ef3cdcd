"""The node graph of a space: which node feeds which, fixed or through a connection choice.

Spaces declare their topology before they build modules. The graph then answers two questions
with one algorithm: which connections survive tau pruning (derive), and which nodes a frozen
network must build (only live ones, so parameter counts are real).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

__all__ = ["SpaceGraph", "ConnectionSpec"]


@dataclass(frozen=True)
class ConnectionSpec:
    """A connection choice: ``node`` sums any subset of ``sources``."""

    label: str
    node: str
    sources: tuple[str, ...]


@dataclass
class SpaceGraph:
    """Nodes joined by fixed edges and by connection choices, with the nodes that are outputs."""

    fixed: dict[str, list[str]] = field(default_factory=dict)
    connections: dict[str, ConnectionSpec] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)

    def add_fixed(self, source: str, node: str) -> None:
        """``node`` always consumes ``source``."""
        self.fixed.setdefault(node, []).append(source)

    def add_connection(self, label: str, node: str, sources: Sequence[str]) -> None:
        """``node`` sums the subset of ``sources`` chosen under ``label``."""
        if label in self.connections:
            raise ValueError(f"connection label {label!r} is declared twice")
        self.connections[label] = ConnectionSpec(label, node, tuple(sources))

    def live_nodes(self, kept: Mapping[str, Sequence[int]]) -> set[str]:
        """Nodes that an output reaches backwards through fixed edges and kept connections."""
        inputs: dict[str, list[str]] = {n: list(s) for n, s in self.fixed.items()}
        for label, spec in self.connections.items():
            inputs.setdefault(spec.node, []).extend(spec.sources[i] for i in kept.get(label, ()))
        live: set[str] = set()
        stack = list(self.outputs)
        while stack:
            node = stack.pop()
            if node not in live:
                live.add(node)
                stack.extend(inputs.get(node, ()))
        return live

    def prune(self, gate_scores: Mapping[str, Sequence[float]], tau: float
              ) -> dict[str, list[int]]:
        """Connections kept at threshold ``tau``, with dead nodes removed.

        (a) keep the candidates whose score is >= tau; a node left with no input at all keeps its
        single best-scoring candidate, so every live node has an input; (b) drop every connection
        into a node that no output reaches, repeating until nothing changes.
        """
        kept = {label: [i for i, s in enumerate(gate_scores[label]) if s >= tau]
                for label in self.connections}
        for node in {spec.node for spec in self.connections.values()}:
            labels = [lbl for lbl, spec in self.connections.items() if spec.node == node]
            if self.fixed.get(node) or any(kept[lbl] for lbl in labels):
                continue
            best = max(((gate_scores[lbl][i], lbl, i) for lbl in labels
                        for i in range(len(self.connections[lbl].sources))), default=None)
            if best is not None:
                kept[best[1]] = [best[2]]
        live = self.live_nodes(kept)
        return {label: (idx if self.connections[label].node in live else [])
                for label, idx in kept.items()}
