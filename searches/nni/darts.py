"""Run NNI 3.0's own one-shot DARTS strategy (``nni.nas.strategy.DARTS``) on a nasseg space.

The bridge drives the strategy's one-shot pieces directly, with no NNI experiment, REST server or
execution engine: ``DARTS.mutate_model`` turns a copy of the space into NNI's supernet,
``DARTS.mutate_evaluator`` wraps a Lightning evaluator (whose loss is the space's own
``compute_loss``) in NNI's ``DartsLightningModule``, ``Lightning.evaluate`` trains it, and the
module's ``export()`` / ``export_probs()`` give the architecture and its weights.

Connection choices. NNI's DARTS relaxes an ``InputChoice`` with ``DifferentiableMixedInput``: a
softmax over the candidates, and ``n_chosen=None`` is turned into ``n_chosen=1``
(``nni/nas/oneshot/pytorch/supermodule/differentiable.py``, ``DifferentiableMixedInput.__init__``),
so the export keeps exactly one input per connection; a one-candidate connection (a U-Net skip)
has a constant weight of 1 and is always kept. ``connections="nni"`` (the default) leaves that
as NNI does it; ``connections="sigmoid"`` replaces it by independent sigmoid gates (any subset
kept, gate >= ``tau``), the relaxation nasseg's own search uses for connections. Op choices always use NNI's ``DifferentiableMixedLayer``
(softmax).

NNI and Lightning are imported inside the functions: importing them costs about 120 MB.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import logging
import time
import warnings
from collections import defaultdict
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch.utils.data import Dataset

__all__ = ["run_nni_darts", "CONNECTION_MODES"]

CONNECTION_MODES = ("nni", "sigmoid")

# Messages NNI and Lightning print on every run that say nothing about this run.
_QUIET_WARNINGS = (
    # NNI's mixed input keeps one input of a connection: documented above and in the result.
    r"Differentiable architecture search does not support choosing multiple inputs",
    # Tiny in-memory tensors: worker processes would only slow the run down.
    r".*does not have many workers",
    # Lightning 2.6 against a newer torch.
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",
)
_QUIET_NNI_LOGS = (
    # DARTS fuses the validation data into the training batches on purpose.
    "Validation dataloaders are missing",
)
_LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")


# ----- data ---------------------------------------------------------------------------------
class _ArrayDataset(Dataset):
    """Cases of a dict of equally long arrays, as batch dicts (``{"image": ..., "label": ...}``)."""

    def __init__(self, arrays: Mapping[str, torch.Tensor], name: str) -> None:
        lengths = {key: len(value) for key, value in arrays.items()}
        if not lengths:
            raise ValueError(f"{name}: no arrays given")
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{name}: arrays of different lengths {lengths}")
        if not next(iter(lengths.values())):
            raise ValueError(f"{name}: no cases")
        self.arrays = dict(arrays)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.arrays.items()}


def _as_dataset(data: Any, name: str) -> Dataset:
    """An ``(images, labels)`` pair, a dict of arrays, or a Dataset yielding batch dicts."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, Mapping):
        return _ArrayDataset({k: torch.as_tensor(v) for k, v in data.items()}, name)
    if isinstance(data, Sequence) and len(data) == 2:
        images = torch.as_tensor(data[0], dtype=torch.float32)
        labels = torch.as_tensor(data[1]).long()
        if images.ndim != labels.ndim + 1:
            raise ValueError(f"{name}: images (N, C, *spatial) and labels (N, *spatial) expected, "
                             f"got {tuple(images.shape)} and {tuple(labels.shape)}")
        return _ArrayDataset({"image": images, "label": labels}, name)
    raise TypeError(f"{name}: give an (images, labels) pair, a dict of arrays or a Dataset, "
                    f"not {type(data).__name__}")


