"""``arch.json``: the contract between search, derive, train and predict.

It holds everything needed to rebuild the derived network, and nothing that depends on the
machine. Keys (stable):

``format``          ``"nasseg.arch/1"``
``space``           registry name, or ``module:ClassName`` for a user's space
``space_args``      keyword arguments of the space's constructor
``sample``          label -> value for every op choice, connection choice and knob
``tau``             gate threshold the connections were kept at
``choices``         per label: ``kind``, candidates or sources, ``scores`` and the decision
                    (``chosen`` with ``used``: false when pruning removed its node or edge;
                    ``kept`` for connections)
``params``          trainable parameters of the derived network
``supernet_params`` trainable parameters of the whole space
``flops``           FLOPs of one forward pass on ``input_shape`` (a multiply-add counts 2)
``input_shape``     [channels, *patch size]
``data``            the data set searched on
``graph``           ``fixed`` edges ([source, node] pairs) and ``outputs`` of the node graph
``layout``          node -> [column, row] for drawing (empty: laid out by depth)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from nasseg.artifacts.files import FileFormatError, read_json, write_json
from nasseg.space import SearchSpace, create_space

__all__ = ["ARCH_FORMAT", "read_arch", "write_arch", "build_derived"]

ARCH_FORMAT = "nasseg.arch/1"
_REQUIRED = ("space", "space_args", "sample", "input_shape")


def read_arch(path: str | Path) -> dict[str, Any]:
    """Read and check an ``arch.json``; problems raise :class:`FileFormatError` naming the file."""
    arch = read_json(path, "architecture file")
    if not isinstance(arch, dict) or arch.get("format") != ARCH_FORMAT:
        raise FileFormatError(f"{path}: not a nasseg architecture file (format {ARCH_FORMAT!r})")
    missing = [k for k in _REQUIRED if k not in arch]
    if missing:
        raise FileFormatError(f"{path}: missing keys {missing}")
    return arch


def write_arch(path: str | Path, arch: dict[str, Any]) -> None:
    """Write an ``arch.json`` atomically."""
    write_json(path, {"format": ARCH_FORMAT, **arch})


def build_derived(arch: dict[str, Any]) -> SearchSpace:
    """Build the derived (frozen) network an architecture file describes."""
    knob_labels = {k for k in arch.get("knobs", {})}
    space = create_space(arch["space"], knobs={k: arch["sample"][k] for k in knob_labels},
                         **arch["space_args"])
    return space.freeze(arch["sample"])
