"""Memory-saving relaxations: partial channels (PC-DARTS), Gumbel (GDAS) and binary gates
(ProxylessNAS), beside the full softmax mixing of :mod:`nasseg.searches.darts.relaxation`.

Each mode is a :class:`~nasseg.searches.darts.relaxation.Relaxation` registered by name
(:class:`PartialChannels`, :class:`GumbelSampling`, :class:`BinaryGates` here); pick one per
search with ``SearchConfig.mode`` / ``nasseg search --mode``, and :func:`relax` builds its
modules. What each mode does to the two kinds of choices:

``full``
    op choice: ``sum_i softmax(alpha)_i * op_i(x)``; connection: ``sum_i sigmoid(beta_i) x_i``.

``partial`` (Xu et al., PC-DARTS, ICLR 2020)
    op choice: only the first ``C/K`` channels go through the candidates (mixed as in ``full``),
    the other channels bypass them, then a channel shuffle with ``K`` groups, exactly as
    PC-DARTS' ``MixedOp``. The candidates the space built at ``C`` channels are *shrunk* to
    ``C/K`` at relax time (every conv's in/out channels and every norm's features divided by
    ``K``; weights sliced and rescaled to keep the fan-in-scaled init), see
    :func:`shrink_channels`. PC-DARTS defines only ``C -> C`` choices; nasseg also runs
    choices that change the channel count by a whole factor (UXNet's reduction and expansion
    ops in T(), ``C -> 2C`` or ``4C -> C``) on ``1/K`` of the channels: the candidates map
    ``C_in/K`` to ``C_out/K`` channels and each bypassed chunk is brought to ``C_out/K``
    channels without parameters (channels repeated when there are more, neighbours averaged
    when fewer). Choices that fit neither stay fully mixed and are listed in
    ``ArchParameters.fully_mixed``. If the candidates change the spatial size, the bypass is
    max-pooled (PC-DARTS' reduction cells) or nearest-upsampled to match. A candidate with a
    layer this module cannot shrink raises :class:`PartialChannelError`.
    An op choice over several tensors (``ChoiceInfo.inputs > 1``) has no one channel axis to
    split: it stays fully mixed and is listed in ``fully_mixed`` too.
    connection: edge normalisation. PC-DARTS weighs a node's input edges by ``softmax(beta)``
    to damp the noise of the channel sampling; for nasseg's independent sigmoid gates the
    analogue is the gate-normalised sum ``sum_i g_i x_i / sum_i g_i`` (a convex combination,
    so the gates compete like a softmax while derive keeps its rule ``g >= tau``). A
    one-candidate connection is then invariant to its gate (its beta does not move; derive
    always keeps a node's only input anyway).

``gumbel`` (Dong & Yang, GDAS, CVPR 2019)
    op choice: hard Gumbel-softmax: ``h = softmax((alpha + G) / t)``, the argmax candidate is
    the only one evaluated, its output scaled by the straight-through weight
    ``1 + h_k - stopgrad(h_k)`` (value 1, gradient of ``h_k``). The temperature ``t`` anneals
    linearly (GDAS) from ``gumbel_temperature[0]`` to ``gumbel_temperature[1]`` over the
    searching epochs, set by the engine from the epoch index.
    connection: binary concrete (Gumbel-sigmoid) gates: ``s_i = sigmoid((beta_i + L_i) / t)``
    with logistic noise ``L_i``, hard gate ``s_i > 0.5``, straight-through to ``s_i``. Inputs
    whose gate samples 0 are never aligned (their T() op is not run); at least one input stays
    (the highest ``s_i``).

``binary`` (Cai et al., ProxylessNAS, ICLR 2019)
    op choice: binary gates. Weight step: one path sampled from ``softmax(alpha)``, the only
    one run. Architecture step: the paper's two-path estimate: two distinct candidates sampled
    from ``softmax(alpha)``, one of them active (sampled from the softmax over the two alphas),
    and ``dL/dg_j = <dL/dout, o_j>`` for the two paths, written as a straight-through weight
    ``onehot_j + p'_j - stopgrad(p'_j)``. The inactive path has weight 0 in value, so no
    gradient flows through it to its input or weights: it runs without autograd and holds
    only its output; the active path alone holds activations, as in the weight step.
    connection: Bernoulli gates ``~ sigmoid(beta)`` with a straight-through gradient to
    ``sigmoid(beta)``; skipped inputs are not aligned; at least one stays (sampled by gate).

In ``gumbel`` and ``binary`` modes the gradient of a gate whose input was skipped is not
available (its input was never computed), so a gate learns from the steps in which it was on;
this is the price of not computing the input, and the same trade as in the op choices.

The same label samples one value per forward: the relaxed model's forward pre-hook calls
:meth:`ArchParameters.resample`, and choices sharing a label read one cached sample. Random
numbers come from torch's global generator, which the engine checkpoints, so a resumed search
draws the same samples. In evaluation mode (validation during the search) sampled modes run the
most likely architecture: the argmax op and the gates with ``sigmoid(beta) >= 0.5`` (at least
the best one).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nasseg.searches.darts.relaxation import (ArchParameters, GatedSum, Gates, MixedOp,
                                              Relaxation, _accumulate, register_relaxation)
from nasseg.space.base import Connection

__all__ = ["PartialChannels", "SamplingRelaxation", "GumbelSampling", "BinaryGates",
           "PartialChannelError", "PartialMixedOp", "SampledMixedOp", "SampledConnection",
           "shrink_channels", "channel_signature", "gumbel_temperature", "OpSample"]


class PartialChannelError(ValueError):
    """A candidate of an op choice cannot run on ``C/K`` channels in partial mode."""


# ----- samples ------------------------------------------------------------------------------
@dataclass
class OpSample:
    """One draw of an op choice: the candidates to run and their (straight-through) weights.

    ``weights`` is None when no gradient reaches the architecture (weight step, no grad mode):
    then only ``paths[0]`` runs, unscaled. ``active`` is the position in ``paths`` of the path
    whose output is the op's value; the others (ProxylessNAS' second path, weight 0 in value)
    are run only for their gate's gradient ``<dL/dout, o_j>``.
    """

    paths: list[int]
    weights: list[torch.Tensor] | None
    active: int = 0


def _straight_through(value: float, soft: torch.Tensor) -> torch.Tensor:
    """``value`` exactly, with the gradient of ``soft`` (``value + soft - stopgrad(soft)``)."""
    return value + (soft - soft.detach())


def _needs_grad(param: torch.Tensor) -> bool:
    return param.requires_grad and torch.is_grad_enabled()


def best_gates(arch: ArchParameters, label: str) -> list[int]:
    """The most likely gate setting: ``sigmoid(beta) >= 0.5``, at least the best input."""
    probs = arch.gate_probs(label).detach()
    on = [i for i, p in enumerate(probs.tolist()) if p >= 0.5]
    return on or [int(probs.argmax())]


# ----- gumbel temperature -------------------------------------------------------------------
def gumbel_temperature(epoch: int, epochs: int, warmup_epochs: int,
                       start: float, end: float) -> float:
    """GDAS' linear annealing from ``start`` to ``end`` over the searching epochs.

    Warm-up epochs use ``start``; the first searching epoch ``start``, the last ``end``. A pure
    function of the epoch index, so a resumed search uses the same temperatures.
    """
    span = epochs - warmup_epochs - 1
    if span <= 0:
        return float(start if epoch < warmup_epochs else end)
    t = min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
    return float(start + (end - start) * t)


# ----- partial channels: shrinking candidates -----------------------------------------------
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
          nn.InstanceNorm3d, nn.SyncBatchNorm)


def _has_own_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(
        b is not None for b in module._buffers.values())


def channel_signature(module: nn.Module) -> tuple[int, int] | None:
    """(input channels, output channels) of an op built from convs and norms, read from its
    first and last channel-bearing layers in registration order; None when it has none
    (pooling, identity: any width). An op that computes with weights it does not own (a tied
    decoder running another op's convolutions) states its own as ``op.partial_channels = (in,
    out)``. Raises :class:`PartialChannelError` for a layer with parameters or buffers that is
    not a conv, transposed conv or norm."""
    declared = getattr(module, "partial_channels", None)
    if declared is not None:
        return int(declared[0]), int(declared[1])
    first: int | None = None
    last: int | None = None
    for name, m in module.named_modules():
        if isinstance(m, _CONVS + _CONV_TS):
            cin, cout = m.in_channels, m.out_channels
        elif isinstance(m, _NORMS):
            cin = cout = m.num_features
        elif isinstance(m, nn.GroupNorm):
            cin = cout = m.num_channels
        elif _has_own_state(m):
            raise PartialChannelError(
                f"partial channels cannot shrink layer {name or '<op>'!r} "
                f"({type(m).__name__}): only convolutions, transposed convolutions, batch/"
                "instance/group norms and parameter-free layers are supported")
        else:
            continue
        first = cin if first is None else first
        last = cout
    return None if first is None else (first, last)


def _slice_param(module: nn.Module, name: str, index: tuple[slice, ...],
                 scale: float = 1.0) -> None:
    param = getattr(module, name)
    if param is None:
        return
    with torch.no_grad():
        data = param.data[index].clone() * scale if scale != 1.0 else param.data[index].clone()
    if isinstance(param, nn.Parameter):
        setattr(module, name, nn.Parameter(data, requires_grad=param.requires_grad))
    else:
        setattr(module, name, data)


def shrink_channels(module: nn.Module, k: int, _done: set[int] | None = None) -> nn.Module:
    """Divide every channel count of ``module`` by ``k``, in place; return it.

    Convolutions keep their first ``out/k`` filters over their first ``in/k`` input channels
    (weights rescaled by ``sqrt(fan_in / new fan_in)``, so a fan-in-scaled init keeps its
    distribution); depthwise convs (``groups == in_channels``) keep ``groups == in/k``; norms
    keep their first ``features/k`` affine parameters and running statistics. A channel count
    not divisible by ``k``, grouped convs other than depthwise, and layers other than convs,
    norms and parameter-free layers raise :class:`PartialChannelError`.
    """
    done = set() if _done is None else _done
    for name, m in module.named_modules():
        if id(m) in done:
            continue
        done.add(id(m))
        where = f"layer {name or '<op>'!r} ({type(m).__name__})"
        if isinstance(m, _CONVS + _CONV_TS):
            cin, cout, g = m.in_channels, m.out_channels, m.groups
            if cin % k or cout % k:
                raise PartialChannelError(f"partial channels: {where} has {cin} -> {cout} "
                                          f"channels, not divisible by K={k}")
            depthwise = g > 1 and g == cin == cout
            if g != 1 and not depthwise:
                raise PartialChannelError(f"partial channels: {where} has groups={g}; only "
                                          "plain and depthwise convolutions can be shrunk")
            new_in, new_out = cin // k, cout // k
            if depthwise:  # weight (C, 1, *kernel) for conv and transposed conv alike
                index, scale = (slice(0, new_in), slice(0, 1)), 1.0
            elif isinstance(m, _CONV_TS):  # weight (in, out, *kernel)
                index, scale = (slice(0, new_in), slice(0, new_out)), math.sqrt(k)
            else:  # weight (out, in, *kernel)
                index, scale = (slice(0, new_out), slice(0, new_in)), math.sqrt(k)
            _slice_param(m, "weight", index, scale)
            _slice_param(m, "bias", (slice(0, new_out),))
            m.in_channels, m.out_channels = new_in, new_out
            if depthwise:
                m.groups = new_in
        elif isinstance(m, _NORMS):
            if m.num_features % k:
                raise PartialChannelError(f"partial channels: {where} has {m.num_features} "
                                          f"features, not divisible by K={k}")
            n = m.num_features // k
            for p in ("weight", "bias", "running_mean", "running_var"):
                _slice_param(m, p, (slice(0, n),))
            m.num_features = n
        elif isinstance(m, nn.GroupNorm):
            c, groups = m.num_channels, m.num_groups
            if c % k:
                raise PartialChannelError(f"partial channels: {where} has {c} channels, not "
                                          f"divisible by K={k}")
            if groups % k == 0:
                m.num_groups = groups // k
            elif (c // k) % groups:
                raise PartialChannelError(f"partial channels: {where} has {groups} groups that "
                                          f"fit neither {c} / {k} channels nor {k}")
            for p in ("weight", "bias"):
                _slice_param(m, p, (slice(0, c // k),))
            m.num_channels = c // k
        elif _has_own_state(m):
            raise PartialChannelError(f"partial channels cannot shrink {where}")
    return module


def partial_plan(label: str, candidates: nn.ModuleDict, k: int) -> tuple[int, int] | None:
    """``(C_in, C_out)`` if op choice ``label`` can run on ``1/k`` of its channels: every
    candidate maps the same ``C_in`` to the same ``C_out`` (or is channel-free), both divide by
    ``k``, and one divides the other (the bypass repeats or averages channels). None if not
    (the choice then stays fully mixed)."""
    sigs: dict[str, tuple[int, int] | None] = {}
    for name, op in candidates.items():
        try:
            sigs[name] = channel_signature(op)
        except PartialChannelError as exc:
            raise PartialChannelError(f"op choice {label!r}, candidate {name!r}: {exc}; "
                                      "use --mode full, gumbel or binary for this space"
                                      ) from None
    known = {s for s in sigs.values() if s is not None}
    if len(known) != 1:
        return None
    cin, cout = next(iter(known))
    if cin == cout and cin % k:
        raise PartialChannelError(f"op choice {label!r}: {cin} channels are not divisible by "
                                  f"K={k}; pick a --partial-k that divides them")
    if cin % k or cout % k or max(cin, cout) % min(cin, cout):
        return None
    if any(s is None for s in sigs.values()) and cin != cout:
        return None  # a channel-free candidate cannot change the channel count
    return cin, cout


# ----- relaxed modules ----------------------------------------------------------------------
def _resize_spatial(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    if all(s <= t for s, t in zip(size, x.shape[2:])):
        pool = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}
        return pool[x.dim() - 2](x, tuple(size))
    return F.interpolate(x, size=tuple(size), mode="nearest")


def _resize_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Each channel repeated (more channels) or groups of neighbours averaged (fewer)."""
    c = x.shape[1]
    if c == channels:
        return x
    if channels > c:
        return x.repeat_interleave(channels // c, dim=1)
    return x.unflatten(1, (channels, c // channels)).mean(2)


def _bypass(x: torch.Tensor, channels: int, size: Sequence[int]) -> torch.Tensor:
    """A bypassed chunk brought to the mixed part's channels and size, without parameters
    (the smaller of the two resizes first)."""
    if channels < x.shape[1]:
        return _resize_spatial(_resize_channels(x, channels), size)
    return _resize_channels(_resize_spatial(x, size), channels)


class PartialMixedOp(MixedOp):
    """PC-DARTS: the candidates (shrunk to ``1/K`` of their channels) mix the first ``C_in/K``
    input channels; the rest bypass them; a channel shuffle with ``K`` groups interleaves the
    two. A choice that changes the channel count (``C_out = r C_in`` or ``C_in = r C_out``)
    brings each bypassed chunk to ``C_out/K`` channels by repeating or averaging channels."""

    def __init__(self, label: str, candidates: nn.ModuleDict, arch: ArchParameters,
                 channels: tuple[int, int], k: int) -> None:
        super().__init__(label, candidates, arch)
        (self.cin, self.cout), self.k = channels, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.k
        if x.shape[1] != self.cin:
            raise RuntimeError(f"op choice {self.label!r} (partial channels) expects "
                               f"{self.cin} channels, got {x.shape[1]}")
        part_in, part_out = self.cin // k, self.cout // k
        weights = self._arch[0].op_probs(self.label)
        out = None
        # a copy of the slice: a view would keep all C channels of x alive for backward
        xs = x[:, :part_in].contiguous()
        for w, op in zip(weights, self.candidates.values()):
            out = _accumulate(out, w, op(xs))
        if out.shape[1] != part_out:
            raise PartialChannelError(
                f"op choice {self.label!r}: a shrunk candidate gave {out.shape[1]} channels "
                f"instead of {part_out}; it cannot run on 1/K of the channels")
        size = out.shape[2:]
        # Shuffled channel j*K + g holds group g's channel j; group 0 is the mixed part, groups
        # 1..K-1 the bypassed chunks: one stack and a view, one copy (PC-DARTS: cat + shuffle).
        groups = [out] + [_bypass(x[:, g * part_in:(g + 1) * part_in], part_out, size
                                  ).to(out.dtype) for g in range(1, k)]
        return torch.stack(groups, dim=2).flatten(1, 2)


class SampledMixedOp(MixedOp):
    """GDAS / ProxylessNAS: run only the sampled candidate(s) (the argmax one in eval mode)."""

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        arch = self._arch[0]
        ops = list(self.candidates.values())
        if not self.training:
            return ops[int(arch.alpha[arch._key(self.label)].detach().argmax())](*inputs)
        sample = arch.op_sample(self.label)
        if sample.weights is None:
            return ops[sample.paths[0]](*inputs)
        out = None
        # The active path last: the others' temporaries are freed before its activations pile up.
        order = sorted(range(len(sample.paths)), key=lambda j: j == sample.active)
        for j in order:
            w, op = sample.weights[j], ops[sample.paths[j]]
            if j == sample.active:
                y = op(*inputs)
            else:
                # Weight 0 in value: no gradient reaches the inputs or the op's weights through
                # this path, so it runs without autograd and holds only its output (its gate's).
                with torch.no_grad():
                    y = op(*inputs)
            out = _accumulate(out, w, y)
        return out


class SampledConnection(Connection):
    """A nasseg :class:`Connection` that aligns only the inputs whose gate is on."""

    def forward(self, candidates: Sequence[torch.Tensor | None],
                size: Sequence[int] | None = None) -> torch.Tensor | None:
        if not isinstance(self.choice, GatedSum):
            return super().forward(candidates, size)
        on = set(self.choice.gates().on)
        aligned: list[torch.Tensor | None] = [None] * len(candidates)
        for i in self.kept:
            if i not in on:
                continue
            x = candidates[i]
            if x is None:
                raise RuntimeError(f"connection {self.label!r}: kept input {i} was not computed")
            aligned[i] = self.align[str(i)](x, size) if self.align else x
        return self.choice(aligned)


# ----- the relaxations ------------------------------------------------------------------------
@register_relaxation("partial")
class PartialChannels(Relaxation):
    """PC-DARTS: op choices run on ``1/K`` of the channels (``arch.partial_k``), connections
    are edge-normalised gated sums."""

    title = "partial channels (PC-DARTS)"

    def __init__(self, arch: ArchParameters) -> None:
        super().__init__(arch)
        k = arch.partial_k
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"partial_k must be a positive integer, got {k!r}")
        self._shrunk: set[int] = set()  # modules already shrunk (candidates may share them)

    def op_choice(self, label: str, candidates: nn.ModuleDict, inputs: int) -> nn.Module:
        k = self.arch.partial_k
        # Several input tensors have no one channel axis to split: such a choice stays mixed.
        channels = partial_plan(label, candidates, k) if inputs == 1 else None
        if channels is None:
            self.arch.fully_mixed.append(label)
            return super().op_choice(label, candidates, inputs)
        for op in candidates.values():
            shrink_channels(op, k, self._shrunk)
        return PartialMixedOp(label, candidates, self.arch, channels, k)

    def gates(self, label: str, training: bool) -> Gates:
        """Edge normalisation: the sigmoid gates, the sum divided by their total."""
        gates = super().gates(label, training)
        gates.divisor = gates.weights.sum()
        return gates

    def cost_fields(self) -> dict[str, int]:
        return {"partial_k": self.arch.partial_k}


class SamplingRelaxation(Relaxation, ABC):
    """A relaxation that runs one sampled sub-network per forward (the most likely one in eval
    mode): only the sampled candidates of an op choice, only the inputs gated on. Subclasses
    say how op choices are drawn (:meth:`sample_op`) and how gates are (:meth:`_draw_gates`)."""

    samples = True
    second_order = False  # each loss of the unrolled gradient would draw another network

    def op_choice(self, label: str, candidates: nn.ModuleDict, inputs: int) -> nn.Module:
        return SampledMixedOp(label, candidates, self.arch)

    def connection_choice(self, label: str, owner: nn.Module) -> nn.Module:
        """The gated sum; a nasseg :class:`Connection` owner becomes a
        :class:`SampledConnection`, which aligns only the inputs gated on."""
        if type(owner) is Connection:
            owner.__class__ = SampledConnection
        return super().connection_choice(label, owner)

    def gates(self, label: str, training: bool) -> Gates:
        if not training:
            return Gates(best_gates(self.arch, label), None)
        return self.arch.gate_sample(label)

    def sample_gates(self, label: str) -> Gates:
        """The inputs whose gate is drawn on (at least one), straight-through weights 1."""
        beta = self.arch.gate_logits(label)
        soft, hard = self._draw_gates(beta)
        on = [i for i, h in enumerate(hard) if h]
        return Gates(on, {i: _straight_through(1.0, soft[i]) for i in on}
                     if _needs_grad(beta) else None)

    @abstractmethod
    def _draw_gates(self, beta: torch.Tensor) -> tuple[torch.Tensor, list[bool]]:
        """The soft gates (for the gradient) and the hard ones (at least one on) of ``beta``."""


@register_relaxation("gumbel")
class GumbelSampling(SamplingRelaxation):
    """GDAS: hard Gumbel-softmax op choices, binary-concrete gates, at ``arch.temperature``."""

    title = "hard Gumbel sampling (GDAS)"

    def sample_op(self, label: str) -> OpSample:
        alpha = self.arch.alpha[self.arch._key(label)]
        for _ in range(100):  # GDAS redraws the rare non-finite sample
            u = torch.rand_like(alpha).clamp_(1e-20, 1.0)
            gumbel = -torch.log(-torch.log(u))
            soft = torch.softmax((alpha + gumbel) / self.arch.temperature, dim=0)
            if torch.isfinite(soft).all():
                break
        k = int(soft.detach().argmax())
        return OpSample([k], [_straight_through(1.0, soft[k])] if _needs_grad(alpha) else None)

    def _draw_gates(self, beta: torch.Tensor) -> tuple[torch.Tensor, list[bool]]:
        u = torch.rand_like(beta).clamp_(1e-6, 1 - 1e-6)
        soft = torch.sigmoid((beta + torch.log(u) - torch.log1p(-u)) / self.arch.temperature)
        hard = (soft.detach() > 0.5).tolist()
        if not any(hard):
            hard[int(soft.detach().argmax())] = True
        return soft, hard


@register_relaxation("binary")
class BinaryGates(SamplingRelaxation):
    """ProxylessNAS: one sampled path per weight step, two per architecture step; Bernoulli
    connection gates."""

    title = "binary gates (ProxylessNAS)"

    def sample_op(self, label: str) -> OpSample:
        alpha = self.arch.alpha[self.arch._key(label)]
        grad = _needs_grad(alpha)
        probs = torch.softmax(alpha.detach(), dim=0)
        if not grad or alpha.numel() == 1:
            k = int(torch.multinomial(probs, 1))
            return OpSample([k], [_straight_through(1.0, torch.softmax(alpha, 0)[k])]
                            if grad else None)
        two = torch.multinomial(probs, 2, replacement=False)
        p2 = torch.softmax(alpha[two], dim=0)
        active = int(torch.multinomial(p2.detach(), 1))
        paths = [int(i) for i in two.tolist()]
        return OpSample(paths, [_straight_through(float(j == active), p2[j]) for j in range(2)],
                        active)

    def _draw_gates(self, beta: torch.Tensor) -> tuple[torch.Tensor, list[bool]]:
        soft = torch.sigmoid(beta)
        probs = soft.detach()
        hard = (torch.rand_like(probs) < probs).tolist()
        if not any(hard):
            hard[int(torch.multinomial(probs, 1))] = True
        return soft, hard
