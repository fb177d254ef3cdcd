"""Continuous relaxation of a space: op choices become mixtures, connections gated sums.

:func:`relax` swaps, in place, every NNI ``LayerChoice`` and ``InputChoice`` of a model for the
modules of one :class:`Relaxation`, looked up by name in :data:`RELAXATIONS`: ``full`` (DARTS:
softmax mixing and sigmoid gates, here) or a memory-saving mode of
:mod:`nasseg.searches.darts.modes` (``partial``, ``gumbel``, ``binary``). A relaxation says what
it does to an op choice and to a connection choice, whether it samples a sub-network per
forward, whether the unrolled second-order gradient applies, and what it adds to the cost card;
a new mode is a subclass registered with :func:`register_relaxation`.

The architecture parameters live in one :class:`ArchParameters` module, outside the network's
own parameters, so the weight optimizer never sees them and the architecture step can ask for
their gradients alone.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import (TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Iterator, Mapping, Sequence,
                    TypeVar)

import torch
from nni.nas.nn.pytorch import InputChoice, LayerChoice
from torch import nn

if TYPE_CHECKING:
    from nasseg.searches.darts.modes import OpSample

__all__ = ["ArchParameters", "Edge", "Gates", "MixedOp", "GatedSum", "Relaxation", "FullMixing",
           "RELAXATIONS", "register_relaxation", "get_relaxation", "relax", "GATE_FORMS"]

#: How a connection's betas become gates: ``sigmoid`` (each gate sigmoid(beta_i), as in
#: UXNet) or ``centred`` (sigmoid(beta_i - mean beta) within a node, and a node's only input
#: always on). Blocks that normalise their input make a node's output blind to a common scale
#: of its gates, so the loss teaches only their ratios; centred gates have no common level to
#: drift, and the binarization term acts on the ratios the loss does inform.
GATE_FORMS = ("sigmoid", "centred")
#: The logit that stands for "always on" (sigmoid(30) is 1 in float32).
_ALWAYS_ON = 30.0
#: One input of a connection choice: its label and the input's position.
Edge = tuple[str, int]


class ArchParameters(nn.Module):
    """Alphas (one vector per op-choice label) and betas (one per connection-choice label).

    Choices that share a label share their parameters (and, in the sampling modes, one sample
    per forward). ``relaxation`` (the :class:`Relaxation` that :func:`relax` applied),
    ``partial_k`` and ``temperature`` (the Gumbel temperature, set by the engine every epoch)
    are plain attributes, not state: the run's settings own them; so is ``gate_form`` (one of
    :data:`GATE_FORMS`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.ParameterDict()
        self.beta = nn.ParameterDict()
        self.op_candidates: dict[str, list[str]] = {}
        self.connection_sizes: dict[str, int] = {}
        self.relaxation: Relaxation = FullMixing(self)
        self.partial_k = 4
        self.temperature = 1.0
        self.gate_form = "sigmoid"
        #: partial mode: op choices it cannot split over channels, which stay fully mixed
        self.fully_mixed: list[str] = []
        #: connection inputs switched off (gate 0) by a selection
        self.removed: dict[str, set[int]] = {}
        #: per connection label, the scores a selection gave its inputs (they replace the
        #: gates in :meth:`scores`, so derive keeps what the selection measured)
        self.selected: dict[str, list[float]] = {}
        #: op candidates switched off (weight 0) by a selection; a choice with one candidate
        #: left runs it alone, with weight 1, as the derived network will
        self.op_removed: dict[str, set[int]] = {}
        #: per op label, the scores a selection gave its candidates (they replace the
        #: probabilities in :meth:`scores`, so derive keeps the op the selection chose)
        self.op_selected: dict[str, list[float]] = {}
        self._op_samples: dict[str, OpSample] = {}
        self._gate_samples: dict[str, Gates] = {}

    @staticmethod
    def _key(label: str) -> str:
        # ParameterDict keys may not contain "."; labels may.
        return label.replace(".", "\u00b7")

    def add_op(self, label: str, candidates: Sequence[str]) -> nn.Parameter:
        """The alpha of ``label``, created (1e-3 * N(0, 1), as in DARTS) on first use."""
        key = self._key(label)
        if key not in self.alpha:
            self.alpha[key] = nn.Parameter(1e-3 * torch.randn(len(candidates)))
            self.op_candidates[label] = [str(c) for c in candidates]
        elif self.op_candidates[label] != [str(c) for c in candidates]:
            raise ValueError(f"op choices labelled {label!r} have different candidates")
        return self.alpha[key]

    def add_connection(self, label: str, num_candidates: int) -> nn.Parameter:
        """The beta of ``label``, created at 0 (every gate starts undecided at 0.5)."""
        key = self._key(label)
        if key not in self.beta:
            self.beta[key] = nn.Parameter(torch.zeros(num_candidates))
            self.connection_sizes[label] = num_candidates
        return self.beta[key]

    def op_probs(self, label: str) -> torch.Tensor:
        """softmax(alpha) of an op choice, 0 for a candidate in :attr:`op_removed`, and 1 for
        the candidate left when every other one is removed."""
        probs = torch.softmax(self.alpha[self._key(label)], dim=0)
        off = self.op_removed.get(label)
        if not off:
            return probs
        keep = torch.ones_like(probs)
        keep[sorted(off)] = 0.0
        return keep if len(off) == len(probs) - 1 else probs * keep

    def gate_logits(self, label: str) -> torch.Tensor:
        """The logits of a connection's gates: beta, or with ``centred`` gates beta less its
        mean (and "always on" for a node's only input)."""
        beta = self.beta[self._key(label)]
        if self.gate_form == "sigmoid":
            return beta
        if beta.numel() == 1:
            return beta * 0 + _ALWAYS_ON
        return beta - beta.mean()

    def gate_probs(self, label: str) -> torch.Tensor:
        """The gates of a connection choice: sigmoid of :meth:`gate_logits`, 0 for an input in
        :attr:`removed`."""
        gates = torch.sigmoid(self.gate_logits(label))
        off = self.removed.get(label)
        if off:
            keep = torch.ones_like(gates)
            keep[sorted(off)] = 0.0
            gates = gates * keep
        return gates

    @contextmanager
    def switched_off(self, edges: Iterable[Edge], ops: bool = False) -> Iterator[None]:
        """Switch ``edges`` off (gate 0; with ``ops``, op candidates: weight 0) inside the
        block; afterwards exactly what was off before is off again."""
        removed = self.op_removed if ops else self.removed
        added = [(label, i) for label, i in edges if i not in removed.get(label, ())]
        for label, i in added:
            removed.setdefault(label, set()).add(i)
        try:
            yield
        finally:
            for label, i in added:
                removed[label].discard(i)

    # ----- sampling modes (gumbel, binary) -----------------------------------------------------
    def resample(self) -> None:
        """Forget this forward's samples; the next forward draws new ones (a forward pre-hook
        of the relaxed model calls this)."""
        self._op_samples.clear()
        self._gate_samples.clear()

    def _resample_hook(self, module: nn.Module, args: Any) -> None:
        self.resample()

    def op_sample(self, label: str) -> OpSample:
        """This forward's draw of op choice ``label`` (drawn by the relaxation on first use)."""
        if label not in self._op_samples:
            self._op_samples[label] = self.relaxation.sample_op(label)
        return self._op_samples[label]

    def gate_sample(self, label: str) -> Gates:
        """This forward's draw of connection ``label`` (drawn by the relaxation on first use)."""
        if label not in self._gate_samples:
            self._gate_samples[label] = self.relaxation.sample_gates(label)
        return self._gate_samples[label]

    def binarization_loss(self) -> torch.Tensor:
        """J = -mean((gate - 0.5)^2): pushes every gate that can move towards 0 or 1."""
        labels = [lbl for lbl, n in self.connection_sizes.items()
                  if n > 1 or self.gate_form == "sigmoid"]
        if not labels:
            return torch.zeros(())
        gates = torch.cat([self.gate_probs(lbl) for lbl in labels])
        return -((gates - 0.5) ** 2).mean()

    def scores(self) -> dict[str, Any]:
        """JSON-ready op probabilities and connection scores, per label: a connection's
        ``probs`` are its gates, or after a selection the selection's scores (the gates are
        then kept under ``gates``)."""
        with torch.no_grad():
            ops = {}
            for label, names in self.op_candidates.items():
                probs = torch.softmax(self.alpha[self._key(label)], dim=0).tolist()
                ops[label] = ({"candidates": names, "probs": self.op_selected[label],
                               "alphas": probs} if label in self.op_selected
                              else {"candidates": names, "probs": probs})
            connections = {}
            for label in self.connection_sizes:
                gates = torch.sigmoid(self.gate_logits(label)).tolist()
                connections[label] = ({"probs": self.selected[label], "gates": gates}
                                      if label in self.selected else {"probs": gates})
            return {"op": ops, "connection": connections}

    def labelled_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """The parameters keyed by their real labels (for checkpoints and comparisons)."""
        return {"alpha": {lbl: self.alpha[self._key(lbl)].detach().clone()
                          for lbl in self.op_candidates},
                "beta": {lbl: self.beta[self._key(lbl)].detach().clone()
                         for lbl in self.connection_sizes}}