# ----- NNI-dependent classes, built on first use ----------------------------------------------
@functools.lru_cache(maxsize=None)
def _nni_classes() -> dict[str, type]:
    from nni.nas.evaluator.pytorch import LightningModule
    from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

    class SegmentationModule(LightningModule):
        """The evaluator's training recipe: the space's own inputs and loss, Adam on the weights.

        DARTS calls ``training_step`` twice per batch: on the validation half (batch index
        ``2 i``, the architecture step) and on the training half (``2 i + 1``, the weight step).
        """

        def __init__(self, learning_rate: float, weight_decay: float) -> None:
            super().__init__()
            self.learning_rate = learning_rate
            self.weight_decay = weight_decay
            self.history: list[tuple[int, str, float]] = []

        def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            model = self.model
            loss = model.compute_loss(model.forward_batch(batch), batch,
                                      model.training_stages()[-1])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"NNI DARTS: non-finite loss {float(loss)} at epoch "
                                         f"{self.current_epoch}")
            kind = "arch" if batch_idx % 2 == 0 else "train"
            self.history.append((self.current_epoch, kind, float(loss.detach())))
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            # DARTS removes its architecture weights from this optimizer.
            return torch.optim.Adam(self.model.parameters(), lr=self.learning_rate,
                                    weight_decay=self.weight_decay)

    class SigmoidGatedInput(BaseSuperNetModule):
        """Independent sigmoid gates over a connection's candidates (any subset, nasseg's
        relaxation); exports the candidates whose gate is >= ``tau``."""

        _arch_parameter_names = ["_arch_alpha"]

        def __init__(self, n_candidates: int, alpha: torch.nn.Parameter, label: str,
                     tau: float) -> None:
            super().__init__()
            if len(alpha) != n_candidates:
                raise ValueError(f"connection {label!r}: {len(alpha)} weights for "
                                 f"{n_candidates} candidates")
            self.label = label
            self.n_candidates = n_candidates
            self.tau = tau
            self._arch_alpha = alpha

        def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
            return {}

        def export(self, memo: dict[str, Any]) -> dict[str, Any]:
            if self.label in memo:
                return {}
            gates = torch.sigmoid(self._arch_alpha.detach()).cpu().tolist()
            return {self.label: [i for i, g in enumerate(gates) if g >= self.tau]}

        def export_probs(self, memo: dict[str, Any]) -> dict[str, Any]:
            if self.label in memo:
                return {}
            gates = torch.sigmoid(self._arch_alpha.detach()).cpu().tolist()
            return {self.label: dict(enumerate(gates))}

        def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
            gates = torch.sigmoid(self._arch_alpha)
            return torch.stack([g * x for g, x in zip(gates, inputs)]).sum(0)

        def arch_parameters(self) -> Iterator[torch.nn.Parameter]:
            for name, param in self.named_parameters():
                if name in self._arch_parameter_names:
                    yield param

    return {"SegmentationModule": SegmentationModule, "SigmoidGatedInput": SigmoidGatedInput}


