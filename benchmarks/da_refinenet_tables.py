"""The shape of DA-RefineNet's Tables I-II on demo_slides: fusion concat / add / attention /
searched, and dual vs single input, at equal training budget.

Every variant is the paper's network (``DARefineNetSpace.paper_sample``: one fusion in every
block) trained from scratch through the same three stages, epochs, steps and learning rates;
"searched" first searches the fusion of every block (DARTS, ``--search-epochs``) and retrains
the derived network with the same budget. "single" is ``dual=False`` (Table I's single-input
rows) with add fusion, against "add" (Table I's dual rows). Scored on the whole held-out slides
(sliding windows with context, the trainer's final evaluation): mIoU over the four classes,
pixel accuracy and the BACH score, mean ± sd over seeds.

    python benchmarks/da_refinenet_tables.py --out bench/da_refinenet
    python benchmarks/da_refinenet_tables.py --quick      # 1 seed, short budget

Writes ``OUT/tables.json`` and ``OUT/tables.md`` and prints the table.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from nasseg.artifacts.arch_file import write_arch
from nasseg.data import load_data
from nasseg.derive import read_arch
from nasseg.derive.derive import fixed_architecture
from nasseg.searches.darts import SearchConfig
from nasseg.searches.darts.run import start_search
from nasseg.space import SearchSpace, create_space
from nasseg.training.trainer import TrainConfig, train_architecture
from report import save_report, summary_table

#: variant -> (knobs, fusion of every block; None: searched)
VARIANTS: dict[str, tuple[dict[str, Any], str | None]] = {
    "concat": ({}, "concat"),
    "add": ({}, "add"),
    "attention": ({}, "attention"),
    "searched": ({}, None),
    "single (add)": ({"dual": False}, "add"),
}
METRICS = ("miou", "accuracy", "score")


def fixed_arch(space: SearchSpace, fusion: str, input_shape: list[int], data: str
               ) -> dict[str, Any]:
    """``arch.json`` of the paper's network with ``fusion`` everywhere (certain scores)."""
    return {**fixed_architecture(space, space.paper_sample(fusion), input_shape), "data": data}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    cases = load_data(args.data)
    shape = [cases.in_channels, *cases.patch_size]
    space_args = {"in_channels": cases.in_channels, "num_classes": cases.num_classes,
                  "features": args.features, "max_blocks": args.max_blocks}
    train = dict(epochs=args.epochs, steps_per_epoch=args.steps, batch_size=args.batch_size,
                 lr=args.lr, device="cpu")
    rows = []
    for variant, (knobs, fusion) in VARIANTS.items():
        for seed in range(args.seeds):
            folder = args.out / variant.split()[0] / f"seed{seed}"
            start = time.perf_counter()
            if fusion is None:
                result = start_search(folder / "search", "da_refinenet", args.data, knobs,
                                      space_args, SearchConfig(
                                          epochs=args.search_epochs, warmup_epochs=1, seed=seed,
                                          steps_per_epoch=args.steps,
                                          batch_size=args.batch_size, device="cpu",
                                          extend_unlearned=0),  # equal budgets
                                      show_progress=False)
                arch_path = result.arch_path
            else:
                space = create_space("da_refinenet", knobs=knobs, **space_args)
                arch_path = folder / "arch.json"
                write_arch(arch_path, fixed_arch(space, fusion, shape, args.data))
            metrics = train_architecture(arch_path, folder / "train", None,
                                         TrainConfig(seed=seed, **train))
            chosen = {label: choice["chosen"] for label, choice
                      in read_arch(folder / "train" / "arch.json")["choices"].items()
                      if choice["kind"] == "op"}
            row = {"variant": variant, "seed": seed, "fusions": chosen,
                   "seconds": round(time.perf_counter() - start, 1), "params": metrics["params"],
                   **{m: metrics["pooled"][m] for m in METRICS},
                   "val_patches_score": metrics["validation"]["score"]}
            logging.info("%s", row)
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """Mean ± sd over seeds per variant."""
    return summary_table(rows, ["variant"], METRICS, {"params": lambda g: f"{g[0]['params']:,}"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="demo_slides")
    parser.add_argument("--out", type=Path, default=Path("bench/da_refinenet"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--search-epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=40, help="weight steps per epoch")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--max-blocks", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="reduced run: 1 seed, 6 epochs of 20 steps, features 4")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.search_epochs, args.steps, args.features = 1, 6, 4, 20, 4
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run(args)
    save_report(args.out, "tables", args, rows, markdown(rows))


if __name__ == "__main__":
    main()
