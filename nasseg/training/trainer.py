"""Retrain a derived architecture from scratch and measure it on the validation cases.

The network is rebuilt from ``arch.json`` alone and trained through the space's recipe: its
stages in turn (what trains, eval-mode modules, learning rates, share of the cases), the loss
``compute_loss(outputs, batch, stage)``, its own metrics beside Dice. The runtime is the
search's: device, mixed precision, channels-last, compile, several processes (torchrun), a NaN
guard, and an atomic checkpoint after every epoch, so ``resume`` continues a killed run to the
same weights an unbroken one ends with (``deterministic`` on the CPU).

The training folder is portable: it holds a copy of its ``arch.json``, the data set relative to
itself, and its preprocessing plan (``plan.json``, also inside ``model.pt``), so ``nasseg
predict`` runs where the training data is absent.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from nasseg import __version__
from nasseg.artifacts.files import error_line, read_json, save_torch, write_json
from nasseg.artifacts.pictures import draw_training
from nasseg.artifacts.run_folder import RunFolder, RunFolderError
from nasseg.data import (CaseSet, load_data, locate_data_spec, record_data_spec,
                         resolve_data_spec, split_indices)
from nasseg.derive import build_derived, count_flops, count_parameters, read_arch, write_arch
from nasseg.evaluation.folders import summarize_cases
from nasseg.evaluation.metrics import ConfusionAccumulator, case_metrics, chance_dice
from nasseg.evaluation.validation import Validation, validate
from nasseg.inference import network_predict_fn, sliding_window_predict
from nasseg.inference.postprocess import (MAX_REFERENCE_CASES, choose_min_sizes,
                                          small_object_sizes)
from nasseg.inference.predict import PredictionPlan
from nasseg.runtime.cost import CostCard
from nasseg.runtime.device import resolve_device
from nasseg.runtime.distributed import DistContext, is_main_process, shard
from nasseg.runtime.guards import check_finite
from nasseg.runtime.loaders import EpochLoader, pass_steps
from nasseg.runtime.placement import place_batch, prepare_model
from nasseg.runtime.precision import Precision
from nasseg.runtime.runlog import RunLog, logger
from nasseg.runtime.seeding import rng_state, seed_everything, set_deterministic, set_rng_state
from nasseg.runtime.settings import RunSettings, cosine_lr
from nasseg.runtime.staging import StagedWeights
from nasseg.runtime.time_budget import TimeBudget
from nasseg.space import SearchSpace, TrainingStage, final_stage_epochs, stage_schedule

__all__ = ["TrainConfig", "train_architecture", "resume_training", "TRAIN_STEPS_PER_EPOCH",
           "TRAIN_EPOCHS"]

#: Weight steps of a retrain epoch, whatever the data set's size (see the README's budget
#: measurements: demo3d's one pass, 16 steps, left the nets still improving at the last epoch).
TRAIN_STEPS_PER_EPOCH = 32
#: Epochs of a retrain. On demo3d (twelve seeds, the U-Net and a searched net each), 60 against
#: 30 raised the mean held-out Dice by 0.015 (U-Net) and 0.012 (searched), 19 of 24 retrains
#: higher, and cut the searched nets' spread over seeds from 0.024 to 0.009: at 30 a net often
#: had not yet left the plateau where it finds the blobs but cannot tell their kinds apart
#: (README, "Three retrains per net").
TRAIN_EPOCHS = 60


@dataclass
class TrainConfig(RunSettings):
    """Settings of a retrain: the shared run settings plus AdamW with cosine decay; an epoch is
    :data:`TRAIN_STEPS_PER_EPOCH` steps unless ``steps_per_epoch`` says otherwise (None: one pass
    over the training cases)."""

    epochs: int = TRAIN_EPOCHS
    steps_per_epoch: int | None = TRAIN_STEPS_PER_EPOCH
    lr: float = 3e-3
    weight_decay: float = 1e-4
    #: decide on the validation cases which small components prediction removes (per class)
    postprocess: bool = True

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Settings as ``run.json`` records them; unknown keys are an error."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown training settings: {unknown}")
        return cls(**values)


class _Retrain:
    """One retrain of ``model`` in ``run``: epochs, validation, checkpoints, resume."""

    def __init__(self, model: SearchSpace, data: CaseSet, split: dict[str, list[int]],
                 config: TrainConfig, run: RunFolder,
                 on_epoch: Callable[[int, float], None] | None) -> None:
        self.model, self.data, self.split, self.config, self.run = model, data, split, config, run
        self.on_epoch = on_epoch
        self.device = resolve_device(config.device)
        prepare_model(model, self.device, config.channels_last, config.compile)
        self.precision = Precision(self.device, config.amp)
        stages = model.training_stages()
        self.schedule = stage_schedule(stages, config.epochs)
        self.staged = StagedWeights(model, stages, config.lr, config.weight_decay)
        self.dist = DistContext.from_environment(self.device)
        self.dist.broadcast(self.staged.params)
        self.view = model.data_view()
        self.val = EpochLoader(data, split["val"], config.batch_size, False, config.seed,
                               config.num_workers, config.patch_size, self.view)
        self._loaders: dict[tuple[float, float], tuple[EpochLoader, int]] = {}
        self.cost = CostCard()
        self.rank_difference = 0.0
        self.best: dict[str, Any] = {"value": -float("inf"), "epoch": None}
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.budget = TimeBudget(config.time_budget) if config.time_budget else None

    def _loader(self, stage: TrainingStage) -> tuple[EpochLoader, int]:
        """This rank's training loader over the stage's share of the cases, and its steps
        (every rank takes the same number, or the gradient all-reduces would hang)."""
        if stage.cases not in self._loaders:
            cfg, world = self.config, self.dist.world_size
            share = stage.case_share(self.split["train"])
            mine = shard(share, self.dist.rank, world)
            steps = cfg.steps_per_epoch or pass_steps(
                self.data, (shard(share, r, world) for r in range(world)), cfg.batch_size)
            self._loaders[stage.cases] = (
                EpochLoader(self.data, mine, cfg.batch_size, True, cfg.seed, cfg.num_workers,
                            cfg.patch_size, self.view), steps)
        return self._loaders[stage.cases]

    def _step(self, batch: dict[str, Any], epoch: int, step: int) -> float:
        stage = self.schedule[epoch]
        batch = place_batch(batch, self.device, self.config.channels_last)
        with self.precision.autocast():
            loss = self.model.compute_loss(self.model.forward_batch(batch), batch, stage)
        check_finite(loss, "training", epoch, step)
        trainable = self.staged.trainable()
        self.staged.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        self.dist.average_gradients(trainable)
        self.precision.step(self.staged.optimizer, trainable)
        return loss.detach().item()

    def _epoch(self, epoch: int, log: RunLog) -> Validation:
        cfg, stage = self.config, self.schedule[epoch]
        self.staged.enter(stage, cosine_lr(cfg.lr, epoch, cfg.epochs))
        self.staged.train_mode()
        loader, steps = self._loader(stage)
        start, losses, cost = time.perf_counter(), [], self.cost
        batches = cost.timed("data", loader.steps(epoch, steps))
        for step, batch in enumerate(log.progress(batches, steps,
                                                  f"epoch {epoch + 1}/{cfg.epochs}")):
            with cost.phase("weight_steps"):
                losses.append(self._step(batch, epoch, step))
            cost.steps["weight"] += 1
        val = Validation({"dice_mean": float("nan")})
        if self.dist.is_main:
            with cost.phase("validation"):
                val = validate(self.model, self.val.epoch(0), self.data.num_classes,
                               self.device, self.precision.autocast())
        loss = sum(losses) / len(losses)
        self.rank_difference = self.dist.max_difference(self.staged.params)
        if self.rank_difference > 0:
            raise RuntimeError(f"weights differ across ranks by {self.rank_difference} after "
                               f"epoch {epoch + 1}")
        log.scalars({"loss/train": loss, "dice/val_mean": val.dice,
                     **val.scalars(self.data.class_names)}, epoch + 1)
        extra = "".join(f"  {k} {v:.3f}" for k, v in val.values.items() if k != "dice_mean")
        if self.dist.is_main:
            logger.info("epoch %d/%d [%s]  loss %.4f  val Dice %.3f%s  (%.1fs)", epoch + 1,
                        cfg.epochs, stage.name, loss, val.dice, extra,
                        time.perf_counter() - start)
        self.history.append({"epoch": epoch, "stage": stage.name, "loss": loss, **val.values})
        return val

    def _save(self, epochs_done: int) -> None:
        if not self.dist.is_main:
            return
        # the cost card first: a checkpoint on disk always has the card of its epochs
        write_json(self.run.cost, self.cost.card(
            epochs_done, self.device, self.config,
            {"amp_dtype": self.precision.name, "world_size": self.dist.world_size,
             "rank_max_difference": self.rank_difference, "epochs_planned": self.config.epochs,
             "time_budget": self.budget.to_dict() if self.budget else None}))
        with self.cost.phase("checkpoint"):
            save_torch(self.run.checkpoint, {
                "epochs_done": epochs_done, "model": self.model.state_dict(),
                "optimizer": self.staged.optimizer.state_dict(),
                "scaler": self.precision.state_dict(), "rng": rng_state(),
                "best": self.best, "history": self.history, "epochs": self.config.epochs,
                "budget": self.budget.to_dict() if self.budget else None})

    def _replan(self, done: int, seconds: float) -> None:
        """Fit the remaining epochs to the time budget left (rank 0's timing decides)."""
        assert self.budget is not None
        self.budget.record("train", self.dist.broadcast_value(seconds))
        stages = self.model.training_stages()
        self._set_epochs(self.budget.fit_epochs(done, minimum=len(stages)))

    def _set_epochs(self, epochs: int) -> None:
        """Plan ``epochs`` in all: the stages and the cosine learning rate follow."""
        self.config.epochs = epochs
        self.schedule = stage_schedule(self.model.training_stages(), epochs)

    def resume(self) -> None:
        """Continue from the folder's checkpoint: weights, optimizer, scaler, RNG, history."""
        path = self.run.checkpoint
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
            self.model.load_state_dict(state["model"])
            self.staged.optimizer.load_state_dict(state["optimizer"])
            self.precision.load_state_dict(state.get("scaler"))
        except (RuntimeError, KeyError, EOFError, ValueError, OSError) as exc:
            raise RunFolderError(f"{path}: unreadable or not from this training "
                                 f"({error_line(exc)})") from None
        set_rng_state(state["rng"])
        self.best, self.history = dict(state["best"]), list(state["history"])
        self.start_epoch = int(state["epochs_done"])
        if self.budget is not None:
            self.budget = TimeBudget.from_state(self.budget.seconds, state.get("budget"))
            self._set_epochs(int(state["epochs"]))
        self.cost.resume(self.run.cost, self.start_epoch)
        logger.info("resuming %s after epoch %d", self.run.path, self.start_epoch)

    def fit(self, extra_state: dict[str, Any]) -> dict[str, Any]:
        """Train the remaining epochs; keep the best epoch of the final stage in ``model.pt``."""
        log = RunLog(self.run.tensorboard, enabled=self.dist.is_main)
        try:
            epoch, last = self.start_epoch, time.perf_counter()
            while epoch < self.config.epochs:
                val = self._epoch(epoch, log)
                final = epoch in final_stage_epochs(self.schedule)
                if self.dist.is_main and final and val.selected > self.best["value"]:
                    self.best = {"value": val.selected, "epoch": epoch + 1,
                                 "metric": val.selection_metric, "values": val.values,
                                 "dice_per_class": val.dice_per_class}
                    save_torch(self.run.model, {"model": self.model.state_dict(), **extra_state})
                if self.dist.is_main:
                    draw_training(self.run.path, self.history)
                if self.budget is not None:  # an epoch's cost includes the last checkpoint
                    now = time.perf_counter()
                    self._replan(epoch + 1, now - last)
                    last = now
                self._save(epoch + 1)
                if self.on_epoch is not None:
                    self.on_epoch(epoch, val.selected)
                epoch += 1
        finally:
            log.close()
        self.dist.barrier()
        return self.best


def _prepare(arch_path: Path, data_spec: str | None) -> tuple[dict[str, Any], str, CaseSet]:
    arch = read_arch(arch_path)
    data_spec = data_spec or arch.get("data")
    if data_spec is None:
        raise ValueError(f"{arch_path}: names no data set; pass --data")
    dataset = load_data(data_spec)
    expected = arch["input_shape"][0], arch["space_args"].get("num_classes")
    if (dataset.in_channels, dataset.num_classes) != expected:
        raise ValueError(f"{data_spec}: {dataset.in_channels} channels / {dataset.num_classes} "
                         f"classes, but {arch_path} was built for {expected[0]} / {expected[1]}")
    return arch, data_spec, dataset


def train_architecture(arch_path: str | Path, out: str | Path, data: str | None = None,
                       config: TrainConfig | None = None,
                       on_epoch: Callable[[int, float], None] | None = None
                       ) -> dict[str, Any] | None:
    """Train the network of ``arch_path`` from scratch into the new folder ``out``.

    Writes ``run.json``, a copy of the ``arch.json``, ``plan.json``, ``split.json``,
    ``checkpoint.pt`` (every epoch), ``model.pt`` (the best epoch of the final stage, by the
    space's selection metric, with its architecture and plan), ``metrics.json`` and TensorBoard
    logs; returns the metrics (None on the ranks other than 0 of a distributed run). The final
    metrics score whole validation cases by sliding window (Dice, IoU, HD95 per class).
    ``data`` defaults to the data set searched on. ``on_epoch(epoch, value)`` is called after
    every epoch with the selection metric (a tuner reports to its pruner there; an exception it
    raises stops the training).
    """
    config = config or TrainConfig()
    arch_path = Path(arch_path)
    arch, data_spec, dataset = _prepare(arch_path, resolve_data_spec(data) if data else None)
    model = _build(arch, arch_path, dataset, config)  # a bad arch.json fails before any write
    run = RunFolder(Path(out))
    recorded = record_data_spec(data_spec, run.path)
    if is_main_process():  # rank 0 owns the folder
        run.ensure_new()
        write_arch(run.arch, {**arch, "data": data_spec})
        write_json(run.config, {"kind": "train", "nasseg_version": __version__,
                                "arch": run.arch.name, "data": recorded,
                                "train": asdict(config)})
    return _run(run, model, arch, dataset, config, on_epoch, resume=False)


def resume_training(out: str | Path, on_epoch: Callable[[int, float], None] | None = None
                    ) -> dict[str, Any] | None:
    """Continue the training in ``out`` from its last checkpoint (with its own settings)."""
    run = RunFolder(Path(out))
    run.require(run.config, run.arch, run.checkpoint)
    description = read_json(run.config, "run description")
    config = TrainConfig.from_dict(description["train"])
    arch, _, dataset = _prepare(run.arch, locate_data_spec(description["data"], run.path))
    model = _build(arch, run.arch, dataset, config)
    return _run(run, model, arch, dataset, config, on_epoch, resume=True)


def _build(arch: dict[str, Any], source: Path, dataset: CaseSet, config: TrainConfig
           ) -> SearchSpace:
    """The derived network, initialised under the run's seed, checked against the data."""
    seed_everything(config.seed)
    set_deterministic(config.deterministic)
    model = build_derived(arch, source)
    if dataset.spatial_dims not in model.supported_dims:
        raise ValueError(f"{source}: space {arch['space']!r} runs in "
                         f"{'/'.join(map(str, model.supported_dims))}D, not on "
                         f"{dataset.spatial_dims}D data")
    return model


def _run(run: RunFolder, model: SearchSpace, arch: dict[str, Any], dataset: CaseSet,
         config: TrainConfig, on_epoch: Callable[[int, float], None] | None, resume: bool
         ) -> dict[str, Any] | None:
    train_idx, val_idx = split_indices(dataset.num_cases, config.val_fraction, config.seed)
    split = {"train": train_idx, "val": val_idx}
    plan = PredictionPlan.from_data(dataset, config.patch_size, model.data_view())
    retrain = _Retrain(model, dataset, split, config, run, on_epoch)
    if retrain.dist.is_main:
        write_json(run.split, split)
        write_json(run.path / "plan.json", plan.to_dict())
    if resume:
        retrain.resume()
    # model.pt names its data relative to the training folder, as run.json does
    recorded = read_json(run.config, "run description")["data"]
    best = retrain.fit({"arch": {**arch, "data": recorded}, "plan": plan.to_dict()})
    retrain.staged.release()
    retrain.dist.close()
    if not retrain.dist.is_main:
        return None
    if best["epoch"] is None:
        raise RunFolderError(f"{run.path}: no epoch of the final stage finished")
    state = torch.load(run.model, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    summary, per_case, pooled, preds = _evaluate_cases(model, dataset, val_idx, retrain.device,
                                                       plan, config.batch_size)
    postprocessing = None
    if config.postprocess and not plan.large_images:
        plan, postprocessing = _decide_postprocessing(run, state, plan, dataset, split, preds)
    shape = arch["input_shape"]
    example = {k: v.to(retrain.device) for k, v in model.example_batch(shape[1:], shape[0]).items()}
    metrics = {
        "dice_mean": summary["mean_dice"], "dice_per_class": summary["dice"],
        "iou_mean": summary["mean_iou"], "iou_per_class": summary["iou"],
        "hd95_mean": summary["mean_hd95"], "hd95_per_class": summary["hd95"],
        "pixel_accuracy": summary["pixel_accuracy"], "per_case": per_case, "pooled": pooled,
        "best_epoch": best["epoch"], "epochs": config.epochs,
        "selection_metric": best["metric"], "validation": best["values"],
        "chance_dice": chance_dice(np.concatenate([dataset.case(i).label.ravel() for i in val_idx]),
                                   dataset.num_classes),
        "params": count_parameters(model), "flops": count_flops(model, example),
        "data": recorded, "arch": run.arch.name,
        "stages": [s.describe() for s in model.training_stages()],
        "num_val_cases": len(val_idx), "postprocessing": postprocessing,
    }
    write_json(run.metrics, metrics)
    return metrics


def _decide_postprocessing(run: RunFolder, state: dict[str, Any], plan: PredictionPlan,
                           data: CaseSet, split: dict[str, list[int]], preds: list[np.ndarray]
                           ) -> tuple[PredictionPlan, dict[str, Any]]:
    """Choose the small components prediction removes, on the validation predictions
    ``preds`` (:mod:`nasseg.inference.postprocess`; object sizes from the first
    :data:`MAX_REFERENCE_CASES` training cases); write them into the plan of ``plan.json``
    and ``model.pt`` (the network's ``state``); return the plan and what ``metrics.json``
    records (the thresholds by class name, the validation Dice before and after)."""
    labels = (data.case(i).label for i in split["train"][:MAX_REFERENCE_CASES])
    small = small_object_sizes((label for label in labels if label is not None),
                               data.num_classes)
    refs = [data.case(i).label for i in split["val"]]
    chosen, before, after = choose_min_sizes(preds, refs, data.num_classes, small)
    plan = replace(plan, min_component=chosen)
    write_json(run.path / "plan.json", plan.to_dict())
    save_torch(run.model, {**state, "plan": plan.to_dict()})
    return plan, {"min_component_voxels": {data.class_names[c]: n for c, n in chosen.items()},
                  "small_object_voxels": {data.class_names[c]: n for c, n in small.items()},
                  "dice_mean_before": before, "dice_mean_after": after}


@torch.no_grad()
def _evaluate_cases(model: SearchSpace, data: CaseSet, indices: list[int], device: torch.device,
                    plan: PredictionPlan, batch_size: int = 1
                    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, float], list[np.ndarray]]:
    """Whole validation cases by sliding window (``batch_size`` windows at a time, as many as
    a training step holds), scored as ``nasseg evaluate`` scores files: the summary, the
    per-case metrics, the values pooled over every pixel, and the predicted label maps."""
    model.eval()
    predict_fn = network_predict_fn(model)
    spacing = getattr(data, "target_spacing", None)
    per_case, preds = {}, []
    pooled = ConfusionAccumulator(data.num_classes)
    for i in indices:
        case = data.case(i)
        image = torch.from_numpy(np.asarray(case.image)).to(device)
        probs = sliding_window_predict(predict_fn, image, plan.patch_size, view=plan.view,
                                       batch_size=batch_size)
        pred = probs.argmax(0).cpu().numpy()
        per_case[case.case_id] = case_metrics(pred, case.label, data.num_classes,
                                              spacing=spacing, class_names=data.class_names)
        pooled.update(pred, case.label)
        preds.append(pred.astype(np.uint8 if data.num_classes <= 256 else np.int64))
    return summarize_cases(per_case, data.class_names), per_case, pooled.values(), preds
