"""Retrain a derived architecture from scratch and measure it on the validation cases.

The network is rebuilt from ``arch.json`` alone; training follows the space's stages (a
declarative recipe, one stage by default); the best validation epoch's weights are kept.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from nasseg import __version__
from nasseg.artifacts.files import save_torch, write_json
from nasseg.artifacts.run_folder import RunFolder
from nasseg.data import CaseSet, load_data, resolve_data_spec, split_indices
from nasseg.derive import build_derived, count_flops, count_parameters, read_arch
from nasseg.evaluation.folders import summarize_cases
from nasseg.evaluation.metrics import case_metrics, chance_dice
from nasseg.evaluation.validation import evaluate_dice
from nasseg.inference import network_predict_fn, sliding_window_predict
from nasseg.runtime.device import resolve_device
from nasseg.runtime.fastconv import speed_up_convs
from nasseg.runtime.guards import check_finite
from nasseg.runtime.loaders import EpochLoader, move_batch
from nasseg.runtime.runlog import RunLog, logger
from nasseg.runtime.seeding import seed_everything, set_deterministic
from nasseg.runtime.settings import RunSettings, cosine_lr
from nasseg.space import SearchSpace, TrainingStage

__all__ = ["TrainConfig", "train_architecture", "stage_schedule"]


@dataclass
class TrainConfig(RunSettings):
    """Settings of a retrain: the shared run settings plus AdamW with cosine decay."""

    epochs: int = 30
    lr: float = 3e-3
    weight_decay: float = 1e-4


def stage_schedule(stages: list[TrainingStage], epochs: int) -> list[TrainingStage]:
    """The stage of every epoch: each stage gets its fraction of ``epochs`` (at least one)."""
    total = sum(s.fraction for s in stages)
    counts = [max(1, round(epochs * s.fraction / total)) for s in stages]
    counts[-1] = max(1, epochs - sum(counts[:-1]))
    return [s for s, n in zip(stages, counts) for _ in range(n)]


def _trainable(model: nn.Module, stage: TrainingStage) -> list[nn.Parameter]:
    params = [p for name, p in model.named_parameters()
              if not stage.trainable or name.startswith(stage.trainable)]
    if not params:
        raise ValueError(f"training stage {stage.name!r} selects no parameters "
                         f"(prefixes {stage.trainable})")
    return params


def _fit(model: SearchSpace, data: CaseSet, split: dict[str, list[int]],
         config: TrainConfig, run: RunFolder, device: torch.device,
         on_epoch: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    train = EpochLoader(data, split["train"], config.batch_size, True, config.seed,
                        config.num_workers, config.patch_size)
    val = EpochLoader(data, split["val"], config.batch_size, False, config.seed,
                      config.num_workers, config.patch_size)
    schedule = stage_schedule(model.training_stages(), config.epochs)
    best: dict[str, Any] = {"dice_mean": -1.0}
    log = RunLog(run.tensorboard)
    optimizer, current_stage = None, None
    try:
        for epoch, stage in enumerate(schedule):
            if stage is not current_stage:
                optimizer = torch.optim.AdamW(_trainable(model, stage), lr=config.lr,
                                              weight_decay=config.weight_decay)
                current_stage = stage
            lr = cosine_lr(config.lr, epoch, config.epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            start, losses = time.perf_counter(), []
            model.train()
            for step, batch in enumerate(log.progress(train.epoch(epoch), len(train),
                                                      f"epoch {epoch + 1}/{config.epochs}")):
                batch = move_batch(batch, device)
                loss = model.compute_loss(model.forward_batch(batch), batch)
                check_finite(loss, "training", epoch, step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 12.0)
                optimizer.step()
                losses.append(loss.detach().item())
            dice, per_class = evaluate_dice(model, val.epoch(0), data.num_classes, device)
            log.scalars({"loss/train": sum(losses) / len(losses), "dice/val_mean": dice,
                         **{f"dice/val_{n}": d for n, d in zip(data.class_names[1:], per_class)}},
                        epoch + 1)
            logger.info("epoch %d/%d [%s]  loss %.4f  val Dice %.3f  (%.1fs)", epoch + 1,
                        config.epochs, stage.name, sum(losses) / len(losses), dice,
                        time.perf_counter() - start)
            if dice > best["dice_mean"]:
                best = {"dice_mean": dice, "dice_per_class": per_class, "epoch": epoch + 1}
                save_torch(run.model, {"model": model.state_dict()})
            if on_epoch is not None:
                on_epoch(epoch, dice)
    finally:
        log.close()
    return best


def train_architecture(arch_path: str | Path, out: str | Path, data: str | None = None,
                       config: TrainConfig | None = None,
                       on_epoch: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train the network of ``arch_path`` from scratch into the folder ``out``.

    Writes ``model.pt`` (best validation epoch, with its architecture), ``metrics.json`` and
    TensorBoard logs; returns the metrics. The best epoch is chosen by patch Dice; the final
    metrics score whole validation cases by sliding window (Dice, IoU, HD95 per class). ``data`` defaults to the data set searched on.
    ``on_epoch(epoch, val_dice)`` is called after every epoch (a tuner reports to its pruner
    there; an exception it raises stops the training).
    """
    config = config or TrainConfig()
    arch = read_arch(arch_path)
    data_spec = resolve_data_spec(data) if data else arch.get("data")
    if data_spec is None:
        raise ValueError(f"{arch_path}: names no data set; pass --data")
    dataset = load_data(data_spec)
    expected = arch["input_shape"][0], arch["space_args"].get("num_classes")
    if (dataset.in_channels, dataset.num_classes) != expected:
        raise ValueError(f"{data_spec}: {dataset.in_channels} channels / {dataset.num_classes} "
                         f"classes, but {arch_path} was built for {expected[0]} / {expected[1]}")
    run = RunFolder(Path(out))
    run.ensure_new()
    write_json(run.config, {"kind": "train", "nasseg_version": __version__,
                            "arch": str(Path(arch_path).resolve()), "data": data_spec,
                            "train": config.__dict__})
    seed_everything(config.seed)
    set_deterministic(config.deterministic)
    device = resolve_device(config.device)
    model = build_derived(arch).to(device)
    if device.type == "cpu":  # exact; some of PyTorch's CPU conv gradients are slow
        speed_up_convs(model)
    train_idx, val_idx = split_indices(dataset.num_cases, config.val_fraction, config.seed)
    split = {"train": train_idx, "val": val_idx}
    write_json(run.split, split)
    best = _fit(model, dataset, split, config, run, device, on_epoch)
    state = torch.load(run.model, map_location="cpu", weights_only=False)
    save_torch(run.model, {**state, "arch": arch})
    model.load_state_dict(state["model"])
    summary, per_case = _evaluate_cases(model, dataset, val_idx, device)
    example = model.example_input(arch["input_shape"][1:], arch["input_shape"][0]).to(device)
    metrics = {
        "dice_mean": summary["mean_dice"], "dice_per_class": summary["dice"],
        "iou_mean": summary["mean_iou"], "iou_per_class": summary["iou"],
        "hd95_mean": summary["mean_hd95"], "hd95_per_class": summary["hd95"],
        "pixel_accuracy": summary["pixel_accuracy"], "per_case": per_case,
        "best_epoch": best["epoch"], "epochs": config.epochs,
        "chance_dice": chance_dice(np.concatenate([dataset.case(i).label.ravel() for i in val_idx]),
                                   dataset.num_classes),
        "params": count_parameters(model), "flops": count_flops(model, example),
        "data": data_spec, "arch": str(Path(arch_path).resolve()),
        "num_val_cases": len(val_idx),
    }
    write_json(run.metrics, metrics)
    return metrics


@torch.no_grad()
def _evaluate_cases(model: SearchSpace, data: CaseSet, indices: list[int], device: torch.device
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Whole validation cases by sliding window, scored as ``nasseg evaluate`` scores files."""
    model.eval()
    predict_fn = network_predict_fn(model)
    spacing = getattr(data, "target_spacing", None)
    per_case = {}
    for i in indices:
        case = data.case(i)
        probs = sliding_window_predict(predict_fn, torch.from_numpy(np.asarray(case.image)).to(device),
                                       data.patch_size)
        per_case[case.case_id] = case_metrics(probs.argmax(0).cpu().numpy(), case.label,
                                              data.num_classes, spacing=spacing,
                                              class_names=data.class_names)
    return summarize_cases(per_case, data.class_names), per_case
