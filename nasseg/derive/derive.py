"""Derive: turn searched scores into one discrete architecture.

Op choices take their argmax; connection choices keep the candidates whose gate
sigmoid(beta) >= tau, then nodes nothing live consumes are removed (every live node keeps at
least one input). Knobs keep their run values.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from nasseg.artifacts.arch_file import write_arch
from nasseg.artifacts.files import read_json
from nasseg.artifacts.run_folder import RunFolder
from nasseg.data import locate_data_spec
from nasseg.derive.cost import count_flops, count_parameters
from nasseg.derive.draw import draw_architecture
from nasseg.space import SearchSpace, create_space, space_name

__all__ = ["derive_architecture", "derive_run", "check_tau", "sample_scores", "fixed_architecture"]


def check_tau(tau: float) -> float:
    """``tau`` if it lies in (0, 1), else a ``ValueError`` saying so."""
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau must lie in (0, 1), got {tau}")
    return tau


def sample_scores(space: SearchSpace, sample: Mapping[str, Any]) -> dict[str, Any]:
    """Scores in ``arch_params.json``'s form that derive exactly ``sample`` (a paper's network,
    a hand-made baseline): its ops with certainty, its kept inputs as gates of 1, the others 0."""
    scores: dict[str, Any] = {"op": {}, "connection": {}}
    for label, info in space.choice_infos.items():
        if info.kind == "op":
            scores["op"][label] = {"candidates": list(info.candidates),
                                   "probs": [float(c == sample[label]) for c in info.candidates]}
        elif info.kind == "connection":
            scores["connection"][label] = {
                "probs": [float(i in sample[label]) for i in range(len(info.candidates))]}
    return scores


def derive_architecture(space: SearchSpace, scores: Mapping[str, Any], tau: float,
                        input_shape: Sequence[int]) -> dict[str, Any]:
    """The ``arch.json`` content for ``space`` (a supernet) given ``arch_params.json`` scores."""
    check_tau(tau)
    op_scores = scores.get("op", {})
    gate_scores = {label: entry["probs"] for label, entry in scores.get("connection", {}).items()}
    missing = [label for label, info in space.choice_infos.items()
               if (info.kind == "op" and label not in op_scores)
               or (info.kind == "connection" and label not in gate_scores)]
    if missing:
        raise ValueError(f"the scores lack choices of this space: {missing}")
    sample: dict[str, Any] = dict(space.knob_values)
    choices: dict[str, Any] = {}
    kept = space.graph.prune(gate_scores, tau)
    for label, info in space.choice_infos.items():
        if info.kind == "op":
            probs = op_scores[label]["probs"]
            best = max(range(len(probs)), key=probs.__getitem__)
            sample[label] = info.candidates[best]
            choices[label] = {"kind": "op", "node": info.node, "candidates": list(info.candidates),
                              "scores": probs, "chosen": info.candidates[best]}
        elif info.kind == "connection":
            sample[label] = kept[label]
            choices[label] = {"kind": "connection", "node": info.node,
                              "sources": list(info.candidates), "scores": gate_scores[label],
                              "kept": kept[label]}
    derived = space.freeze(sample)
    for label, entry in choices.items():  # op choices of pruned nodes and edges are not built
        if entry["kind"] == "op":
            entry["used"] = label in derived.choice_infos
    example = space.example_batch(input_shape[1:], input_shape[0])
    return {
        "space": space_name(space),
        "space_args": space.init_arguments,
        "knobs": dict(space.knob_values),
        "sample": sample,
        "tau": tau,
        "choices": choices,
        "params": count_parameters(derived),
        "supernet_params": count_parameters(space),
        "flops": count_flops(derived, example),
        "input_shape": list(input_shape),
        "graph": {"fixed": [[s, n] for n, srcs in space.graph.fixed.items() for s in srcs],
                  "outputs": list(space.graph.outputs)},
        "layout": {n: list(p) for n, p in (space.node_positions() or {}).items()},
    }


def fixed_architecture(space: SearchSpace, sample: Mapping[str, Any],
                       input_shape: Sequence[int]) -> dict[str, Any]:
    """The ``arch.json`` content of one given network of ``space`` (a paper's own, a hand-made
    baseline), derived from :func:`sample_scores`; a sample derive would change (a pruned
    node's choices, a dead input) is refused."""
    arch = derive_architecture(space, sample_scores(space, sample), 0.5, input_shape)
    if arch["sample"] != {**space.knob_values, **dict(sample)}:
        raise ValueError("the sample is not a network of this space as derive builds it "
                         "(a connection keeps a dead input, or a choice is missing)")
    return arch


def derive_run(run_dir: str | Path, tau: float | None = None, out: str | Path | None = None,
               space_args: Mapping[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Derive from a search run folder; write ``arch.json`` (default ``RUN/arch.json``) and its
    picture beside it (same name, ``.svg``).

    ``tau`` defaults to the space's own default. ``space_args`` replace constructor arguments
    of the searched space (``features=16``: the same architecture, built wider than it was
    searched). Returns the written path and its content.
    """
    run = RunFolder(Path(run_dir))
    run.require(run.config, run.arch_params)
    config = read_json(run.config, "run description")
    scores = read_json(run.arch_params, "architecture parameter file")
    space = create_space(config["space"], knobs=config["knobs"],
                         **{**config["space_args"], **dict(space_args or {})})
    tau = space.default_tau if tau is None else tau
    arch = derive_architecture(space, scores, tau, config["input_shape"])
    target = Path(out) if out is not None else run.arch
    arch["data"] = locate_data_spec(config["data"], run.path)
    arch["epochs_searched"] = scores.get("epochs_done")
    write_arch(target, arch)
    draw_architecture(arch, target.with_suffix(".svg"))
    return target, arch
