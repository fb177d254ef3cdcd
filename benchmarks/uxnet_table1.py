"""Reproduce the shape of UXNet's Table 1 on a data set: UNet / SBB only / MSSA only / both.

Each variant of the ``uxnet`` space (its ablation knobs) is searched with the same budget,
derived at each tau (only variants with gates depend on tau), retrained from scratch with the
same budget, and scored by validation Dice and parameter count.

    python benchmarks/uxnet_table1.py --data demo3d --out bench/table1

Writes ``OUT/table1.json`` and ``OUT/table1.md`` and prints the table.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from nasseg.derive import derive_run
from nasseg.searches.darts import SearchConfig
from nasseg.searches.darts.run import start_search
from nasseg.training.trainer import TrainConfig, train_architecture
from report import save_report

VARIANTS = {
    "UNet": {"sbb": False, "mssa": False},
    "SBB only": {"sbb": True, "mssa": False},
    "MSSA only": {"sbb": False, "mssa": True},
    "SBB + MSSA": {"sbb": True, "mssa": True},
}
TAUS = (0.6, 0.75, 0.9)


def run(data: str, out: Path, search_epochs: int, train_epochs: int, features: int,
        levels: int, arch_lr: float, seed: int) -> list[dict]:
    rows = []
    for name, knobs in VARIANTS.items():
        folder = out / name.replace(" ", "").replace("+", "_")
        start = time.perf_counter()
        config = SearchConfig(epochs=search_epochs, warmup_epochs=search_epochs // 4,
                              arch_lr=arch_lr, seed=seed)
        start_search(folder / "search", "uxnet", data, knobs,
                     {"features": features, "levels": levels}, config, show_progress=False)
        search_s = time.perf_counter() - start
        for tau in TAUS if knobs["mssa"] else (None,):
            arch_path, arch = derive_run(folder / "search", tau,
                                         folder / f"arch-{tau or 'fixed'}.json")
            start = time.perf_counter()
            metrics = train_architecture(arch_path, folder / f"train-{tau or 'fixed'}", None,
                                         TrainConfig(epochs=train_epochs, seed=seed))
            rows.append({"variant": name, "tau": tau, "dice_mean": metrics["dice_mean"],
                         "dice_per_class": metrics["dice_per_class"], "params": arch["params"],
                         "supernet_params": arch["supernet_params"], "flops": arch["flops"],
                         "search_seconds": round(search_s, 1),
                         "train_seconds": round(time.perf_counter() - start, 1)})
            logging.info("%s tau=%s: Dice %.3f, %d params", name, tau, metrics["dice_mean"],
                         arch["params"])
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| variant | tau | Dice (mean) | parameters | GFLOPs |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        tau = "-" if r["tau"] is None else r["tau"]
        lines.append(f"| {r['variant']} | {tau} | {r['dice_mean']:.3f} | {r['params']:,} | "
                     f"{r['flops'] / 1e9:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="demo3d")
    parser.add_argument("--out", type=Path, default=Path("bench/table1"))
    parser.add_argument("--search-epochs", type=int, default=25)
    parser.add_argument("--train-epochs", type=int, default=30)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--arch-lr", type=float, default=3e-2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run(args.data, args.out, args.search_epochs, args.train_epochs, args.features,
               args.levels, args.arch_lr, args.seed)
    save_report(args.out, "table1", args, rows, markdown(rows))


if __name__ == "__main__":
    main()
