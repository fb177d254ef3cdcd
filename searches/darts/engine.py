"""The differentiable search engine: bi-level DARTS in plain PyTorch.

Weights train on one half of the training cases, architecture parameters on the other.
First order by default; second order unrolls one weight step and takes the Hessian-vector
product by finite differences (Liu et al., DARTS, ICLR 2019, eq. 7-8). The architecture step
computes gradients for the architecture parameters only (weights are switched to
``requires_grad=False``), which spares the weight-gradient work of a naive step.

The search follows the space's recipe: its training stages in turn (each its share of the
epochs, its trainable parts, eval-mode modules, learning rates and share of the cases), the
architecture moving only in the stages that search it (after the warm-up); the weights descend
``compute_loss(outputs, batch, stage)``, the architecture ``arch_loss`` (by default the
segmentation loss alone). A space may take gradients of its own tensors inside its forward
during the architecture step: the weights then have ``requires_grad=False`` but grad mode is on.

After the last epoch the connections are selected by what the supernet loses without each
input (``config.select``, :mod:`nasseg.searches.darts.selection`), not by their gates alone;
with ``config.select_ops="removal"`` the ops are then chosen the same way, not by their alphas.
A supernet that has not learned a class by then cannot show what that class needs: the search
goes on for ``config.extend_unlearned`` more epochs first (once; by default as many as planned),
another pass through the recipe's stages.
``config.path_dropout`` switches random inputs off in the weight steps
(:mod:`nasseg.searches.darts.path_dropout`).

``config.mode`` picks the relaxation (full mixing or a memory-saving mode, see
:mod:`nasseg.searches.darts.modes`); ``amp``, ``channels_last`` and ``compile`` are the GPU
levers. Every run writes ``RUN/cost.json`` (see :mod:`nasseg.runtime.cost`): wall time
per phase, steps per second, peak memory.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from nasseg.artifacts.files import error_line, read_json, save_torch, write_json
from nasseg.artifacts.pictures import draw_search
from nasseg.artifacts.run_folder import RunFolder, RunFolderError
from nasseg.data import CaseSet, split_indices
from nasseg.evaluation.validation import Validation, validate
from nasseg.runtime.cost import CostCard
from nasseg.runtime.device import resolve_device
from nasseg.runtime.distributed import DistContext, shard
from nasseg.runtime.guards import check_finite
from nasseg.runtime.loaders import EpochLoader, pass_steps
from nasseg.runtime.placement import place_batch, prepare_model
from nasseg.runtime.precision import Precision
from nasseg.runtime.runlog import RunLog, logger
from nasseg.runtime.seeding import rng_state, set_rng_state
from nasseg.runtime.settings import cosine_lr
from nasseg.runtime.staging import StagedWeights
from nasseg.runtime.time_budget import TimeBudget
from nasseg.searches.darts.config import SearchConfig
from nasseg.searches.darts.modes import gumbel_temperature
from nasseg.searches.darts.path_dropout import dropout_rate, dropped_inputs
from nasseg.searches.darts.relaxation import ArchParameters, relax
from nasseg.searches.darts.selection import (MIN_MEASURED_CASES, OpSelection,
                                             RemovalSelection, measured_cases,
                                             select_by_removal, select_ops_by_removal,
                                             unlearned_classes)
from nasseg.space import GATE_REG, SearchSpace, TrainingStage, schedule_in_passes

__all__ = ["DartsSearch", "EpochSummary", "search_split"]


@dataclass
class EpochSummary:
    """What one epoch produced (logged, kept in the checkpoint's history)."""

    epoch: int
    stage: str
    weight_loss: float
    arch_loss: float | None
    val_dice: float
    val: dict[str, float]
    seconds: float
    scores: dict[str, Any]  # op and gate probabilities after the epoch (ArchParameters.scores)


@contextmanager
def _grad_enabled(params: Sequence[nn.Parameter], enabled: bool) -> Iterator[None]:
    """Temporarily switch ``requires_grad`` of ``params``."""
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(enabled)
    try:
        yield
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)