def _sigmoid_connection_hook(tau: float):
    """An NNI mutation hook that relaxes the ``InputChoice`` inside each nasseg ``Connection``
    with independent sigmoid gates instead of NNI's softmax."""
    from nni.nas.nn.pytorch import InputChoice
    from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

    from nasseg.space.base import Connection

    classes = _nni_classes()

    def hook(module: torch.nn.Module, name: str, memo: dict[str, Any],
             mutate_kwargs: dict[str, Any]) -> bool | None:
        if isinstance(module, BaseSuperNetModule):
            return True  # put there by this hook below: already a supernet module
        if isinstance(module, Connection) and type(module.choice) is InputChoice:
            choice = module.choice
            alpha = memo[choice.label]
            with torch.no_grad():
                alpha.zero_()  # every gate starts undecided at 0.5, as in nasseg's search
            module.choice = classes["SigmoidGatedInput"](choice.n_candidates, alpha,
                                                         choice.label, tau)
        return None  # the Connection itself stays; NNI goes on into its children

    return hook


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: Sequence[str]) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide NNI's and Lightning's per-run chatter (known messages only; errors still raise)."""
    nni_logger = logging.getLogger("nni.nas.evaluator.pytorch.lightning")
    drop = _DropMessages(_QUIET_NNI_LOGS)
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    nni_logger.addFilter(drop)
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        with warnings.catch_warnings():
            for message in _QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        nni_logger.removeFilter(drop)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _epoch_means(history: Sequence[tuple[int, str, float]], kind: str) -> list[float]:
    per_epoch: dict[int, list[float]] = defaultdict(list)
    for epoch, k, loss in history:
        if k == kind:
            per_epoch[epoch].append(loss)
    return [sum(v) / len(v) for _, v in sorted(per_epoch.items())]


# ----- the public function ------------------------------------------------------------------
def run_nni_darts(space: Any, train_data: Any, val_data: Any, epochs: int = 1, *,
                  batch_size: int = 2, learning_rate: float = 1e-3, weight_decay: float = 0.0,
                  arc_learning_rate: float = 3e-4, warmup_epochs: int = 0,
                  gradient_clip_val: float | None = None, connections: str = "nni",
                  tau: float | None = None, seed: int | None = None,
                  accelerator: str = "auto") -> dict[str, Any]:
    """Search ``space`` with NNI's first-order DARTS; return the exported architecture.

    Args:
        space: a searchable nasseg space (a ``SearchSpace``); it is left untouched (NNI turns a
            copy into its supernet).
        train_data, val_data: the weight-step and architecture-step data: an ``(images,
            labels)`` pair (``(N, C, *spatial)`` float, ``(N, *spatial)`` int64), a dict of
            equally long arrays (the batch keys ``space.forward_batch`` reads), or a Dataset
            yielding such dicts.
        epochs: training epochs; one epoch is one pass over the longer of the two data sets.
        batch_size: cases per batch, for both data sets.
        learning_rate, weight_decay: Adam on the network weights.
        arc_learning_rate: NNI's architecture optimizer (Adam, betas (0.5, 0.999), weight decay
            1e-3) learning rate.
        warmup_epochs: first epochs without architecture steps.
        gradient_clip_val: clip the weight gradients (None: no clipping).
        connections: ``"nni"``: NNI's own mixed input (softmax over the candidates, exactly one
            kept); ``"sigmoid"``: independent sigmoid gates, candidates with gate >= ``tau`` kept.
        tau: the gate threshold of ``"sigmoid"`` (default ``space.default_tau``).
        seed: seeds Python, NumPy and torch (global state), NNI's initial architecture
            weights and the batch order; the network weights are the space's own (copied).
        accelerator: Lightning's accelerator (``"cpu"``, ``"gpu"``, ``"auto"``); one device.

    Returns:
        ``sample``: label -> value for every op and connection choice, plus the space's knob
        values, ready for ``space.freeze``; ``probs``: label -> {candidate: weight} (softmax of
        the op choices; softmax or sigmoid gate of the connections); ``train_loss`` and
        ``arch_loss``: mean loss per epoch of the weight and architecture steps; ``epochs``,
        ``seconds`` (training time), ``connections``, ``strategy``.
    """
    if connections not in CONNECTION_MODES:
        raise ValueError(f"connections must be one of {CONNECTION_MODES}, got {connections!r}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tau = float(getattr(space, "default_tau", 0.5) if tau is None else tau)
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau must be in (0, 1), got {tau}")
    if getattr(space, "is_frozen", False):
        raise ValueError("the space is frozen (a derived network): there is nothing to search")

    from nni.nas.evaluator.pytorch import DataLoader, Lightning, Trainer
    from nni.nas.strategy import DARTS

    from nasseg.runtime.seeding import seed_everything

    searched = {label for label, info in space.choice_infos.items() if info.kind != "knob"}
    if not searched:
        raise ValueError(f"{type(space).__name__} has no op or connection choice to search")
    train_set, val_set = _as_dataset(train_data, "train_data"), _as_dataset(val_data, "val_data")

    generator = None
    if seed is not None:
        seed_everything(seed)
        generator = torch.Generator().manual_seed(seed)

    with _quiet():
        strategy = DARTS(arc_learning_rate=arc_learning_rate, gradient_clip_val=gradient_clip_val,
                         warmup_epochs=warmup_epochs,
                         mutation_hooks=[_sigmoid_connection_hook(tau)]
                         if connections == "sigmoid" else None)
        supernet = strategy.mutate_model(copy.deepcopy(space))

        training = _nni_classes()["SegmentationModule"](learning_rate, weight_decay)
        trainer = Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, num_sanity_val_steps=0)
        evaluator = Lightning(
            training, trainer,
            train_dataloaders=DataLoader(train_set, batch_size=batch_size, shuffle=True,
                                         generator=generator),
            val_dataloaders=DataLoader(val_set, batch_size=batch_size, shuffle=True,
                                       generator=generator))
        evaluator = strategy.mutate_evaluator(evaluator)
        oneshot = evaluator.module

        start = time.perf_counter()
        evaluator.evaluate(supernet)
        seconds = time.perf_counter() - start

        sample = oneshot.export()
        probs = oneshot.export_probs()

    missing = sorted(searched - set(sample))
    if missing:
        raise RuntimeError(f"NNI DARTS exported no value for {missing}; exported {sorted(sample)}")
    return {
        "sample": {**dict(space.knob_values), **sample},
        "probs": probs,
        "train_loss": _epoch_means(training.history, "train"),
        "arch_loss": _epoch_means(training.history, "arch"),
        "epochs": epochs,
        "seconds": seconds,
        "connections": connections,
        "strategy": "nni.nas.strategy.DARTS",
    }
