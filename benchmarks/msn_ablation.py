"""The shape of MSN's ablations (Tables 3-5) at equal budget: where Mem-RMs go, weight sharing,
and plain vs meta fusion.

Per seed, one search of the ``msn`` space (the gap gates move in its ``memrm`` stage) gives the
searched gap layers; the paper's rule (:func:`gap_statistics` through the search's trained
meta-branch, top k with k = the number of gaps the search kept per branch) gives the hand-picked
ones. Every variant is then trained from scratch through the three stages with the same epochs
and steps, and scored by the validation patches' mIoU of each branch (against its own field's
labels) and of the fusion, plus the fusion's whole-image IoU by sliding window with each
window's context cut from the whole validation image (the label never reaches the network).

Variants: ``meta_branch`` (no Mem-RM, Table 3), ``multi_branch`` (three backbones, no Mem-RM,
Table 3), ``searched``, ``hand_picked``, ``non_gap`` (the layers the rule left out, Table 4),
``all_layers``, ``plain_fusion`` (the searched net, Table 5 "w/o Meta").

    python benchmarks/msn_ablation.py --out bench/msn                 # demo_slides, 3 seeds
    OMP_NUM_THREADS=1 python benchmarks/msn_ablation.py --quick --out bench/msn-quick

Writes ``OUT/msn_ablation.json`` and ``OUT/msn_ablation.md`` and prints the table.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import torch

from nasseg.artifacts.arch_file import write_arch
from nasseg.data import load_data
from nasseg.derive import count_parameters
from nasseg.derive.derive import derive_run
from nasseg.runtime.loaders import EpochLoader
from nasseg.searches.darts.config import SearchConfig
from nasseg.searches.darts.run import start_search
from nasseg.space import create_space
from nasseg.spaces.msn import MSNSpace, gap_statistics, stats_sample
from nasseg.training.trainer import TrainConfig, train_architecture
from report import save_report, summary_table

logger = logging.getLogger("msn_ablation")

VARIANTS = ("meta_branch", "multi_branch", "searched", "hand_picked", "non_gap", "all_layers",
            "plain_fusion")
METRICS = ("miou_x1", "miou_x2", "miou_x3", "miou_fusion", "whole_iou", "params")


def _gaps(space: MSNSpace, sample: dict[str, Any]) -> dict[str, list[int]]:
    """The gap layers (Mem-RM kept) of each branch in ``sample``."""
    return {b: [lvl for lvl in range(1, space.num_layers + 1)
                if 1 in sample[space.gap_label(b, lvl)[0]]] for b in ("x1", "x2")}


def variant_samples(space: MSNSpace, searched: dict[str, Any], stats: dict[str, Any]
                    ) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Each variant's (knobs, sample) from the search's derived sample and the statistics. The
    rule picks as many layers per branch as the search kept (on average), at least one and at
    most L - 1 (so ``non_gap`` has layers)."""
    found = _gaps(space, searched)
    k = min(max(1, round(sum(map(len, found.values())) / 2)), space.num_layers - 1)
    picked = stats_sample(space, stats, k)
    layers = range(1, space.num_layers + 1)
    return {
        "meta_branch": ({}, space.gap_sample([])),
        "multi_branch": ({"share_weights": False}, space.gap_sample([])),
        "searched": ({}, searched),
        "hand_picked": ({}, picked),
        "non_gap": ({}, space.gap_sample({b: [lvl for lvl in layers if lvl not in g]
                                          for b, g in _gaps(space, picked).items()})),
        "all_layers": ({}, space.gap_sample(list(layers))),
        "plain_fusion": ({"fusion": "plain"}, searched),
    }


