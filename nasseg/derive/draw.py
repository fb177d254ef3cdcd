"""Draw a derived architecture as SVG: nodes with their chosen ops, the connections kept.

Nodes sit where the space puts them (``SearchSpace.node_positions``; UXNet: stage across,
level down, like the paper's Fig. 4), else in columns by depth from the input (the pseudo-nodes
``input`` and the outputs included). Only live nodes are drawn; kept connection choices are solid and labelled with their gate, fixed edges grey.
Plain SVG text: no plotting library needed, opens in any browser.
"""
from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any, Mapping

from nasseg.artifacts.files import atomic_path
from nasseg.space.graph import SpaceGraph

__all__ = ["draw_architecture", "depth_layout"]

_DX, _DY, _W, _H, _PAD = 220, 86, 180, 46, 40


def _graph(arch: Mapping[str, Any]) -> tuple[SpaceGraph, dict[str, list[int]]]:
    graph = SpaceGraph(outputs=list(arch["graph"]["outputs"]))
    for src, dst in arch["graph"]["fixed"]:
        graph.add_fixed(src, dst)
    kept = {}
    for label, choice in arch["choices"].items():
        if choice["kind"] == "connection":
            graph.add_connection(label, choice["node"], choice["sources"])
            kept[label] = choice["kept"]
    return graph, kept


def depth_layout(graph: SpaceGraph, nodes: set[str]) -> dict[str, tuple[float, float]]:
    """Columns by longest path from a node without inputs; rows in order within a column."""
    inputs: dict[str, set[str]] = {n: set(graph.fixed.get(n, ())) for n in nodes}
    for spec in graph.connections.values():
        if spec.node in inputs:
            inputs[spec.node].update(s for s in spec.sources if s in nodes)
    depth: dict[str, int] = {}

    def visit(node: str, trail: frozenset[str] = frozenset()) -> int:
        if node not in depth:
            preds = [p for p in inputs.get(node, ()) if p in nodes and p not in trail]
            depth[node] = 1 + max((visit(p, trail | {node}) for p in preds), default=-1)
        return depth[node]

    rows: dict[int, int] = {}
    layout = {}
    for node in sorted(nodes, key=lambda n: (visit(n), n)):
        d = depth[node]
        layout[node] = (float(d), float(rows.get(d, 0)))
        rows[d] = rows.get(d, 0) + 1
    return layout


def draw_architecture(arch: Mapping[str, Any], target: str | Path) -> Path:
    """Write the SVG picture of ``arch`` (an ``arch.json`` dict) to ``target``, atomically."""
    graph, kept = _graph(arch)
    live = graph.live_nodes(kept)
    given = arch.get("layout") or {}
    layout = ({n: tuple(p) for n, p in given.items() if n in live} if given
              else depth_layout(graph, live))
    xs = [p[0] for p in layout.values()]
    ys = [p[1] for p in layout.values()]
    x0, y0 = min(xs), min(ys)

    def centre(node: str) -> tuple[float, float]:
        x, y = layout[node]
        return _PAD + (x - x0) * _DX + _W / 2, _PAD + 30 + (y - y0) * _DY + _H / 2

    ops: dict[str, list[str]] = {}
    for choice in arch["choices"].values():
        if choice["kind"] == "op" and choice.get("node") and choice.get("used", True):
            ops.setdefault(choice["node"], []).append(str(choice["chosen"]))
    width = int(_PAD * 2 + (max(xs) - x0) * _DX + _W)
    height = int(_PAD * 2 + 30 + (max(ys) - y0) * _DY + _H)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{_PAD}" y="{_PAD - 10}" font-size="14">{escape(str(arch["space"]))} '
           f'derived at tau {arch["tau"]}: {arch["params"]:,} parameters</text>']
    for src, dst in arch["graph"]["fixed"]:
        if src in layout and dst in layout:
            (xa, ya), (xb, yb) = centre(src), centre(dst)
            out.append(f'<line x1="{xa}" y1="{ya}" x2="{xb}" y2="{yb}" stroke="#aaa" '
                       'stroke-dasharray="4 3"/>')
    for label, idx in kept.items():
        choice = arch["choices"][label]
        for i in idx:
            src, dst = choice["sources"][i], choice["node"]
            if src in layout and dst in layout:
                (xa, ya), (xb, yb) = centre(src), centre(dst)
                gate = choice["scores"][i]
                out.append(f'<line x1="{xa}" y1="{ya}" x2="{xb}" y2="{yb}" stroke="#2a6fdb" '
                           f'stroke-width="{1 + 3 * gate:.1f}"><title>{escape(src)} -> '
                           f'{escape(dst)}: gate {gate:.3f}</title></line>')
    for node in sorted(layout):
        cx, cy = centre(node)
        fill = "#ffe9b3" if node in graph.outputs else "#eef3fb"
        out.append(f'<rect x="{cx - _W / 2}" y="{cy - _H / 2}" width="{_W}" height="{_H}" rx="8" '
                   f'fill="{fill}" stroke="#345"/>')
        out.append(f'<text x="{cx}" y="{cy - 6}" text-anchor="middle" font-weight="bold">'
                   f'{escape(node)}</text>')
        out.append(f'<text x="{cx}" y="{cy + 10}" text-anchor="middle">'
                   f'{escape(" · ".join(ops.get(node, [])))}</text>')
    out.append("</svg>")
    target = Path(target)
    with atomic_path(target) as tmp:
        tmp.write_text("\n".join(out) + "\n", encoding="utf-8")
    return target
