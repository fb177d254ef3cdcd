"""Continuous relaxation of a space: op choices become softmax mixtures, connections sigmoid gates.

:func:`relax` swaps every NNI ``LayerChoice`` for a :class:`MixedOp` and every ``InputChoice``
for a :class:`GatedSum`, in place. The architecture parameters live in one
:class:`ArchParameters` module, outside the network's own parameters, so the weight optimizer
never sees them and the architecture step can ask for their gradients alone.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from nni.nas.nn.pytorch import InputChoice, LayerChoice
from torch import nn

__all__ = ["ArchParameters", "MixedOp", "GatedSum", "relax"]


class ArchParameters(nn.Module):
    """Alphas (one vector per op-choice label) and betas (one per connection-choice label).

    Choices that share a label share their parameters.
    """

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.ParameterDict()
        self.beta = nn.ParameterDict()
        self.op_candidates: dict[str, list[str]] = {}
        self.connection_sizes: dict[str, int] = {}

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
            y = w * op(x)
            out = y if out is None else out + y
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
            y = g * x
            out = y if out is None else out + y
        return out


def relax(model: nn.Module, arch: ArchParameters | None = None) -> ArchParameters:
    """Replace the choices of ``model`` in place by their relaxations; return the arch params."""
    arch = arch if arch is not None else ArchParameters()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LayerChoice):
                arch.add_op(child.label, child.names)
                mods = nn.ModuleDict({str(n): child[n] for n in child.names})
                setattr(parent, name, MixedOp(child.label, mods, arch))
            elif isinstance(child, InputChoice):
                arch.add_connection(child.label, child.n_candidates)
                setattr(parent, name, GatedSum(child.label, arch))
    return arch