def _accumulate(out: torch.Tensor | None, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``out + w * y`` for a scalar weight ``w``, in place on ``out`` (a tensor the mixing made
    itself, never a candidate's output): one fused pass and no temporary per candidate. ``w``
    takes ``y``'s dtype, so under autocast the mixture stays in half precision."""
    if w.dtype != y.dtype:
        w = w.to(y.dtype)
    return w * y if out is None else out.addcmul_(w, y)


class MixedOp(nn.Module):
    """softmax(alpha)-weighted sum of every candidate's output (full DARTS mixing).

    The candidates take the op choice's inputs, however many (``op(*inputs)``).
    """

    def __init__(self, label: str, candidates: nn.ModuleDict, arch: ArchParameters) -> None:
        super().__init__()
        self.label = label
        self.candidates = candidates
        self._arch = [arch]  # a list keeps the arch module out of this module's parameters

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        weights = self._arch[0].op_probs(self.label)
        out = None
        for w, op in zip(weights, self.candidates.values()):
            out = _accumulate(out, w, op(*inputs))
        return out


@dataclass
class Gates:
    """A connection's gates in one forward: the inputs summed (``on``), their weights (indexed
    by input position; None: a plain sum) and what the sum is divided by (None: nothing)."""

    on: list[int]
    weights: torch.Tensor | Mapping[int, torch.Tensor] | None
    divisor: torch.Tensor | None = None


class GatedSum(nn.Module):
    """The gated sum of a connection's candidate inputs. The relaxation sets the gates
    (:meth:`Relaxation.gates`): sigmoid weights, normalised, or sampled on and off."""

    def __init__(self, label: str, arch: ArchParameters) -> None:
        super().__init__()
        self.label = label
        self._arch = [arch]

    def gates(self) -> Gates:
        """This forward's gates (a sampling relaxation draws them once per forward)."""
        return self._arch[0].relaxation.gates(self.label, self.training)

    def forward(self, inputs: Sequence[torch.Tensor | None]) -> torch.Tensor:
        gates = self.gates()
        out = None
        for i in gates.on:
            x = inputs[i]
            if x is None:
                raise RuntimeError(f"connection {self.label!r}: input {i} is on but was not "
                                   "computed")
            if gates.weights is None:
                out = x if out is None else out + x
            else:
                out = _accumulate(out, gates.weights[i], x)
        return out if gates.divisor is None else out / gates.divisor


# ----- relaxations, registered by name --------------------------------------------------------
class Relaxation:
    """How a search relaxes the choices of a space: one subclass per mode, registered by name.

    An instance serves one :func:`relax` call and reads the run's settings from ``arch``. The
    defaults are full DARTS mixing, see :class:`FullMixing`.
    """

    #: the registered name (``SearchConfig.mode``, ``nasseg search --mode``)
    name: ClassVar[str] = ""
    #: what it is, in a few words (``nasseg search --help``)
    title: ClassVar[str] = ""
    #: draws a sub-network per forward: one draw per label, redrawn before every forward
    samples: ClassVar[bool] = False
    #: deterministic, so DARTS's unrolled (second-order) gradient applies
    second_order: ClassVar[bool] = True

    def __init__(self, arch: ArchParameters) -> None:
        self.arch = arch

    def op_choice(self, label: str, candidates: nn.ModuleDict, inputs: int) -> nn.Module:
        """The module that replaces op choice ``label``, whose candidates take ``inputs``
        tensors: the softmax(alpha) mixture of all of them."""
        return MixedOp(label, candidates, self.arch)

    def connection_choice(self, label: str, owner: nn.Module) -> nn.Module:
        """The module that replaces connection choice ``label``, a child of ``owner``."""
        return GatedSum(label, self.arch)

    def gates(self, label: str, training: bool) -> Gates:
        """The gates of connection ``label`` in this forward: every input, weighted by its
        sigmoid(beta) gate (``training``: the gated sum's mode)."""
        probs = self.arch.gate_probs(label)
        return Gates(list(range(len(probs))), probs)

    def sample_op(self, label: str) -> OpSample:
        """A new draw of op choice ``label`` (sampling relaxations; ``arch.op_sample`` caches
        it for the forward)."""
        raise ValueError(f"mode {self.name!r} does not sample op choices")

    def sample_gates(self, label: str) -> Gates:
        """A new draw of connection ``label`` (sampling relaxations; ``arch.gate_sample``
        caches it for the forward)."""
        raise ValueError(f"mode {self.name!r} does not sample connections")

    def cost_fields(self) -> dict[str, Any]:
        """What this relaxation adds to the cost card: its settings that shape the cost."""
        return {}


#: Relaxations by name: ``full`` here, ``partial``, ``gumbel`` and ``binary`` in
#: :mod:`nasseg.searches.darts.modes` (the package imports it, so all four are always here).
RELAXATIONS: dict[str, type[Relaxation]] = {}

R = TypeVar("R", bound=type[Relaxation])


def register_relaxation(name: str) -> Callable[[R], R]:
    """Class decorator: make a :class:`Relaxation` subclass known as mode ``name``."""

    def decorate(cls: R) -> R:
        if not (isinstance(cls, type) and issubclass(cls, Relaxation)):
            raise TypeError(f"@register_relaxation({name!r}) needs a Relaxation subclass, "
                            f"got {cls!r}")
        if name in RELAXATIONS and RELAXATIONS[name] is not cls:
            raise ValueError(f"relaxation {name!r} is already registered by "
                             f"{RELAXATIONS[name]!r}")
        RELAXATIONS[name] = cls
        cls.name = name
        return cls

    return decorate


def get_relaxation(name: str) -> type[Relaxation]:
    """The relaxation registered as ``name``; a ValueError names the registered ones."""
    try:
        return RELAXATIONS[name]
    except KeyError:
        raise ValueError(f"mode must be one of {tuple(RELAXATIONS)}, got {name!r}") from None


@register_relaxation("full")
class FullMixing(Relaxation):
    """DARTS: every candidate runs, mixed by softmax(alpha); every input of a connection is
    weighted by its sigmoid(beta) gate."""

    title = "softmax mixing (DARTS)"


def relax(model: nn.Module, arch: ArchParameters | None = None, mode: str = "full",
          partial_k: int = 4, gates: str = "sigmoid") -> ArchParameters:
    """Replace the choices of ``model`` in place by those of the relaxation registered as
    ``mode``; return the architecture parameters.

    ``partial_k``: the ``partial`` mode's channel groups; ``gates``: one of
    :data:`GATE_FORMS`. An op choice's candidates take as many
    tensors as the space's ``ChoiceInfo.inputs`` says (1 in a model that is not a nasseg space).
    """
    relaxation_type = get_relaxation(mode)
    arch = arch if arch is not None else ArchParameters()
    if gates not in GATE_FORMS:
        raise ValueError(f"gates must be one of {GATE_FORMS}, got {gates!r}")
    arch.partial_k = partial_k
    arch.gate_form = gates
    relaxation = arch.relaxation = relaxation_type(arch)
    infos = getattr(model, "choice_infos", {})
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LayerChoice):
                arch.add_op(child.label, child.names)
                candidates = nn.ModuleDict({str(n): child[n] for n in child.names})
                inputs = getattr(infos.get(child.label), "inputs", 1)
                setattr(parent, name, relaxation.op_choice(child.label, candidates, inputs))
            elif isinstance(child, InputChoice):
                arch.add_connection(child.label, child.n_candidates)
                setattr(parent, name, relaxation.connection_choice(child.label, parent))
    if relaxation.samples:
        model.register_forward_pre_hook(arch._resample_hook)
    return arch