def _meta_statistics(space: MSNSpace, search_dir: Path, data: Any, config: SearchConfig,
                     batches: int) -> dict[str, Any]:
    """Fig. 1's statistics through the search's trained meta-branch (its backbone weights)."""
    state = torch.load(search_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    backbone = {k: v for k, v in state["model"].items() if k.startswith("backbone.")}
    missing = space.load_state_dict(backbone, strict=False).missing_keys
    assert not any(k.startswith("backbone.") for k in missing), "backbone weights missing"
    loader = EpochLoader(data, list(range(data.num_cases)), config.batch_size, True, config.seed,
                         0, config.patch_size, space.data_view())
    return gap_statistics(space, itertools.islice(loader.steps(0, batches), batches))


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    data = load_data(args.data)
    patch = (args.patch,) * 2
    space_args = {"features": args.features, "levels": args.levels,
                  "downsamples": list(args.downsamples)}
    rows = []
    for seed in range(args.seeds):
        root = args.out / f"seed{seed}"
        search_dir = root / "search"
        config = SearchConfig(epochs=args.epochs, warmup_epochs=0, device=args.device,
                              seed=seed, patch_size=patch, steps_per_epoch=args.steps,
                              batch_size=args.batch_size, arch_lr=args.arch_lr,
                              val_fraction=args.val_fraction,
                              extend_unlearned=0)  # every variant at the same budget
        start = time.perf_counter()
        start_search(search_dir, "msn", args.data, {}, space_args, config, show_progress=False)
        _, arch = derive_run(search_dir, tau=args.tau)
        space = create_space("msn", in_channels=data.in_channels, num_classes=data.num_classes,
                             spatial_dims=2, **space_args)
        stats = _meta_statistics(space, search_dir, data, config, args.stat_batches)
        search_seconds = round(time.perf_counter() - start, 1)
        logger.info("seed %d: search %.0fs, searched gaps %s", seed, search_seconds,
                     _gaps(space, arch["sample"]))
        samples = variant_samples(space, arch["sample"], stats)
        for variant in args.variants:
            knobs, sample = samples[variant]
            variant_space = create_space("msn", knobs=knobs, in_channels=data.in_channels,
                                         num_classes=data.num_classes, spatial_dims=2,
                                         **space_args)
            full = {**sample, **variant_space.knob_values}
            derived = variant_space.freeze(full)
            folder = root / variant
            arch_path = folder / "arch.json"
            params = count_parameters(derived)
            write_arch(arch_path, {**arch, "knobs": dict(variant_space.knob_values),
                                   "sample": full, "params": params})
            start = time.perf_counter()
            metrics = train_architecture(arch_path, folder / "train", None, TrainConfig(
                epochs=args.epochs, seed=seed, device=args.device, patch_size=patch,
                steps_per_epoch=args.steps, batch_size=args.batch_size, lr=args.lr,
                val_fraction=args.val_fraction))
            row = {"variant": variant, "seed": seed, "gaps": _gaps(space, full),
                   "seconds": round(time.perf_counter() - start, 1),
                   "search_seconds": search_seconds,
                   **{m: metrics["validation"][m] for m in METRICS[:4]},
                   "whole_iou": metrics["iou_mean"], "params": params}
            logger.info("%s", row)
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """Mean ± sd over seeds per variant; the gap layers of every seed."""
    def params(group: list[dict[str, Any]]) -> str:
        values = [r["params"] for r in group]
        return str(values[0]) if len(set(values)) == 1 else f"{min(values)}-{max(values)}"

    def gaps(group: list[dict[str, Any]]) -> str:
        return " / ".join(f"{r['gaps']['x1']}; {r['gaps']['x2']}" for r in group)

    return summary_table(rows, ["variant"], [m for m in METRICS if m != "params"],
                         {"gaps (x1; x2)": gaps, "params": params})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="demo_slides",
                        help="data set (default demo_slides; demo2d or a folder also work)")
    parser.add_argument("--out", type=Path, default=Path("bench/msn"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10, help="per run (stages 3:1:1)")
    parser.add_argument("--steps", type=int, default=40, help="weight steps per epoch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--downsamples", type=int, nargs=3, default=[1, 4, 16])
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--arch-lr", type=float, default=0.05)
    parser.add_argument("--stat-batches", type=int, default=8)
    parser.add_argument("--tau", type=float, default=0.5, help="derive threshold of the gates")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="held-out images (whole-image scores; demo_slides: 2 of 8)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--quick", action="store_true",
                        help="reduced run: 1 seed, 5 epochs of 20 steps, 1 held-out image")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.steps, args.val_fraction = 1, 5, 20, 0.125
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run(args)
    save_report(args.out, "msn_ablation", args, rows, markdown(rows))


if __name__ == "__main__":
    main()
