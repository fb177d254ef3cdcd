"""The base class every nasseg space subclasses: op choices, connection choices and knobs.

A space is written like an ``nn.Module``. In its constructor it declares its topology (fixed
edges and connection choices between named nodes), then builds modules, asking
:meth:`SearchSpace.is_live` for nodes it may skip. Under a frozen sample the same constructor
builds only the chosen ops and live nodes, so a derived network holds only its live parts.

Spaces are NNI ``ModelSpace`` subclasses, so NNI's own strategies run on them too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import nni.mutable as nm
import torch
from nni.nas.nn.pytorch import InputChoice, LayerChoice, ModelSpace
from nni.nas.space import current_model, model_context
from torch import nn

from nasseg.data.views import PATCH_VIEW, DataView
from nasseg.losses import DiceCELoss
from nasseg.space.graph import SpaceGraph
from nasseg.space.knobs import (Condition, check_condition, check_knob_value, condition_holds,
                                current_fixed_knobs)
from nasseg.space.recipe import BatchMetric, TrainingStage

__all__ = ["SearchSpace", "Connection", "ChoiceInfo", "SampleError", "GATE_REG"]

#: The knob every space with connection choices gets: the weight of the gate binarization
#: regularizer J = -mean((sigmoid(beta) - 0.5)^2) in the architecture loss.
GATE_REG = "gate_reg"

ModuleOrFactory = Union[nn.Module, Callable[[], nn.Module]]
Outputs = Union[torch.Tensor, Mapping[str, torch.Tensor]]


class SampleError(ValueError):
    """An architecture sample does not fit the space (a missing label or an unknown value)."""


@dataclass(frozen=True)
class ChoiceInfo:
    """What can vary under one label: an ``op`` choice, a ``connection`` choice or a ``knob``.

    ``inputs`` is the number of tensors an op choice's candidates take (``op(*inputs)``).
    """

    label: str
    kind: str
    candidates: tuple[Any, ...]
    node: str | None = None
    inputs: int = 1


def _build(candidate: ModuleOrFactory) -> nn.Module:
    return candidate if isinstance(candidate, nn.Module) else candidate()


class Connection(nn.Module):
    """A connection choice: a node sums any subset of its candidate inputs.

    Each candidate goes through its own alignment module (the paper's T(): resampling and channel
    matching), called as ``align(x, size)``. While searching, an NNI ``InputChoice`` (summing,
    ``n_chosen=None``) decides; once frozen only the kept candidates and their alignment modules
    exist. ``forward`` takes one tensor (or None for a node that was not built) per candidate and
    returns the sum of the kept ones, or None when none is kept.
    """

    def __init__(self, label: str, num_candidates: int,
                 align: Callable[[int], nn.Module] | None, kept: Sequence[int] | None) -> None:
        super().__init__()
        self.label = label
        self.kept = list(range(num_candidates)) if kept is None else sorted(int(i) for i in kept)
        self.align = nn.ModuleDict({str(i): align(i) for i in self.kept} if align else {})
        self.choice: nn.Module | None = (
            InputChoice(num_candidates, n_chosen=None, reduction="sum", label=label)
            if kept is None else None)

    def forward(self, candidates: Sequence[torch.Tensor | None],
                size: Sequence[int] | None = None) -> torch.Tensor | None:
        aligned: list[torch.Tensor | None] = [None] * len(candidates)
        for i in self.kept:
            x = candidates[i]
            if x is None:
                raise RuntimeError(f"connection {self.label!r}: kept input {i} was not computed")
            aligned[i] = self.align[str(i)](x, size) if self.align else x
        # An exact InputChoice is the unrelaxed space: sum the kept inputs. Anything else is a
        # relaxation put in its place (nasseg's gates, or NNI's mixed input, an InputChoice
        # subclass), which weighs the candidates itself.
        if self.choice is None or type(self.choice) is InputChoice:
            kept = [aligned[i] for i in self.kept]
            return torch.stack(kept).sum(0) if kept else None
        return self.choice(aligned)


class SearchSpace(ModelSpace):
    """Base class of nasseg spaces.

    Subclass it, call ``super().__init__()`` first, then use :meth:`op_choice`,
    :meth:`connection_choice` and :meth:`knob` in your constructor. Constructor arguments must be
    JSON values: they are written to ``arch.json`` to rebuild the network.

    A space also says what its method needs beyond the network; the engine and the trainer ask:
    :meth:`forward_batch` (inputs), :meth:`segmentation` (which output is the segmentation),
    :meth:`compute_loss` and :meth:`training_stages`. The defaults fit a one-input, one-output
    segmentation network trained with Dice + cross-entropy.
    """

    default_tau: float = 0.5

    def __init__(self) -> None:
        super().__init__()
        sample = current_model()
        self._frozen_sample: dict[str, Any] | None = dict(sample) if sample is not None else None
        self.graph = SpaceGraph()
        self.choice_infos: dict[str, ChoiceInfo] = {}
        self.knob_specs: dict[str, nm.Mutable] = {}
        self.knob_values: dict[str, Any] = {}
        #: Per knob, the value an architecture file without it stands for (see :meth:`knob`).
        self.knob_absent: dict[str, Any] = {}
        self.knob_conditions: dict[str, dict[str, list[Any]]] = {}
        self._live: set[str] | None = None
        self.loss_fn = DiceCELoss()

    # ----- declaring choices -----------------------------------------------------------------
    @property
    def is_frozen(self) -> bool:
        """True when this instance is a derived network built from a sample."""
        return self._frozen_sample is not None

    def _sample_value(self, label: str) -> Any:
        assert self._frozen_sample is not None
        if label not in self._frozen_sample:
            raise SampleError(f"the architecture sample has no value for choice {label!r}")
        return self._frozen_sample[label]

    def op_choice(self, label: str, candidates: Mapping[str, ModuleOrFactory],
                  node: str | None = None, inputs: int = 1) -> nn.Module:
        """A layer that is one of ``candidates`` (name -> module or factory).

        While searching this is an NNI ``LayerChoice``; frozen, it is the chosen module alone
        (other candidates given as factories are never built). ``inputs`` is how many tensors
        every candidate takes (a fusion of A and B takes 2); the engine relaxes such a choice
        over all of them.
        """
        if not candidates:
            raise ValueError(f"op choice {label!r} needs at least one candidate")
        if inputs < 1:
            raise ValueError(f"op choice {label!r}: inputs must be >= 1, got {inputs}")
        self.choice_infos[label] = ChoiceInfo(label, "op", tuple(candidates), node, inputs)
        if self.is_frozen:
            name = self._sample_value(label)
            if name not in candidates:
                raise SampleError(f"op choice {label!r} has no candidate {name!r}; "
                                  f"candidates: {list(candidates)}")
            return _build(candidates[name])
        return LayerChoice({name: _build(c) for name, c in candidates.items()}, label=label)

    def declare_connection(self, label: str, node: str, sources: Sequence[str]) -> None:
        """Declare that ``node`` sums any subset of ``sources`` under ``label``, without building
        anything yet: spaces whose nodes may die declare every connection first, then build the
        live nodes (and their :meth:`connection_choice`) asking :meth:`is_live`."""
        if not sources:
            raise ValueError(f"connection choice {label!r} needs at least one source")
        known = self.graph.connections.get(label)
        if known is not None:
            if (known.node, known.sources) != (node, tuple(sources)):
                raise ValueError(f"connection {label!r} is declared twice, differently")
            return
        self.graph.add_connection(label, node, sources)
        self.choice_infos[label] = ChoiceInfo(label, "connection", tuple(sources), node)
        self._live = None
        if GATE_REG not in self.knob_specs:
            self.knob(GATE_REG, low=0.0, high=10.0, default=0.1)

    def connection_choice(self, label: str, node: str, sources: Sequence[str],
                          align: Callable[[int], nn.Module] | None = None) -> Connection:
        """``node`` sums any subset of the outputs of ``sources``, each aligned by ``align(i)``.

        Declares the connection (see :meth:`declare_connection`) and builds its module.
        """
        self.declare_connection(label, node, sources)
        kept = None
        if self.is_frozen:
            kept = self._sample_value(label)
            if any(not 0 <= int(i) < len(sources) for i in kept):
                raise SampleError(f"connection {label!r} keeps {kept}, but it has only "
                                  f"{len(sources)} candidates")
        return Connection(label, len(sources), align, kept)

    def fixed_edge(self, source: str, node: str) -> None:
        """``node`` always consumes ``source`` (part of the topology used for pruning)."""
        self.graph.add_fixed(source, node)
        self._live = None

    def set_outputs(self, *nodes: str) -> None:
        """The nodes whose results leave the network; everything they do not reach is dead."""
        self.graph.outputs = list(nodes)
        self._live = None

    def is_live(self, node: str) -> bool:
        """Whether ``node`` must be built: always while searching; reachable when frozen."""
        if not self.is_frozen:
            return True
        if self._live is None:
            kept = {label: self._sample_value(label) for label in self.graph.connections}
            self._live = self.graph.live_nodes(kept)
        return node in self._live

    def knob(self, label: str, values: Sequence[Any] | None = None, *,
             low: float | None = None, high: float | None = None, log: bool = False,
             integer: bool = False, default: Any = None,
             active_if: Condition | None = None, absent: Any = None) -> Any:
        """A hyperparameter or variant, fixed for one run; returns its value for this instance.

        Give ``values`` for a categorical knob, or ``low``/``high`` (with ``log`` and ``integer``)
        for a numerical one. The value comes from the frozen sample, else the run's fixed knobs
        (``--set``), else ``default`` (the first value or the range's low end when omitted).
        ``active_if={"other": [values...]}`` makes the knob apply only while knobs declared
        before it take those values; while inactive it takes ``default`` and is not tuned.
        ``absent`` is the value an architecture file written before the knob existed stands for
        (default: ``default``): set it when a new knob's default is not the net those files hold,
        or when a knob's default changes, so that they still build the net they were derived as.
        """
        if values is not None:
            default = values[0] if default is None else default
            mutable: nm.Mutable = nm.Categorical(list(values), default=default, label=label)
        elif low is not None and high is not None:
            default = low if default is None else default
            mutable = nm.Numerical(low, high, log_distributed=log, quantize=1 if integer else None,
                                   default=default, label=label)
        else:
            raise ValueError(f"knob {label!r} needs values or a low/high range")
        if active_if is not None:
            self.knob_conditions[label] = check_condition(label, active_if, self.knob_specs)
        self.knob_specs[label] = mutable
        self.choice_infos[label] = ChoiceInfo(label, "knob", tuple(values or (low, high)))
        if not condition_holds(self.knob_conditions.get(label), self.knob_values):
            value = default
        elif self.is_frozen and label in self._frozen_sample:
            value = self._frozen_sample[label]
        else:
            value = current_fixed_knobs().get(label, default)
        value = check_knob_value(mutable, value)
        self.knob_values[label] = value
        self.knob_absent[label] = check_knob_value(mutable, default if absent is None else absent)
        return value

    # ----- the method's recipe: what the engine, trainer, inference and export ask ---------
    #: Spatial dimensions the space runs in.
    supported_dims: tuple[int, ...] = (2, 3)
    #: The validation value that picks the best epoch and feeds the tuner (higher is better):
    #: ``dice_mean`` or a name one of :meth:`metrics` reports.
    selection_metric: str = "dice_mean"

    def data_view(self) -> DataView:
        """What the network reads from one location (default: the patch alone)."""
        return PATCH_VIEW

    def forward_batch(self, batch: Mapping[str, torch.Tensor]) -> Outputs:
        """Run the network on a batch of the space's view; the default feeds ``batch["image"]``.

        In training mode a space may read targets (e.g. ``batch["label"]`` as an extra input);
        in eval mode its outputs must not depend on them (inference has none).
        """
        return self(batch["image"])

    def segmentation(self, outputs: Outputs) -> torch.Tensor:
        """The segmentation logits among the outputs (the tensor itself, or ``outputs["seg"]``)."""
        return outputs if isinstance(outputs, torch.Tensor) else outputs["seg"]

    def segmentation_loss(self, outputs: Outputs, batch: Mapping[str, torch.Tensor]
                          ) -> torch.Tensor:
        """Dice + cross-entropy of the segmentation against ``batch["label"]``."""
        return self.loss_fn(self.segmentation(outputs), batch["label"])

    def compute_loss(self, outputs: Outputs, batch: Mapping[str, torch.Tensor],
                     stage: TrainingStage) -> torch.Tensor:
        """The weights' training loss in ``stage``; the default is the segmentation loss."""
        return self.segmentation_loss(outputs, batch)

    def arch_loss(self, outputs: Outputs, batch: Mapping[str, torch.Tensor],
                  stage: TrainingStage) -> torch.Tensor:
        """The loss the architecture step descends (default: the segmentation loss alone, so
        auxiliary terms train the weights without steering the architecture)."""
        return self.segmentation_loss(outputs, batch)

    def training_stages(self) -> list[TrainingStage]:
        """The training recipe; the default is one stage that trains everything."""
        return [TrainingStage("all")]

    def metrics(self) -> list[BatchMetric]:
        """Fresh accumulators of the validation metrics this space adds beyond Dice."""
        return []

    def training_only(self) -> tuple[str, ...]:
        """Names of submodules that exist for training alone (auxiliary decoders, mask
        encoders): left out of parameter counts, FLOPs and exports, never run in eval mode."""
        return ()

    def node_positions(self) -> dict[str, tuple[float, float]] | None:
        """Where to draw each node (column, row); None lets the drawing lay nodes out by depth."""
        return None

    def example_batch(self, patch_size: Sequence[int], in_channels: int) -> dict[str, torch.Tensor]:
        """A zero batch of one location in the space's view (FLOPs, export tracing, tests)."""
        image = torch.zeros(1, in_channels, *patch_size)
        batch = {"image": image}
        context = self.data_view().context
        if context:
            batch["context"] = torch.zeros(1, len(context), in_channels, *patch_size)
        return batch

    # ----- freezing ---------------------------------------------------------------------------
    @property
    def init_arguments(self) -> dict[str, Any]:
        """The keyword arguments this space was built with (written to ``arch.json``)."""
        kwargs = dict(self.trace_kwargs)
        if self.trace_args:
            raise TypeError(f"{type(self).__name__}: build spaces with keyword arguments only")
        return kwargs

    def default_sample(self) -> dict[str, Any]:
        """A complete sample: first op candidates, every connection kept, the current knobs."""
        sample: dict[str, Any] = dict(self.knob_values)
        for label, info in self.choice_infos.items():
            if info.kind == "op":
                sample[label] = info.candidates[0]
            elif info.kind == "connection":
                sample[label] = list(range(len(info.candidates)))
        return sample

    def freeze(self, sample: Mapping[str, Any]) -> "SearchSpace":
        """Build the discrete network for ``sample`` (labels -> values), holding only live parts.

        Knobs missing from the sample keep this instance's values.
        """
        full = {**self.knob_values, **dict(sample)}
        unknown = sorted(set(full) - set(self.choice_infos))
        if unknown:
            raise SampleError(f"the sample names labels this space does not have: {unknown}")
        with model_context(full):
            return type(self)(**self.init_arguments)