def search_split(data: CaseSet, config: SearchConfig) -> dict[str, list[int]]:
    """The cases of the weight half, the architecture half and validation.

    The training cases are dealt into the halves at random (seeded): halving them in file order
    gave the weights the data set's first cases, and data sets are often ordered by site, date
    or kind (demo3d's first cases hold a third as many smooth blobs as textured ones, its later
    cases as many of each).
    """
    train, val = split_indices(data.num_cases, config.val_fraction, config.seed)
    if len(train) < 2:
        raise ValueError(f"{data.name}: {data.num_cases} cases leave fewer than 2 for training; "
                         "a search needs one for the weights and one for the architecture")
    dealt = np.random.default_rng([config.seed, 1]).permutation(train).tolist()
    half = len(train) // 2
    return {"weights": sorted(dealt[:half]), "arch": sorted(dealt[half:]), "val": val}


class DartsSearch:
    """One search of ``space`` (the supernet, built under the run's seed) on ``data``.

    Call :meth:`run`; it writes everything into ``run`` (see
    :mod:`nasseg.artifacts.run_folder`) and can resume from the folder's checkpoint.
    ``on_epoch(epoch, value)`` is called after every epoch's checkpoint with the space's
    selection metric (a tuner reports to its pruner there; an exception it raises stops the
    search).
    """

    def __init__(self, space: SearchSpace, data: CaseSet, run: RunFolder,
                 config: SearchConfig, show_progress: bool | None = None,
                 on_epoch: Callable[[int, float], None] | None = None) -> None:
        self.config = config
        self.on_epoch = on_epoch
        self.run_folder = run
        self.data = data
        self.device = resolve_device(config.device)
        self.model = space
        self.arch = relax(space, mode=config.mode, partial_k=config.partial_k,
                          gates=config.gates)
        self.arch.to(self.device)
        prepare_model(self.model, self.device, config.channels_last, config.compile)
        self.precision = Precision(self.device, config.amp)
        # epochs of each pass through the recipe: the plan, then an extension's
        self.passes = [config.epochs]
        self.schedule = schedule_in_passes(space.training_stages(), self.passes)
        self.staged = StagedWeights(self.model, space.training_stages(), config.weight_lr,
                                    config.weight_decay)
        self.weights = self.staged.params
        self.weight_opt = self.staged.optimizer
        self.arch_params = list(self.arch.parameters())
        self.gate_reg = float(space.knob_values.get(GATE_REG, 0.0))
        self.split = search_split(data, config)
        self._measured, self._measured_on = measured_cases(self.split)
        self.view = space.data_view()
        # Several processes (torchrun): each searches its shard; rank 0's start is everyone's.
        self.dist = DistContext.from_environment(self.device)
        self._loaders: dict[tuple[float, float], tuple[EpochLoader, EpochLoader, int]] = {}
        self.dist.broadcast(self.weights + self.arch_params)
        self.rank_difference = 0.0
        self.val_loader = EpochLoader(data, self.split["val"], config.batch_size, False,
                                      config.seed, config.num_workers, config.patch_size,
                                      self.view)
        # A space with nothing left to search (all ablations off) trains its weights only.
        self.arch_lr = config.resolved_arch_lr(self.arch_steps_planned())
        self.arch_opt = torch.optim.Adam(self.arch_params, lr=self.arch_lr,
                                         betas=config.arch_betas,
                                         weight_decay=config.arch_weight_decay
                                         ) if self.arch_params else None
        self.show_progress = show_progress
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.cost = CostCard()
        self.budget = TimeBudget(config.time_budget) if config.time_budget else None
        self.warmup_share = config.warmup_epochs / config.epochs
        self._full: Validation | None = None  # the supernet on the measured cases, if measured
        self._measure_loader: EpochLoader | None = None

    def stage_loaders(self, stage: TrainingStage) -> tuple[EpochLoader, EpochLoader, int]:
        """This rank's weight and architecture loaders over ``stage``'s share of the cases, and
        the steps of one epoch (every rank takes the same number, or the gradient all-reduces
        would hang)."""
        if stage.cases not in self._loaders:
            cfg, rank, world = self.config, self.dist.rank, self.dist.world_size
            halves = {k: stage.case_share(self.split[k]) for k in ("weights", "arch")}
            loaders = [EpochLoader(self.data, shard(halves[k], rank, world), cfg.batch_size,
                                   True, cfg.seed + offset, cfg.num_workers, cfg.patch_size,
                                   self.view)
                       for offset, k in enumerate(("weights", "arch"))]
            steps = cfg.steps_per_epoch or pass_steps(
                self.data, (shard(halves["weights"], r, world) for r in range(world)),
                cfg.batch_size)
            self._loaders[stage.cases] = (loaders[0], loaders[1], steps)
        return self._loaders[stage.cases]

    def _searches(self, epoch: int) -> bool:
        return epoch >= self.config.warmup_epochs and self.schedule[epoch].search

    def arch_steps_planned(self) -> int:
        """Architecture steps of the whole search (after warm-up, in searched stages)."""
        return sum(self.stage_loaders(self.schedule[e])[2]
                   for e in range(self.config.epochs) if self._searches(e))

    # ----- losses and steps -------------------------------------------------------------------
    def _loss(self, batch: dict[str, torch.Tensor], what: str, epoch: int, step: int,
              architecture: bool = False) -> torch.Tensor:
        """The weights' loss of ``batch`` in this epoch's stage, or the architecture loss."""
        batch = place_batch(batch, self.device, self.config.channels_last)
        stage = self.schedule[epoch]
        with self.precision.autocast():
            outputs = self.model.forward_batch(batch)
            loss_fn = self.model.arch_loss if architecture else self.model.compute_loss
            loss = loss_fn(outputs, batch, stage)
        check_finite(loss, what, epoch, step)
        return loss

    def _arch_grads(self, loss: torch.Tensor) -> list[torch.Tensor]:
        grads = torch.autograd.grad(loss, self.arch_params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(self.arch_params, grads)]

    def _arch_step(self, arch_batch: dict, weight_batch: dict, epoch: int, step: int) -> float:
        with _grad_enabled(self.weights, False):
            if self.config.order == 1:
                loss = self._loss(arch_batch, "architecture", epoch, step, architecture=True)
                if self.precision.scaler is not None:  # fp16: the weight step's scale, undone
                    scale = self.precision.scaler.get_scale()
                    grads = [g / scale for g in self._arch_grads(loss * scale)]
                else:
                    grads = self._arch_grads(loss)
            else:
                loss, grads = self._unrolled_grads(arch_batch, weight_batch, epoch, step)
            reg = self.gate_reg * self.arch.binarization_loss().to(self.device)
            reg_grads = self._arch_grads(reg) if reg.requires_grad else None
        for i, p in enumerate(self.arch_params):
            p.grad = grads[i] + (reg_grads[i] if reg_grads is not None else 0)
        self.dist.average_gradients(self.arch_params)
        if self.precision.scaler is not None and not all(bool(torch.isfinite(p.grad).all())
                                               for p in self.arch_params):
            return loss.detach().item()  # fp16 overflow: skip, like the scaler's weight step
        self.arch_opt.step()
        return loss.detach().item()

    def _unrolled_grads(self, arch_batch: dict, weight_batch: dict, epoch: int, step: int
                        ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """DARTS second order: grad_a L_val(w', a) - xi * Hessian-vector product, with
        w' = w - xi * grad_w L_train(w, a) and the product by central finite differences."""
        xi = self.weight_opt.param_groups[0]["lr"]
        weights = self.staged.trainable()
        backup = [w.detach().clone() for w in weights]
        with _grad_enabled(weights, True), _grad_enabled(self.arch_params, False):
            train_loss = self._loss(weight_batch, "weight (unrolled)", epoch, step)
            g_train = torch.autograd.grad(train_loss, weights, allow_unused=True)
        with torch.no_grad():
            for w, g in zip(weights, g_train):
                if g is not None:
                    w.sub_(xi * (g + self.config.weight_decay * w))
        with _grad_enabled(weights, True):
            val_loss = self._loss(arch_batch, "architecture", epoch, step, architecture=True)
            grads = torch.autograd.grad(val_loss, self.arch_params + weights,
                                        allow_unused=True)
        n = len(self.arch_params)
        d_arch = [torch.zeros_like(p) if g is None else g
                  for p, g in zip(self.arch_params, grads[:n])]
        d_w = [torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads[n:])]
        eps = 0.01 / (torch.sqrt(sum((g * g).sum() for g in d_w)) + 1e-12)

        def arch_grad_at(sign: float) -> list[torch.Tensor]:
            with torch.no_grad():
                for w, b, g in zip(weights, backup, d_w):
                    w.copy_(b + sign * eps * g)
            return self._arch_grads(self._loss(weight_batch, "weight (unrolled)", epoch, step))

        g_plus, g_minus = arch_grad_at(1.0), arch_grad_at(-1.0)
        with torch.no_grad():
            for w, b in zip(weights, backup):
                w.copy_(b)
        grads_out = [da - xi * (gp - gm) / (2 * eps)
                     for da, gp, gm in zip(d_arch, g_plus, g_minus)]
        return val_loss, grads_out

    def _weight_step(self, batch: dict, epoch: int, step: int) -> float:
        trainable = self.staged.trainable()
        cfg = self.config
        dropped = dropped_inputs(self.arch, dropout_rate(cfg.path_dropout, epoch, cfg.epochs),
                                 f"{cfg.seed}/{epoch}/{step}/{self.dist.rank}")
        with _grad_enabled(self.arch_params, False), self.arch.switched_off(dropped):
            loss = self._loss(batch, "weight", epoch, step)
            self.weight_opt.zero_grad(set_to_none=True)
            self.precision.backward(loss)
            self.dist.average_gradients(trainable)
        self.precision.step(self.weight_opt, trainable)
        return loss.detach().item()

    # ----- epochs -----------------------------------------------------------------------------
    @staticmethod
    def _arch_batches(loader: EpochLoader, epoch: int) -> Iterator[dict]:
        round_ = 0
        while True:
            yield from loader.epoch(epoch * 1000 + round_)
            round_ += 1

    def _epoch(self, epoch: int, log: RunLog) -> EpochSummary:
        start = time.perf_counter()
        cfg, cost, stage = self.config, self.cost, self.schedule[epoch]
        # The weight learning rate: a linear ramp, then cosine decay to 10 %, a function of the
        # epoch alone.
        self.staged.enter(stage, cosine_lr(cfg.weight_lr, epoch, cfg.epochs, cfg.lr_warmup_epochs))
        self.staged.train_mode()
        self.arch.temperature = gumbel_temperature(epoch, cfg.epochs, cfg.warmup_epochs,
                                                   *cfg.gumbel_temperature)
        search_arch = self._searches(epoch) and self.arch_opt is not None
        weight_loader, arch_loader, steps = self.stage_loaders(stage)
        arch_batches = cost.timed("data", self._arch_batches(arch_loader, epoch))
        w_losses, a_losses = [], []
        batches = log.progress(
            cost.timed("data", weight_loader.steps(epoch, steps)),
            steps, f"epoch {epoch + 1}/{cfg.epochs} [{stage.name}]")
        for step, batch in enumerate(batches):
            if search_arch:
                arch_batch = next(arch_batches)
                with cost.phase("arch_steps"):
                    a_losses.append(self._arch_step(arch_batch, batch, epoch, step))
                cost.steps["arch"] += 1
            with cost.phase("weight_steps"):
                w_losses.append(self._weight_step(batch, epoch, step))
            cost.steps["weight"] += 1
        val = Validation({"dice_mean": float("nan")})
        if self.dist.is_main:
            with cost.phase("validation"):
                val = validate(self.model, self.val_loader.epoch(0), self.data.num_classes,
                               self.device, self.precision.autocast())
        self.rank_difference = self.dist.max_difference(self.arch_params)
        if self.rank_difference > 0:
            raise RuntimeError(f"architecture parameters differ across ranks by "
                               f"{self.rank_difference} after epoch {epoch + 1}")
        summary = EpochSummary(epoch, stage.name, sum(w_losses) / len(w_losses),
                               sum(a_losses) / len(a_losses) if a_losses else None, val.dice,
                               val.values, time.perf_counter() - start, self.arch.scores())
        self._log_epoch(log, summary, val)
        return summary

    def _log_epoch(self, log: RunLog, s: EpochSummary, val: Validation) -> None:
        if not self.dist.is_main:
            return
        values = {"loss/weights": s.weight_loss, "dice/val_mean": s.val_dice,
                  "time/epoch_seconds": s.seconds, **val.scalars(self.data.class_names)}
        if s.arch_loss is not None:
            values["loss/architecture"] = s.arch_loss
        for label, entry in s.scores["op"].items():
            for cand, p in zip(entry["candidates"], entry["probs"]):
                values[f"alpha/{label}/{cand}"] = p
        for label, entry in s.scores["connection"].items():
            for i, p in enumerate(entry["probs"]):
                values[f"gate/{label}/{i}"] = p
        log.scalars(values, s.epoch + 1)
        arch_text = "" if s.arch_loss is None else f"  arch loss {s.arch_loss:.4f}"
        extra = "".join(f"  {k} {v:.3f}" for k, v in s.val.items() if k != "dice_mean")
        logger.info("epoch %d/%d [%s]  weight loss %.4f%s  val Dice %.3f%s  (%.1fs)",
                    s.epoch + 1, self.config.epochs, s.stage, s.weight_loss, arch_text,
                    s.val_dice, extra, s.seconds)

    # ----- time budget ------------------------------------------------------------------------
    def _replan(self, done: int, searched: bool, seconds: float) -> None:
        """Fit the remaining epochs to the time budget left (every rank plans alike: rank 0's
        measurements are broadcast); the warm-up keeps its share until the search begins."""
        assert self.budget is not None
        cfg = self.config
        seconds = self.dist.broadcast_value(seconds)
        self.budget.record("train" if searched else "warmup", seconds)

        def warmup_of(total: int) -> int:
            return cfg.warmup_epochs if searched else round(self.warmup_share * total)

        total = self.budget.fit_epochs(done, warmup_of, minimum=len(self.model.training_stages()))
        self._set_plan(total, cfg.warmup_epochs if searched
                       else min(max(warmup_of(total), done), total))

    def _set_plan(self, epochs: int, warmup_epochs: int) -> None:
        """Run ``epochs`` in all, the first ``warmup_epochs`` without architecture steps: the
        stages, the cosine learning rate and an automatic architecture lr follow."""
        cfg = self.config
        cfg.epochs, cfg.warmup_epochs = epochs, warmup_epochs
        self.passes = [epochs]
        self.schedule = schedule_in_passes(self.model.training_stages(), self.passes)
        if self.arch_opt is not None and cfg.arch_lr is None:
            self.arch_lr = cfg.resolved_arch_lr(self.arch_steps_planned())
            for group in self.arch_opt.param_groups:
                group["lr"] = self.arch_lr

    # ----- checkpoints ------------------------------------------------------------------------
    def _save(self, epochs_done: int) -> None:
        if not self.dist.is_main:
            return
        save_torch(self.run_folder.checkpoint, {
            "epochs_done": epochs_done,
            "plan": {"epochs": self.config.epochs, "warmup_epochs": self.config.warmup_epochs,
                     "warmup_share": self.warmup_share, "passes": self.passes},
            "budget": self.budget.to_dict() if self.budget else None,
            "model": self.model.state_dict(),
            "arch": self.arch.state_dict(),
            "weight_opt": self.weight_opt.state_dict(),
            "arch_opt": self.arch_opt.state_dict() if self.arch_opt else None,
            "scaler": self.precision.state_dict(),
            "rng": rng_state(),
            "history": self.history,
        })
        self._write_arch_params(epochs_done)

    def _write_arch_params(self, epochs_done: int) -> None:
        write_json(self.run_folder.arch_params, {
            "epochs_done": epochs_done, "world_size": self.dist.world_size,
            "arch_lr": self.arch_opt.param_groups[0]["lr"] if self.arch_opt else None,
            "rank_max_difference": self.rank_difference,
            "selection": self.config.select if self.arch.selected else "gates",
            "op_selection": "removal" if self.arch.op_selected else "alphas",
            **self.arch.scores()})

    def _measured_dice(self) -> Validation:
        """The supernet (inputs the selection switched off stay off) on the cases the
        selection measures it on (:func:`measured_cases`)."""
        if self._measure_loader is None:
            cfg = self.config
            self._measure_loader = EpochLoader(self.data, self._measured, cfg.batch_size,
                                               False, cfg.seed, cfg.num_workers,
                                               cfg.patch_size, self.view)
        return validate(self.model, self._measure_loader.epoch(0), self.data.num_classes,
                        self.device, self.precision.autocast())

    def _measured_text(self) -> str:
        """The measured cases, as log messages name them."""
        return ("the architecture half" if self._measured_on == "arch"
                else f"all {len(self._measured)} training cases")

    def _class_dice(self, full: Validation) -> dict[str, float]:
        return dict(zip(self.data.class_names[1:], full.dice_per_class))

    def _extended_for_unlearned(self) -> bool:
        """After the planned epochs: extend the search once (``config.extend_unlearned``) when
        the full supernet has not learned a class, as measured for the selection by rank 0
        (every rank takes its decision). The measurement is kept for the selection. The
        added epochs are another pass through the recipe (each stage its share, at least one
        epoch each), so a recipe of several stages trains as its space prescribes."""
        cfg = self.config
        extra = cfg.extension_epochs()
        if not extra or self.arch_opt is None:
            return False
        missed: list[str] = []
        if self.dist.is_main:
            with self.cost.phase("selection"):
                self._full = self._measured_dice()
            class_dice = self._class_dice(self._full)
            missed = unlearned_classes(class_dice)
        if not self.dist.broadcast_value(float(bool(missed))):
            return False
        self._full = None
        stages = self.model.training_stages()
        extra = max(extra, len(stages))
        done, cfg.epochs, cfg.extend_unlearned = cfg.epochs, cfg.epochs + extra, 0
        self.passes.append(extra)
        self.schedule = schedule_in_passes(stages, self.passes)
        if self.dist.is_main:
            logger.warning(
                "the supernet has not learned %s after %d epochs (Dice %s on %s): searching "
                "on to epoch %d before the selection (--extend-unlearned)",
                ", ".join(missed), done, ", ".join(f"{class_dice[n]:.2f}" for n in missed),
                self._measured_text(), cfg.epochs)
            self._record_extension(done, class_dice)
        return True

    def _record_extension(self, done: int, class_dice: dict[str, float]) -> None:
        """Write the new end into ``run.json``, so that a resume continues the extended run."""
        if not self.run_folder.config.exists():  # an engine driven without a run description
            return
        description = read_json(self.run_folder.config, "run description")
        description["search"].update(epochs=self.config.epochs, extend_unlearned=0)
        description["extended_for_unlearned"] = {
            "after_epochs": done, "epochs": self.config.epochs, "class_dice": class_dice}
        write_json(self.run_folder.config, description)

    def select(self) -> dict[str, Any]:
        """After the last epoch: select the connections (``select="removal"``), then the ops
        (``select_ops="removal"``), by what the supernet loses without each; write what was
        measured into ``selection.json`` (the connections' record, with the ops' under
        ``ops``). Empty when nothing was selected by measurement."""
        record: dict[str, Any] = {}
        connections = self.select_connections()
        if connections is not None:
            record.update(connections.to_dict())
        ops = self.select_ops(connections.final_dice if connections is not None else None)
        if ops is not None:
            record["ops"] = ops.to_dict()
        if record:
            write_json(self.run_folder.selection, record)
            self._write_arch_params(self.config.epochs)
            self._write_cost(self.config.epochs)
        return record

    def select_connections(self) -> RemovalSelection | None:
        """``select="removal"``: score the connections by what the supernet loses without each
        input, on the architecture half (on every training case when that half is small,
        :func:`measured_cases`); the scores replace the gates. None with ``select="gates"``,
        or when no connection has several inputs."""
        if self.config.select != "removal" or not any(
                n > 1 for n in self.arch.connection_sizes.values()):
            return None
        cfg = self.config
        self._say_measured_cases()
        # Each switched-off input changes the traced graph: a compiled network runs the
        # evaluations it has no graph for eagerly instead of recompiling for every one.
        with self.cost.phase("selection"), torch.compiler.set_stance("eager_on_recompile"):
            full = self._full if self._full is not None else self._measured_dice()
            class_dice = self._class_dice(full)
            self._warn_unlearned(class_dice)
            result = select_by_removal(self.arch, lambda: self._measured_dice().selected,
                                       cfg.select_tolerance, logger.info, full.selected,
                                       keep_at=self.model.default_tau)
        result.class_dice = class_dice
        result.measured_on = {"halves": self._measured_on, "cases": len(self._measured)}
        self.arch.selected = result.scores
        return result

    def select_ops(self, full_dice: float | None = None) -> OpSelection | None:
        """``select_ops="removal"``: choose each op by what the supernet (its connections as
        selected; ``full_dice``: its Dice, when measured already) loses without it, on the
        cases the connections were measured on. None with ``select_ops="alphas"``, or when no
        op choice has several candidates."""
        if self.config.select_ops != "removal" or not any(
                len(names) > 1 for names in self.arch.op_candidates.values()):
            return None
        if not self.arch.selected:  # the connection selection said it already
            self._say_measured_cases()
        with self.cost.phase("selection"), torch.compiler.set_stance("eager_on_recompile"):
            result = select_ops_by_removal(self.arch, lambda: self._measured_dice().selected,
                                           logger.info, full_dice)
        self.arch.op_selected = result.scores
        return result

    def _say_measured_cases(self) -> None:
        if self._measured_on != "arch":
            logger.info("selection: the architecture half has %d cases (fewer than %d), too "
                        "few to measure on alone; measuring on %s", len(self.split["arch"]),
                        MIN_MEASURED_CASES, self._measured_text())

    def _warn_unlearned(self, class_dice: dict[str, float]) -> None:
        """Say when the supernet has not learned a class even now: the selection cannot see
        what that class needs, and derives a net too small for it. Training on may break
        through."""
        missed = unlearned_classes(class_dice)
        if missed:
            logger.warning(
                "selection: the supernet has not learned %s (Dice %s on %s); the inputs such a "
                "class needs cannot show their worth, so the derived net may be too small. "
                "Continue the search: nasseg search --resume --out %s --epochs %d",
                ", ".join(missed), ", ".join(f"{class_dice[name]:.2f}" for name in missed),
                self._measured_text(), self.run_folder.path, 2 * self.config.epochs)

    def resume(self) -> None:
        """Load the folder's checkpoint: weights, architecture, both optimizers, RNG, history."""
        path = self.run_folder.checkpoint
        if not path.exists():
            raise RunFolderError(f"{path}: no checkpoint to resume from")
        self._check_split()
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
            self.model.load_state_dict(state["model"])
            self.arch.load_state_dict(state["arch"])
            self.weight_opt.load_state_dict(state["weight_opt"])
            if self.arch_opt is not None:
                self.arch_opt.load_state_dict(state["arch_opt"])
            self.precision.load_state_dict(state.get("scaler"))
        except (RuntimeError, KeyError, EOFError, ValueError) as exc:
            raise RunFolderError(f"{path}: unreadable or not from this search "
                                 f"({error_line(exc)})") from None
        set_rng_state(state["rng"])
        self.history = list(state["history"])
        self.start_epoch = int(state["epochs_done"])
        self._resume_passes(state.get("plan", {}).get("passes") or [self.config.epochs])
        if self.budget is not None:
            plan = state["plan"]
            self.warmup_share = plan["warmup_share"]
            self.budget = TimeBudget.from_state(self.budget.seconds, state.get("budget"))
            self._set_plan(plan["epochs"], plan["warmup_epochs"])
        self.cost.resume(self.run_folder.cost, self.start_epoch)
        logger.info("resuming %s after epoch %d", self.run_folder.path, self.start_epoch)

    def _check_split(self) -> None:
        """Refuse to resume on other cases than the run was searched on (a run of an older
        nasseg halved its training cases in file order; the halves are now dealt at random)."""
        saved_path = self.run_folder.split
        if not saved_path.exists():
            return
        saved = read_json(saved_path, "case split")
        if saved != self.split:
            raise RunFolderError(f"{saved_path}: this search split its cases differently from "
                                 "how this version splits them (older nasseg halved the training "
                                 "cases in file order); start a new search")

    def _resume_passes(self, passes: Sequence[int]) -> None:
        """The recipe's passes as the checkpoint planned them; epochs asked beyond them (``nasseg
        search --resume --epochs``, or an extension decided after the last checkpoint, which
        ``run.json`` records) are one more pass."""
        self.passes = list(passes)
        if sum(self.passes) < self.config.epochs:
            self.passes.append(self.config.epochs - sum(self.passes))
        self.schedule = schedule_in_passes(self.model.training_stages(), self.passes)

    def _write_cost(self, epochs_done: int) -> None:
        if not self.dist.is_main:
            return
        extra = {**self.arch.relaxation.cost_fields(),
                 "fully_mixed_choices": list(self.arch.fully_mixed),
                 "amp_dtype": self.precision.name,
                 "world_size": self.dist.world_size,
                 "epochs_planned": self.config.epochs,
                 "time_budget": self.budget.to_dict() if self.budget else None}
        write_json(self.run_folder.cost,
                   self.cost.card(epochs_done, self.device, self.config, extra))

    def run(self) -> ArchParameters:
        """Search from the current epoch to the last; checkpoint after every epoch."""
        if self.dist.is_main:
            write_json(self.run_folder.split, self.split)
            if self.arch_opt is not None:
                logger.info("architecture learning rate %.3g over %d architecture steps",
                            self.arch_opt.param_groups[0]["lr"],
                            self.arch_steps_planned())
        log = RunLog(self.run_folder.tensorboard, self.show_progress, enabled=self.dist.is_main)
        try:
            epoch, last = self.start_epoch, time.perf_counter()
            while epoch < self.config.epochs or self._extended_for_unlearned():
                summary = self._epoch(epoch, log)
                self.history.append(summary.__dict__)
                if self.dist.is_main:
                    draw_search(self.run_folder.path, self.history, self.model.choice_infos)
                if self.budget is not None:  # an epoch's cost includes the last checkpoint
                    now = time.perf_counter()
                    self._replan(epoch + 1, summary.arch_loss is not None, now - last)
                    last = now
                # the cost card first: a checkpoint on disk always has the card of its epochs
                self._write_cost(epoch + 1)
                with self.cost.phase("checkpoint"):
                    self._save(epoch + 1)
                if self.on_epoch is not None:
                    self.on_epoch(epoch, summary.val.get(self.model.selection_metric,
                                                         float("nan")))
                epoch += 1
            if self.dist.is_main:
                self.select()
        finally:
            log.close()
        # Every rank leaves the process group together; a rank exiting while Gloo's threads
        # still serve the group aborts (seen as SIGABRT at exit).
        self.dist.barrier()
        self.dist.close()
        return self.arch
