"""Continuous relaxation of a space: op choices become softmax mixtures, connections sigmoid gates.

:func:`relax` swaps every NNI ``LayerChoice`` for a :class:`MixedOp` and every ``InputChoice``
for a :class:`GatedSum`, in place. The architecture parameters live in one
:class:`ArchParameters` module, outside the network's own parameters, so the weight optimizer
never sees them and the architecture step can ask for their gradients alone.

``relax(model, mode=...)`` picks a memory-saving variant instead of full mixing: partial
channels (PC-DARTS), Gumbel sampling (GDAS) or binary gates (ProxylessNAS); see
:mod:`nasseg.searches.darts.modes`.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from nni.nas.nn.pytorch import InputChoice, LayerChoice
from torch import nn

__all__ = ["ArchParameters", "MixedOp", "GatedSum", "relax"]


class ArchParameters(nn.Module):
    """Alphas (one vector per op-choice label) and betas (one per connection-choice label).

    Choices that share a label share their parameters (and, in the sampling modes, one sample
    per forward). ``mode``, ``partial_k`` and ``temperature`` (the Gumbel temperature, set by
    the engine every epoch) are plain attributes, not state: the run's settings own them.
    """

    def __init__(self, mode: str = "full", partial_k: int = 4) -> None:
        super().__init__()
        self.alpha = nn.ParameterDict()
        self.beta = nn.ParameterDict()
        self.op_candidates: dict[str, list[str]] = {}
        self.connection_sizes: dict[str, int] = {}
        self.mode = mode
        self.partial_k = partial_k
        self.temperature = 1.0
        #: partial mode: op choices that change the channel count and stay fully mixed
        self.fully_mixed: list[str] = []
        self._op_samples: dict[str, Any] = {}
        self._gate_samples: dict[str, Any] = {}

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
        """softmax(alpha) of an op choice."""
        return torch.softmax(self.alpha[self._key(label)], dim=0)

    def gate_probs(self, label: str) -> torch.Tensor:
        """sigmoid(beta) of a connection choice."""
        return torch.sigmoid(self.beta[self._key(label)])

    # ----- sampling modes (gumbel, binary) -----------------------------------------------------
    def resample(self) -> None:
        """Forget this forward's samples; the next forward draws new ones (a forward pre-hook
        of the relaxed model calls this)."""
        self._op_samples.clear()
        self._gate_samples.clear()

    def _resample_hook(self, module: nn.Module, args: Any) -> None:
        self.resample()

    def op_sample(self, label: str) -> Any:
        """This forward's draw of op choice ``label`` (a ``modes.OpSample``)."""
        if label not in self._op_samples:
            from nasseg.searches.darts.modes import sample_op
            self._op_samples[label] = sample_op(self, label)
        return self._op_samples[label]

    def gate_sample(self, label: str) -> Any:
        """This forward's draw of connection ``label`` (a ``modes.GateSample``)."""
        if label not in self._gate_samples:
            from nasseg.searches.darts.modes import sample_gates
            self._gate_samples[label] = sample_gates(self, label)
        return self._gate_samples[label]

    def binarization_loss(self) -> torch.Tensor:
        """J = -mean((sigmoid(beta) - 0.5)^2): pushes every gate towards 0 or 1."""
        if not len(self.beta):
            return torch.zeros(())
        gates = torch.cat([torch.sigmoid(b) for b in self.beta.values()])
        return -((gates - 0.5) ** 2).mean()

    def scores(self) -> dict[str, Any]:
        """JSON-ready op probabilities and gate probabilities, per label."""
        with torch.no_grad():
            return {
                "op": {label: {"candidates": names, "probs": self.op_probs(label).tolist()}
                       for label, names in self.op_candidates.items()},
                "connection": {label: {"probs": self.gate_probs(label).tolist()}
                               for label in self.connection_sizes},
            }

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
    """softmax(alpha)-weighted sum of every candidate's output (full DARTS mixing)."""

    def __init__(self, label: str, candidates: nn.ModuleDict, arch: ArchParameters) -> None:
        super().__init__()
        self.label = label
        self.candidates = candidates
        self._arch = [arch]  # a list keeps the arch module out of this module's parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self._arch[0].op_probs(self.label)
        out = None
        for w, op in zip(weights, self.candidates.values()):
            out = _accumulate(out, w, op(x))
        return out


class GatedSum(nn.Module):
    """sigmoid(beta)-gated sum of the candidate inputs (independent gates, any subset)."""

    def __init__(self, label: str, arch: ArchParameters) -> None:
        super().__init__()
        self.label = label
        self._arch = [arch]

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        gates = self._arch[0].gate_probs(self.label)
        out = None
        for g, x in zip(gates, inputs):
            out = _accumulate(out, g, x)
        return out


def relax(model: nn.Module, arch: ArchParameters | None = None, mode: str = "full",
          partial_k: int = 4) -> ArchParameters:
    """Replace the choices of ``model`` in place by their relaxations; return the arch params.

    ``mode``: ``full`` (softmax mixing, sigmoid gates), ``partial`` (PC-DARTS partial channels
    with ``partial_k`` groups, edge-normalised gates), ``gumbel`` (GDAS hard Gumbel sampling)
    or ``binary`` (ProxylessNAS binary gates); see :mod:`nasseg.searches.darts.modes`.
    """
    from nasseg.searches.darts import modes as m

    if mode not in m.MODES:
        raise ValueError(f"unknown search mode {mode!r}; choose one of {m.MODES}")
    if mode == "partial" and (not isinstance(partial_k, int) or partial_k < 1):
        raise ValueError(f"partial_k must be a positive integer, got {partial_k!r}")
    arch = arch if arch is not None else ArchParameters(mode, partial_k)
    arch.mode, arch.partial_k = mode, partial_k
    sampling = mode in m.SAMPLING_MODES
    shrunk: set[int] = set()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LayerChoice):
                arch.add_op(child.label, child.names)
                mods = nn.ModuleDict({str(n): child[n] for n in child.names})
                if mode == "partial":
                    channels = m.partial_plan(child.label, mods, partial_k)
                    if channels is None:
                        arch.fully_mixed.append(child.label)
                        new: nn.Module = MixedOp(child.label, mods, arch)
                    else:
                        for op in mods.values():
                            m.shrink_channels(op, partial_k, shrunk)
                        new = m.PartialMixedOp(child.label, mods, arch, channels, partial_k)
                elif sampling:
                    new = m.SampledMixedOp(child.label, mods, arch)
                else:
                    new = MixedOp(child.label, mods, arch)
                setattr(parent, name, new)
            elif isinstance(child, InputChoice):
                arch.add_connection(child.label, child.n_candidates)
                gate = {"full": GatedSum, "partial": m.NormalizedGatedSum}.get(
                    mode, m.SampledGatedSum)
                setattr(parent, name, gate(child.label, arch))
                if sampling and type(parent) is m.Connection:
                    parent.__class__ = m.SampledConnection  # aligns only the inputs kept on
    if sampling:
        model.register_forward_pre_hook(arch._resample_hook)
    return arch
