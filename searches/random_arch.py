"""Random architectures: the control a searched network is judged against.

A random architecture is one draw from the same space: every op choice takes a uniformly drawn
candidate, every gate is kept with probability 1/2, and the draw is then pruned and derived
exactly as a search's scores are (nodes nothing uses are removed, every live node keeps at
least one input). Li and Talwalkar (2019) showed that this baseline, trained like the searched
net, is often hard to beat; NAS results are reported against it.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping

from nasseg.artifacts.arch_file import write_arch
from nasseg.data import load_data, resolve_data_spec
from nasseg.derive import derive_architecture
from nasseg.space import SearchSpace, create_space

__all__ = ["random_scores", "random_architecture"]

#: Gates are drawn uniformly in [0, 1] and kept at this threshold: each with probability 1/2.
RANDOM_TAU = 0.5


def random_scores(space: SearchSpace, rng: random.Random) -> dict[str, Any]:
    """Scores in ``arch_params.json``'s form that pick a uniformly random architecture."""
    ops, connections = {}, {}
    for label, info in space.choice_infos.items():
        if info.kind == "op":
            pick = rng.randrange(len(info.candidates))
            ops[label] = {"candidates": list(info.candidates),
                          "probs": [float(i == pick) for i in range(len(info.candidates))]}
        elif info.kind == "connection":
            connections[label] = {"probs": [rng.random() for _ in info.candidates]}
    return {"op": ops, "connection": connections}


def random_architecture(space: str, data: str, seed: int, out: str | Path,
                        knobs: Mapping[str, Any] | None = None,
                        space_args: Mapping[str, Any] | None = None) -> tuple[Path, dict]:
    """Draw architecture number ``seed`` of ``space`` for ``data``; write it as an ``arch.json``
    that ``nasseg train`` takes like a derived one. Returns the path and its content."""
    data = resolve_data_spec(data)
    dataset = load_data(data)
    args = {"in_channels": dataset.in_channels, "num_classes": dataset.num_classes,
            "spatial_dims": dataset.spatial_dims, **(space_args or {})}
    supernet = create_space(space, knobs=dict(knobs or {}), **args)
    scores = random_scores(supernet, random.Random(seed))
    arch = derive_architecture(supernet, scores, RANDOM_TAU,
                               [dataset.in_channels, *dataset.patch_size])
    arch.update({"data": data, "random_seed": seed})
    path = Path(out)
    write_arch(path, arch)
    return path, arch
