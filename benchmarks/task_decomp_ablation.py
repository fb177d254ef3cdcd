"""The shape of TDSNet's ablation (Tables 3, 4, 6): Base, +class, +class+sync, +class+sync+scene;
against a plain U-Net and against loss weights tuned by Optuna.

The paper's network (``TaskDecompSpace.paper_sample``) is trained from scratch through its three
stages with each variant's loss weights; every variant gets the same epochs, stages and learning
rates, so they differ only in the terms they train (Base: w1 = w2 = w3 = 0, the segmentation
alone). ``U-Net`` is the ``unet`` space's plain network (3x3 conv pairs, every skip) trained with
the same budget. ``tuned`` retrains the paper's network with the w1, w2, w3 that an Optuna study
found (``nasseg tune --arch``, two worker processes on one journal, ``--tune-trials`` trials of
``--tune-epochs`` epochs, the other knobs fixed at their defaults). Scored by validation Dice,
per-image mean IoU and class-presence accuracy, over seeds.

    python benchmarks/task_decomp_ablation.py --data demo2d demo3d --out bench/task_decomp
    python benchmarks/task_decomp_ablation.py --quick      # smoke run: demo2d, 1 seed, 3 epochs

Writes ``OUT/ablation.json`` and ``OUT/ablation.md`` and prints the table.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nasseg.artifacts.arch_file import write_arch
from nasseg.artifacts.files import read_json
from nasseg.data import load_data
from nasseg.derive.derive import fixed_architecture
from nasseg.space import SearchSpace, create_space
from nasseg.training.trainer import TrainConfig, train_architecture
from report import save_report, summary_table

VARIANTS = {
    "Base": {"w1": 0.0, "w2": 0.0, "w3": 0.0},
    "+class": {"w2": 0.0, "w3": 0.0},
    "+class+sync": {"w2": 0.0},
    "+class+sync+scene": {},
}
METRICS = ("dice_mean", "miou", "cls_acc")
TUNED = ("w1", "w2", "w3")


def fixed_arch(space: SearchSpace, sample: dict[str, Any], input_shape: list[int], data: str
               ) -> dict[str, Any]:
    """``arch.json`` content of one network of ``space``, naming its data set."""
    return {**fixed_architecture(space, sample, input_shape), "data": data}


def plain_unet_sample(space: SearchSpace) -> dict[str, Any]:
    """The hand-made U-Net of the ``unet`` space: first op of every block, every skip kept."""
    return {**space.knob_values,
            **{label: info.candidates[0] if info.kind == "op" else list(range(len(info.candidates)))
               for label, info in space.choice_infos.items() if info.kind != "knob"}}


def tune_weights(arch_path: Path, out: Path, trials: int, epochs: int) -> dict[str, float]:
    """w1, w2, w3 from an Optuna study of ``trials`` retrains of ``arch_path``, run by two worker
    processes sharing one journal (as ``nasseg tune`` runs in parallel)."""
    arch = read_json(arch_path, "architecture")
    fixed = [f"--set={k}={json.dumps(v) if isinstance(v, bool) else v}"
             for k, v in arch["knobs"].items() if k not in TUNED]
    cmd = [sys.executable, "-m", "nasseg.cli", "tune", "--arch", str(arch_path), "--out", str(out),
           "--trials", str(trials), "--train-epochs", str(epochs), "--device", "cpu", *fixed]
    workers = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL) for _ in range(2)]
    if any(w.wait() for w in workers):
        raise RuntimeError(f"a tuning worker failed: {' '.join(cmd)}")
    best = read_json(out / "best.json", "tuning result")
    return {k: best["best"]["knobs"][k] for k in TUNED}


def _train_rows(arch_path: Path, folder: Path, data: str, variant: str, seeds: int,
                epochs: int) -> list[dict[str, Any]]:
    rows = []
    for seed in range(seeds):
        start = time.perf_counter()
        metrics = train_architecture(arch_path, folder / f"seed{seed}", None,
                                     TrainConfig(epochs=epochs, seed=seed))
        row = {"data": data, "variant": variant, "seed": seed,
               "seconds": round(time.perf_counter() - start, 1),
               **{m: metrics["validation"].get(m, float("nan")) for m in METRICS}}
        logging.info("%s", row)
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for data in args.data:
        cases = load_data(data)
        shape = [cases.in_channels, *cases.patch_size]
        dims = {"in_channels": cases.in_channels, "num_classes": cases.num_classes,
                "spatial_dims": cases.spatial_dims, "features": args.features}
        full_arch = None
        for variant, knobs in VARIANTS.items():
            space = create_space("task_decomp", knobs=knobs, **dims)
            folder = args.out / data / variant.replace("+", "_").strip("_")
            arch_path = folder / "arch.json"
            write_arch(arch_path, fixed_arch(space, space.paper_sample(), shape, data))
            full_arch = arch_path
            rows += _train_rows(arch_path, folder, data, variant, args.seeds, args.epochs)
        unet = create_space("unet", **dims)
        arch_path = args.out / data / "unet" / "arch.json"
        write_arch(arch_path, fixed_arch(unet, plain_unet_sample(unet), shape, data))
        rows += _train_rows(arch_path, arch_path.parent, data, "U-Net", args.seeds, args.epochs)
        if args.tune_trials:
            weights = tune_weights(full_arch, args.out / data / "tune", args.tune_trials,
                                   args.tune_epochs)
            space = create_space("task_decomp", knobs=weights, **dims)
            arch_path = args.out / data / "tuned" / "arch.json"
            write_arch(arch_path, fixed_arch(space, space.paper_sample(), shape, data))
            label = "tuned (" + ", ".join(f"{k} {v:.2f}" for k, v in weights.items()) + ")"
            rows += _train_rows(arch_path, arch_path.parent, data, label, args.seeds, args.epochs)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """Mean ± sd over seeds per data set and variant (``-``: a net without that head)."""
    return summary_table(rows, ["data", "variant"], METRICS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["demo2d", "demo3d"])
    parser.add_argument("--out", type=Path, default=Path("bench/task_decomp"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--tune-trials", type=int, default=8,
                        help="Optuna trials over w1, w2, w3 (0: no tuning row).")
    parser.add_argument("--tune-epochs", type=int, default=6, help="Retrain epochs of a trial.")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: demo2d, 1 seed, 3 epochs, features 4, 2 trials")
    args = parser.parse_args()
    if args.quick:
        args.data, args.seeds, args.epochs, args.features = ["demo2d"], 1, 3, 4
        args.tune_trials, args.tune_epochs = 2, 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run(args)
    save_report(args.out, "ablation", args, rows, markdown(rows))


if __name__ == "__main__":
    main()
