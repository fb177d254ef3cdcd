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
``data``            the data set searched on: a demo name, or a path relative to this file
``view``            the data view the network reads (``context`` factors, ``context_labels``)
``graph``           ``fixed`` edges ([source, node] pairs) and ``outputs`` of the node graph
``layout``          node -> [column, row] for drawing (empty: laid out by depth)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nasseg.artifacts.files import FileFormatError, read_json, write_json
from nasseg.data import locate_data_spec, record_data_spec
from nasseg.space import KnobError, SampleError, SearchSpace, create_space

__all__ = ["ARCH_FORMAT", "read_arch", "write_arch", "build_derived"]

ARCH_FORMAT = "nasseg.arch/1"
_REQUIRED = ("space", "space_args", "sample", "input_shape")


def read_arch(path: str | Path) -> dict[str, Any]:
    """Read and check an ``arch.json``; problems raise :class:`FileFormatError` naming the file.

    ``data``, stored relative to the file, comes back as a demo name or an absolute path.
    """
    arch = read_json(path, "architecture file")
    if not isinstance(arch, dict) or arch.get("format") != ARCH_FORMAT:
        raise FileFormatError(f"{path}: not a nasseg architecture file (format {ARCH_FORMAT!r})")
    missing = [k for k in _REQUIRED if k not in arch]
    if missing:
        raise FileFormatError(f"{path}: missing keys {missing}")
    if arch.get("data") is not None:
        arch["data"] = locate_data_spec(arch["data"], Path(path).parent)
    return arch


def write_arch(path: str | Path, arch: dict[str, Any]) -> None:
    """Write an ``arch.json`` atomically, its ``data`` relative to the file (no absolute path
    of the machine; a file moved with its data still finds it)."""
    content = {"format": ARCH_FORMAT, **{k: v for k, v in arch.items() if k != "format"}}
    if content.get("data") is not None:
        content["data"] = record_data_spec(content["data"], Path(path).parent)
    write_json(path, content)


def build_derived(arch: dict[str, Any], source: str | Path = "architecture") -> SearchSpace:
    """Build the derived (frozen) network an architecture file describes.

    The sample is checked against its space first: a label the space does not have, or an op
    or connection choice the sample lacks, raises :class:`SampleError` naming ``source``; a
    knob it lacks (one added to the space since) takes the value the space says a file without
    it stands for. The check draws no random numbers (the RNG is restored after it), so a
    derived net's initial weights depend on the seed alone, not on the size of the supernet it
    came from.
    """
    sample = arch["sample"]
    knobs = {k: v for k, v in sample.items() if k in arch.get("knobs", {})}
    try:
        with torch.random.fork_rng(devices=[]):
            space = create_space(arch["space"], knobs=knobs, **arch["space_args"])
            # A knob added to the space after the file was written takes the value that keeps
            # the net the file was derived as; where that is not its default, the choices it
            # declares may differ, so the space is made again with it.
            absent = {label: space.knob_absent[label] for label, info in space.choice_infos.items()
                      if info.kind == "knob" and label not in sample}
            if any(space.knob_values[label] != value for label, value in absent.items()):
                space = create_space(arch["space"], knobs={**knobs, **absent},
                                     **arch["space_args"])
    except (KnobError, SampleError, TypeError) as exc:
        raise SampleError(f"{source}: {exc}") from None
    # A missing op or connection choice cannot be filled in.
    sample = {**absent, **sample}
    missing = sorted(set(space.choice_infos) - set(sample))
    unknown = sorted(set(sample) - set(space.choice_infos))
    if missing or unknown:
        problems = ([f"lacks {', '.join(missing)}"] if missing else []) + (
            [f"names {', '.join(unknown)}, which the space does not have"] if unknown else [])
        raise SampleError(f"{source}: its sample {' and '.join(problems)} (space "
                          f"{arch['space']!r}); derive it again from its search")
    try:
        return space.freeze(sample)
    except (KnobError, SampleError) as exc:
        raise SampleError(f"{source}: {exc}") from None
