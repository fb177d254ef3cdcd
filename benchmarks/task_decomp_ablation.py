"""The shape of TDSNet's ablation (Tables 3, 4, 6): Base, +class, +class+sync, +class+sync+scene.

The paper's network (``TaskDecompSpace.paper_sample``) is trained from scratch through its three
stages with each variant's loss weights; every variant gets the same epochs, stages and learning
rates, so they differ only in the terms they train (Base: w1 = w2 = w3 = 0, the segmentation
alone). Scored by validation Dice, per-image mean IoU and class-presence accuracy, over seeds.

    python benchmarks/task_decomp_ablation.py --data demo2d demo3d --out bench/task_decomp
    python benchmarks/task_decomp_ablation.py --quick      # smoke run: demo2d, 1 seed, 3 epochs

Writes ``OUT/ablation.json`` and ``OUT/ablation.md`` and prints the table.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from nasseg.artifacts.arch_file import write_arch
from nasseg.data import load_data
from nasseg.derive.derive import derive_architecture
from nasseg.space import SearchSpace, create_space
from nasseg.training.trainer import TrainConfig, train_architecture
from report import save_report

VARIANTS = {
    "Base": {"w1": 0.0, "w2": 0.0, "w3": 0.0},
    "+class": {"w2": 0.0, "w3": 0.0},
    "+class+sync": {"w2": 0.0},
    "+class+sync+scene": {},
}
METRICS = ("dice_mean", "miou", "cls_acc")


def paper_arch(space: SearchSpace, input_shape: list[int], data: str) -> dict[str, Any]:
    """``arch.json`` content of the paper's network: its sample given as certain scores."""
    sample = space.paper_sample()
    scores = {"op": {}, "connection": {}}
    for label, info in space.choice_infos.items():
        if info.kind == "op":
            scores["op"][label] = {"probs": [float(c == sample[label]) for c in info.candidates]}
        elif info.kind == "connection":
            scores["connection"][label] = {
                "probs": [float(i in sample[label]) for i in range(len(info.candidates))]}
    arch = derive_architecture(space, scores, 0.5, input_shape)
    assert arch["sample"] == sample, "the paper's sample did not survive derive"
    return {**arch, "data": data}


def run(datasets: list[str], seeds: int, epochs: int, features: int, out: Path
        ) -> list[dict[str, Any]]:
    rows = []
    for data in datasets:
        cases = load_data(data)
        shape = [cases.in_channels, *cases.patch_size]
        for variant, knobs in VARIANTS.items():
            space = create_space("task_decomp", knobs=knobs, in_channels=cases.in_channels,
                                 num_classes=cases.num_classes, spatial_dims=cases.spatial_dims,
                                 features=features)
            folder = out / data / variant.replace("+", "_").strip("_")
            arch_path = folder / "arch.json"
            write_arch(arch_path, paper_arch(space, shape, data))
            for seed in range(seeds):
                start = time.perf_counter()
                metrics = train_architecture(arch_path, folder / f"seed{seed}", None,
                                             TrainConfig(epochs=epochs, seed=seed))
                row = {"data": data, "variant": variant, "seed": seed,
                       "seconds": round(time.perf_counter() - start, 1),
                       **{m: metrics["validation"][m] for m in METRICS}}
                logging.info("%s", row)
                rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """Mean ± sd over seeds per data set and variant."""
    lines = ["| data | variant | seeds | " + " | ".join(METRICS) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in METRICS) + " |"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["variant"]), []).append(r)
    for (data, variant), group in groups.items():
        cells = []
        for m in METRICS:
            values = [r[m] for r in group]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {sd:.3f}")
        lines.append(f"| {data} | {variant} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["demo2d", "demo3d"])
    parser.add_argument("--out", type=Path, default=Path("bench/task_decomp"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: demo2d, 1 seed, 3 epochs, features 4")
    args = parser.parse_args()
    if args.quick:
        args.data, args.seeds, args.epochs, args.features = ["demo2d"], 1, 3, 4
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run(args.data, args.seeds, args.epochs, args.features, args.out)
    save_report(args.out, "ablation", args, rows, markdown(rows))


if __name__ == "__main__":
    main()
