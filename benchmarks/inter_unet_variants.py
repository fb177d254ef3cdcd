"""Inter-U-Net's variants at equal budget: does intermediate supervision help small objects, does
the tied-weight decoder train faster (the paper's two claims; it gives no numbers)?

Every supervision variant of the ``inter_unet`` space on both backbones (U-Net, and U-Net++ with
every nested node) is trained from scratch with the same epochs, steps, learning rate and seed;
the blocks are fixed (3x3(x3) pairs, every skip kept), so variants differ only in their
training-only parts and loss. Per run: whole-case Dice (sliding window, the kept epoch), the
small-object Dice of that epoch's validation (per-object Dice of the objects no larger than a
ball of radius 5), the epochs until the validation Dice first reaches 95 % of the kept epoch's,
the wall time, the inference parameter count (equal for every variant of a backbone) and, for
the intermediate variants, the trained network's L_j (JSON only).

    python benchmarks/inter_unet_variants.py --out bench/inter_unet        # all: 2 x 2 x 7 x 3
    python benchmarks/inter_unet_variants.py --quick   # smoke run: demo2d, U-Net, none/inter/tw/twi

Writes ``OUT/variants.json`` and ``OUT/variants.md`` and prints the table.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import torch

from nasseg.artifacts.arch_file import write_arch
from nasseg.data import load_data
from nasseg.derive.derive import derive_architecture
from nasseg.export import load_trained
from nasseg.space import SearchSpace, create_space
from nasseg.spaces.inter_unet import VARIANTS
from nasseg.training.trainer import TrainConfig, train_architecture
from report import save_report, summary_table

METRICS = ("dice_mean", "small_dice", "epochs_to_95", "seconds")


def plain_arch(space: SearchSpace, input_shape: list[int], data: str) -> dict[str, Any]:
    """``arch.json`` content of the fixed backbone: the first candidate of every op choice, every
    connection kept (the whole U-Net or U-Net++)."""
    sample = space.default_sample()
    scores: dict[str, dict[str, Any]] = {"op": {}, "connection": {}}
    for label, info in space.choice_infos.items():
        if info.kind == "op":
            scores["op"][label] = {"probs": [float(c == sample[label]) for c in info.candidates]}
        elif info.kind == "connection":
            scores["connection"][label] = {"probs": [1.0] * len(info.candidates)}
    return {**derive_architecture(space, scores, 0.5, input_shape), "data": data}


def epochs_to(history: list[dict[str, Any]], target: float) -> int:
    """The first epoch (1-based) whose validation Dice reaches ``target``."""
    return next(i + 1 for i, h in enumerate(history) if h["dice_mean"] >= target)


@torch.no_grad()
def intermediate_mse(train_dir: Path, cases: Any, n: int = 4) -> list[float] | None:
    """L_j of the trained network on its first ``n`` cases (training mode, so the mask branch
    runs): do the intermediate terms stay non-trivial once trained? None without them."""
    model, _ = load_trained(train_dir)
    model.train()
    batch = {"image": torch.stack([torch.as_tensor(cases.case(i).image) for i in range(n)]),
             "label": torch.stack([torch.as_tensor(cases.case(i).label) for i in range(n)])}
    terms = model.loss_terms(model.forward_batch(batch), batch)
    values = [float(terms[f"inter{j}"]) for j in range(model.levels) if f"inter{j}" in terms]
    return values or None


def run(datasets: list[str], backbones: list[str], variants: list[str], seeds: int, epochs: int,
        steps: int | None, features: int, levels: int, out: Path) -> list[dict[str, Any]]:
    rows = []
    for data in datasets:
        cases = load_data(data)
        shape = [cases.in_channels, *cases.patch_size]
        for backbone in backbones:
            for variant in variants:
                space = create_space("inter_unet", knobs={"backbone": backbone,
                                                          "supervision": variant},
                                     in_channels=cases.in_channels, num_classes=cases.num_classes,
                                     spatial_dims=cases.spatial_dims, features=features,
                                     levels=levels)
                folder = out / data / backbone / variant
                arch_path = folder / "arch.json"
                arch = plain_arch(space, shape, data)
                write_arch(arch_path, arch)
                for seed in range(seeds):
                    start = time.perf_counter()
                    metrics = train_architecture(
                        arch_path, folder / f"seed{seed}", None,
                        TrainConfig(epochs=epochs, seed=seed, steps_per_epoch=steps))
                    history = torch.load(folder / f"seed{seed}" / "checkpoint.pt",
                                         weights_only=False)["history"]
                    kept = metrics["validation"]["dice_mean"]
                    row = {"data": data, "backbone": backbone, "variant": variant, "seed": seed,
                           "seconds": round(time.perf_counter() - start, 1),
                           "dice_mean": metrics["dice_mean"],
                           "small_dice": metrics["validation"]["small_dice"],
                           "val_dice": kept, "epochs_to_95": epochs_to(history, 0.95 * kept),
                           "best_epoch": metrics["best_epoch"], "params": metrics["params"],
                           "inter_mse": intermediate_mse(folder / f"seed{seed}", cases),
                           "curve": [round(h["dice_mean"], 4) for h in history]}
                    logging.info("%s", {k: v for k, v in row.items() if k != "curve"})
                    rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """Mean ± sd over seeds per data set, backbone and variant."""
    return summary_table(rows, ["data", "backbone", "variant"], METRICS,
                         {"params": lambda g: str(g[0]["params"])})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["demo3d", "demo2d"])
    parser.add_argument("--backbones", nargs="+", default=["unet", "unetpp"],
                        choices=["unet", "unetpp"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--out", type=Path, default=Path("bench/inter_unet"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--levels", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: demo2d, U-Net, none/inter/tw/twi, 1 seed, 3 epochs of "
                             "10 steps, features 4")
    args = parser.parse_args()
    if args.quick:
        args.data, args.backbones, args.variants = ["demo2d"], ["unet"], ["none", "inter", "tw",
                                                                           "twi"]
        args.seeds, args.epochs, args.steps_per_epoch, args.features = 1, 3, 10, 4
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run(args.data, args.backbones, args.variants, args.seeds, args.epochs,
               args.steps_per_epoch, args.features, args.levels, args.out)
    save_report(args.out, "variants", args, rows, markdown(rows))


if __name__ == "__main__":
    main()
