"""Settings of a differentiable search (DARTS defaults for the architecture optimizer)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from nasseg.runtime.settings import RunSettings
from nasseg.searches.darts.budget import FITS, check_budget
from nasseg.searches.darts.relaxation import GATE_FORMS, RELAXATIONS, get_relaxation
from nasseg.searches.darts.selection import DEFAULT_TOLERANCE

__all__ = ["SearchConfig", "DARTS_ARCH_LR", "ARCH_TRAVEL", "MAX_AUTO_ARCH_LR", "SELECTIONS",
           "OP_SELECTIONS", "SEARCH_STEPS_PER_EPOCH", "LR_WARMUP_EPOCHS"]

#: DARTS's architecture learning rate (Liu et al. 2019), used as is for long searches.
DARTS_ARCH_LR = 3e-4
#: How far (in logits) an architecture parameter can move over a search with the default lr.
ARCH_TRAVEL = 6.0
#: The default lr never exceeds this, however short the search (a few steps would ask for more).
MAX_AUTO_ARCH_LR = 0.05
#: Weight steps (and as many architecture steps) of a search epoch, whatever the data set's size:
#: two passes of demo3d's weight half (16 cases, batch 2). In the README's held-out benchmark 16
#: trained reliable supernets at every seed where 8 (one pass) failed at one seed of three, for
#: 1.5-1.8x the search time.
SEARCH_STEPS_PER_EPOCH = 16
#: Epochs over which a search's weight lr climbs to its peak (see ``SearchConfig``).
LR_WARMUP_EPOCHS = 4
#: How connections are chosen after the search: measured removal, or gate thresholds.
SELECTIONS = ("removal", "gates")
#: How ops are chosen after the search: the largest alpha, or measured removal.
OP_SELECTIONS = ("alphas", "removal")
#: Settings renamed since older ``run.json`` files were written: old key -> new key.
_RENAMED = {"tau_gumbel": "gumbel_temperature"}


@dataclass
class SearchConfig(RunSettings):
    """Everything that shapes a search, saved in ``run.json`` so a resume continues the same run.

    The shared settings (batch size for both halves, validation share, seed, determinism,
    device, loader workers, patch size, AMP (first order only here), channels-last, compile)
    come from :class:`~nasseg.runtime.settings.RunSettings`; the
    validation share is held out, the rest halved into a weight half and an architecture half.

    Args:
        epochs: total epochs, warm-up included.
        warmup_epochs: epochs that train weights only, with the architecture frozen.
        order: 1 (first-order DARTS) or 2 (unrolled, finite-difference Hessian-vector product).
        weight_lr, weight_decay: AdamW for the network weights.
        lr_warmup_epochs: the weight lr climbs linearly to ``weight_lr`` over this many first
            epochs (at most a fifth of the search; 0: from the first step). At full rate from
            the start, one supernet init of sixteen on demo3d lost a class it had begun to
            learn (smooth blobs, Dice 0.35 -> 0.00 by epoch 3, for good); with 4 epochs it
            learned it (0.87 by epoch 12), and none of four others learned worse.
        arch_lr, arch_betas, arch_weight_decay: Adam for alphas and betas (DARTS: 3e-4,
            (0.5, 0.999), 1e-3). ``arch_lr=None`` (the default) takes DARTS's 3e-4 for a search
            as long as DARTS's, and more for a short one: ``6 / architecture steps`` within
            [3e-4, 0.05],
            so that a parameter can move about 6 logits over the search (Adam moves it by about
            lr per step; at 3e-4 and ~200 steps a gate could not pass sigmoid(0.06)).
        mode: how choices are relaxed, a name registered in
            :data:`~nasseg.searches.darts.relaxation.RELAXATIONS`: ``full`` (softmax mixing,
            DARTS), ``partial`` (partial channels, PC-DARTS), ``gumbel`` (hard Gumbel sampling,
            GDAS) or ``binary`` (binary gates, ProxylessNAS); see
            :mod:`nasseg.searches.darts.modes`.
        partial_k: ``partial`` mode: 1/K of the channels go through the candidates.
        gumbel_temperature: ``gumbel`` mode: temperature at the first and the last searching
            epoch (linear in between, as in GDAS; default 5 -> 0.5).
        memory_budget: ``auto`` or a size (``20GB``): before the search, probe for the largest
            batch or patch (``fit``) whose steps fit; see :mod:`nasseg.searches.darts.budget`.
        fit: what the memory budget sizes: ``batch`` or ``patch``.
        gates: how betas become connection gates, one of
            :data:`~nasseg.searches.darts.relaxation.GATE_FORMS` (``sigmoid``, the default, or
            ``centred``).
        select: how connections are chosen after the last epoch, one of :data:`SELECTIONS`:
            ``removal`` (the default) measures what the supernet loses without each input
            (:mod:`nasseg.searches.darts.selection`); ``gates`` thresholds the gates.
        select_tolerance: ``removal``: an input that costs less than this much of the
            space's selection metric (Dice) is switched off.
        select_ops: how ops are chosen after the connections, one of :data:`OP_SELECTIONS`:
            ``alphas`` (the default) takes the largest alpha; ``removal`` the candidate whose
            removal costs the supernet the most Dice (a mode that mixes the candidates only).
        steps_per_epoch: weight steps (and as many architecture steps) per epoch, default
            :data:`SEARCH_STEPS_PER_EPOCH` whatever the data set's size; None: one pass over
            the weight half.
        path_dropout: the probability, reached in the last epoch (linear from 0), that a weight
            step switches off an input of a connection with several
            (:mod:`nasseg.searches.darts.path_dropout`); 0: never.
        extend_unlearned: epochs added, once, when the supernet has not learned a class by the
            last planned epoch (Dice below
            :data:`~nasseg.searches.darts.selection.UNLEARNED_DICE` on the architecture half):
            such a supernet loses nothing without the inputs that class needs, and the
            selection would derive a net too small for it. None (the default): as many epochs
            as were planned, so the search doubles; 0: never. The extension continues the run
            as ``nasseg search --resume --epochs`` would (the cosine schedules stretched to the
            new end, the architecture lr kept) and is another pass through the space's
            training stages, each its share (at least one epoch each); a time budget is never
            extended.
    """

    epochs: int = 20
    warmup_epochs: int = 4
    order: int = 1
    weight_lr: float = 3e-3
    weight_decay: float = 1e-4
    lr_warmup_epochs: int = LR_WARMUP_EPOCHS
    arch_lr: float | None = None
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    mode: str = "full"
    partial_k: int = 4
    gumbel_temperature: tuple[float, float] = (5.0, 0.5)
    memory_budget: str | None = None
    fit: str = "batch"
    gates: str = "sigmoid"
    select: str = "removal"
    select_tolerance: float = DEFAULT_TOLERANCE
    select_ops: str = "alphas"
    steps_per_epoch: int | None = SEARCH_STEPS_PER_EPOCH
    path_dropout: float = 0.0
    extend_unlearned: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.arch_betas = tuple(self.arch_betas)  # JSON gives lists
        if self.order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {self.order}")
        if self.epochs < 1 or not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"need epochs >= 1 and 0 <= warmup_epochs <= epochs, got "
                             f"epochs={self.epochs}, warmup_epochs={self.warmup_epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        relaxation = get_relaxation(self.mode)
        if not isinstance(self.partial_k, int) or self.partial_k < 1:
            raise ValueError(f"partial_k must be a positive integer, got {self.partial_k!r}")
        temps = self.gumbel_temperature = tuple(float(t) for t in self.gumbel_temperature)
        if len(temps) != 2 or not temps[0] >= temps[1] > 0:
            raise ValueError(f"gumbel_temperature must be (start, end) with start >= end > 0, "
                             f"got {temps}")
        if self.order == 2 and not relaxation.second_order:
            deterministic = " or ".join(n for n, r in RELAXATIONS.items() if r.second_order)
            raise ValueError(f"second order needs a deterministic relaxation (mode "
                             f"{deterministic}), not mode {self.mode!r}: each loss of the "
                             "unrolled gradient would sample a different network")
        if self.gates not in GATE_FORMS:
            raise ValueError(f"gates must be one of {GATE_FORMS}, got {self.gates!r}")
        if self.select not in SELECTIONS:
            raise ValueError(f"select must be one of {SELECTIONS}, got {self.select!r}")
        if self.select_ops not in OP_SELECTIONS:
            raise ValueError(f"select_ops must be one of {OP_SELECTIONS}, got "
                             f"{self.select_ops!r}")
        if self.select_ops == "removal" and relaxation.samples:
            raise ValueError(f"op selection by removal needs a mode that mixes the candidates; "
                             f"mode {self.mode!r} runs one at a time")
        if not self.select_tolerance > 0:
            raise ValueError(f"select_tolerance must be positive, got {self.select_tolerance}")
        if not 0 <= self.path_dropout < 1:
            raise ValueError(f"path_dropout must be in [0, 1), got {self.path_dropout}")
        if self.path_dropout and relaxation.samples:
            raise ValueError(f"path dropout needs a mode that mixes every input; mode "
                             f"{self.mode!r} already samples the inputs of each forward")
        if self.lr_warmup_epochs < 0:
            raise ValueError(f"lr_warmup_epochs must be >= 0, got {self.lr_warmup_epochs}")
        if self.extend_unlearned is not None and self.extend_unlearned < 0:
            raise ValueError(f"extend_unlearned must be >= 0 epochs, got {self.extend_unlearned}")
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, got {self.fit!r}")
        if self.memory_budget is not None:
            check_budget(self.memory_budget)
        if self.order == 2 and self.amp:
            raise ValueError("amp supports first order only (the finite-difference Hessian-"
                             "vector product needs full precision)")

    def resolved_arch_lr(self, arch_steps: int) -> float:
        """The architecture learning rate for a search of ``arch_steps`` architecture steps."""
        if self.arch_lr is not None:
            return self.arch_lr
        return min(MAX_AUTO_ARCH_LR, max(DARTS_ARCH_LR, ARCH_TRAVEL / max(1, arch_steps)))

    def extension_epochs(self) -> int:
        """Epochs :attr:`extend_unlearned` would add now (0: the search may not be extended)."""
        if self.time_budget:
            return 0
        return self.epochs if self.extend_unlearned is None else self.extend_unlearned

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SearchConfig":
        """Settings from ``to_dict`` output (older names accepted); unknown keys are an error."""
        values = {_RENAMED.get(k, k): v for k, v in values.items()}
        values.setdefault("lr_warmup_epochs", 0)  # written before the ramp: none
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown search settings: {unknown}")
        return cls(**values)
