"""Do given networks differ, retrained many times at the same retrain seeds?

    python benchmarks/compare_nets.py runs/search/arch.json --fixed-variant UNet \\
        --data demo3d --retrain-seeds 16 --first-seed 5000 --jobs 2 --out bench/compare

The search-quality benchmark pairs nets by search seed, one or a few retrains each, and a
retrain's own draw (init, data order, which development cases validate) moves a net's Dice as
much as the nets differ. Here the nets are fixed ``arch.json`` files (a derived net, a random
one, a hand-written one, or ``--fixed-variant``: the space's variant with nothing searched),
each retrained from scratch at every seed of ``--first-seed`` ... with one budget, on the
development cases of ``--data``, and scored on its held-out cases as
``benchmarks/search_quality.py`` scores them. Every net minus the baseline is then tested seed
by seed: the same seed gives every net the same draw of cases, so what it moves alike cancels.

``--resume`` reuses the retrains that finished and continues killed ones from their checkpoints.
Writes ``OUT/compare_nets.json`` (every retrain) and ``OUT/compare_nets.md`` (the summary).
"""
from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import os
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Sequence

import torch

from nasseg.artifacts.arch_file import read_arch
from nasseg.artifacts.files import FileFormatError, error_line, write_json
from nasseg.cli.options import parse_patch_size
from nasseg.data import DEMO_SETS, DataError
from nasseg.searches.random_arch import random_architecture
from nasseg.space import create_space
from report import group_rows, mean_sd, paired_evidence, report_settings, save_report
from search_quality import (FRESH_CASES, SETTINGS, VARIANTS, HeldOut, add_retrain_options,
                            at_least_one, check_out_folder, held_out_sets, retrain_once)

#: Options that decide which retrains a comparison holds, not how each runs: a resumed
#: comparison may add nets or seeds (and change its baseline); the others must match.
EXTENT_OPTIONS = {"out", "nets", "fixed_variant", "baseline", "retrain_seeds", "first_seed",
                  "jobs", "resume"}


def named_net(text: str) -> tuple[str, Path]:
    """A net on the command line: ``LABEL=PATH`` or ``PATH`` (an arch file or a trained run
    folder, labelled by its parent folder and its name without suffix, e.g. ``search/arch``)."""
    label, sep, path = text.partition("=")
    if sep:
        return label, Path(path)
    given = Path(text)
    return "/".join(filter(None, (given.parent.name, given.stem))), given


def fixed_variant_net(args: argparse.Namespace, first: dict[str, Any], dev: str) -> Path:
    """Write the arch file of the first net's space in variant ``args.fixed_variant`` (every
    knob of it set, nothing left to search) into ``OUT``, with the first net's space settings
    and those of its knobs the variant has too (UXNet's ``image_skip``, say), so that the two
    nets differ only in what the variant fixes."""
    space = first["space"]
    path = args.out / f"arch-{args.fixed_variant}.json"
    variant = VARIANTS[space][args.fixed_variant]
    declared = create_space(space, knobs=variant, **first["space_args"]).knob_specs
    knobs = {**{k: v for k, v in first["knobs"].items() if k in declared}, **variant}
    _, arch = random_architecture(space, dev, 0, path, knobs, first["space_args"])
    if any(entry["kind"] != "knob" for entry in arch["choices"].values()):
        raise SystemExit(f"error: --fixed-variant {args.fixed_variant}: the {space} space "
                         "still has choices to search in it, so it is not one fixed net")
    return path


def retrain_net(args: argparse.Namespace, dev: str, tests: list[HeldOut], label: str,
                arch_path: Path, seed: int) -> dict[str, Any]:
    """One retrain of one net at one seed, scored on the held-out cases (run in a worker)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.jobs > 1:  # retrains run side by side: share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.jobs))
    out = args.out / f"seed{seed}" / label.replace("/", "-")
    outcome = retrain_once(arch_path, out, tests, args, seed, data=dev)
    logging.info("seed %d %s: held-out Dice %.3f", seed, label, outcome["dice_test"])
    return {"net": label, "arch": str(arch_path), "seed": seed, **outcome}


def summarize(rows: list[dict[str, Any]], baseline: str) -> str:
    """Per net: its retrains' mean ± sd; per seed: each net's Dice; every net minus the baseline
    paired by seed; and how much of a retrain's Dice the seed moves for every net alike."""
    by_net = group_rows(rows, lambda r: r["net"])
    lines = ["| net | retrains | held-out Dice | val Dice | parameters | GFLOPs | retrain s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for net, rs in by_net.items():
        lines.append(f"| {net} | {len(rs)} | {mean_sd(r['dice_test'] for r in rs)} | "
                     f"{mean_sd(r['dice_val'] for r in rs)} | {rs[0]['params']:,} | "
                     f"{rs[0]['flops'] / 1e9:.2f} | "
                     f"{statistics.mean(r['train_seconds'] for r in rs):.0f} |")
    dice = {net: {r["seed"]: r["dice_test"] for r in rs} for net, rs in by_net.items()}
    seeds = sorted({r["seed"] for r in rows})
    lines += ["", "| retrain seed | " + " | ".join(dice) + " |", "|" + " --- |" * (len(dice) + 1)]
    lines += [f"| {seed} | " + " | ".join(f"{d[seed]:.3f}" if seed in d else "-"
                                          for d in dice.values()) + " |" for seed in seeds]
    if baseline in dice:
        paired = []
        for net, mine in dice.items():
            common = sorted(set(mine) & set(dice[baseline]))
            if net == baseline or len(common) < 2:
                continue
            diffs = [mine[s] - dice[baseline][s] for s in common]
            paired.append(f"- {net}: {mean_sd(diffs, signed=True)}, better at "
                          f"{sum(d > 0 for d in diffs)} of {len(diffs)} seeds "
                          f"({paired_evidence(diffs)})")
        if paired:
            lines += ["", f"Paired by retrain seed (held-out Dice, net minus {baseline}):",
                      *paired]
    lines += seed_effect(dice)
    return "\n".join(lines)


def seed_effect(dice: dict[str, dict[int, float]]) -> list[str]:
    """How far the retrain seed moves every net alike, against what is left of a retrain once
    its net and its seed are accounted for: a two-way fit (net + seed) over the seeds every net
    finished, the seed's share estimated as the variance of the seeds' means less what the
    residual alone gives a mean of that many nets. Pairing by seed removes only that share."""
    seeds = sorted(set.intersection(*(set(d) for d in dice.values())))
    if len(dice) < 2 or len(seeds) < 3:
        return []
    grand = statistics.mean(d[s] for d in dice.values() for s in seeds)
    net_mean = {net: statistics.mean(d[s] for s in seeds) for net, d in dice.items()}
    seed_mean = {s: statistics.mean(d[s] for d in dice.values()) for s in seeds}
    residual = [d[s] - net_mean[net] - seed_mean[s] + grand
                for net, d in dice.items() for s in seeds]
    dof = (len(dice) - 1) * (len(seeds) - 1)
    left = sum(r * r for r in residual) / dof
    shared = max(0.0, statistics.variance(seed_mean.values()) - left / len(dice))
    return ["", f"The retrain seed: it moves every net alike by sd {math.sqrt(shared):.4f} "
                f"(over {len(seeds)} seeds); once each net's mean and each seed's are removed, "
                f"sd {math.sqrt(left):.4f} is left ({dof} degrees of freedom). Pairing by seed "
                "removes the first from a difference, not the second."]


def read_nets(args: argparse.Namespace) -> dict[str, Path]:
    """The nets by label, each arch file read and checked (and the fixed variant named) before
    anything is written."""
    labels = [label for label, _ in args.nets] + list(filter(None, [args.fixed_variant]))
    twice = next((label for label in labels if labels.count(label) > 1), None)
    if twice:
        raise SystemExit(f"error: two nets are labelled {twice}; name them LABEL=PATH")
    try:
        spaces = [read_arch(path)["space"] for _, path in args.nets]
    except FileFormatError as exc:
        raise SystemExit(f"error: {exc}") from None
    space = spaces[0]  # the fixed variant is built in the first net's space
    variants = VARIANTS.get(space, {})
    if args.fixed_variant and args.fixed_variant not in variants:
        raise SystemExit(f"error: --fixed-variant {args.fixed_variant}: the {space} space has "
                         f"{', '.join(variants) or 'no variants'}")
    return dict(args.nets)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nets", nargs="+", type=named_net, metavar="[LABEL=]ARCH",
                        help="The nets' arch.json files (derived, random or written by hand).")
    parser.add_argument("--fixed-variant", default=None, metavar="VARIANT",
                        help="Add the first net's space in this variant, nothing searched "
                             "(UXNet: UNet), labelled by it.")
    parser.add_argument("--baseline", default=None, metavar="LABEL",
                        help="The net every other is set against [default: the fixed "
                             "variant if given, else the last net given].")
    parser.add_argument("--data", default="demo3d",
                        help="A demo set, a data set folder (MSD or nnU-Net v2) or a .npz file: "
                             "the nets retrain on its development cases [default: %(default)s].")
    parser.add_argument("--out", type=Path, default=Path("bench/compare_nets"),
                        help="Folder of the retrains and the report [default: %(default)s].")
    parser.add_argument("--retrain-seeds", type=at_least_one, default=8, metavar="N",
                        help="Retrains of every net, one per seed [default: %(default)s].")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="The seeds run from this one on [default: %(default)s].")
    parser.add_argument("--jobs", type=at_least_one, default=1,
                        help="Retrains run side by side in this many processes (threads shared).")
    add_retrain_options(parser)
    parser.add_argument("--patch-size", type=parse_patch_size, default=None, metavar="SIZE",
                        help="Patch size of every retrain [default: the data set's].")
    parser.add_argument("--resume", action="store_true",
                        help="Continue a comparison in --out: reuse its finished retrains, "
                             "continue killed ones, run what is missing (more nets or seeds).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.fresh_test is None:
        args.fresh_test = FRESH_CASES if args.data in DEMO_SETS else 0
    nets = read_nets(args)
    labels = [*nets, *filter(None, [args.fixed_variant])]
    if len(labels) < 2:
        raise SystemExit("error: a comparison needs two nets or more (add --fixed-variant)")
    baseline = args.baseline or labels[-1]
    if baseline not in labels:
        raise SystemExit(f"error: --baseline {baseline}: no such net (nets: "
                         f"{', '.join(labels)})")
    seeds = range(args.first_seed, args.first_seed + args.retrain_seeds)
    check_out_folder(args, seeds, EXTENT_OPTIONS)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        dev, tests = held_out_sets(args.data, args.test_fraction, args.fresh_test, args.out)
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.fixed_variant:
        nets[args.fixed_variant] = fixed_variant_net(args, read_arch(nets[labels[0]]), dev)
    for seed in seeds:  # what a seed's retrains are made with, for a later --resume to check
        if not (args.out / f"seed{seed}" / SETTINGS).exists():
            write_json(args.out / f"seed{seed}" / SETTINGS, report_settings(args))
    rows: list[dict[str, Any]] = []
    failed: dict[tuple[int, str], str] = {}
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = {pool.submit(retrain_net, args, dev, tests, label, path, seed): (seed, label)
                for seed in seeds for label, path in nets.items()}  # a seed's nets together
        for done in as_completed(runs):  # the report is rewritten after every retrain
            try:
                rows.append(done.result())
            except Exception as exc:
                logging.error("seed %d %s failed", *runs[done], exc_info=exc)
                failed[runs[done]] = error_line(exc)
                continue
            rows.sort(key=lambda r: (r["seed"], list(nets).index(r["net"])))
            save_report(args.out, "compare_nets", args, rows, summarize(rows, baseline))
    if failed:
        (seed, label), line = min(failed.items())
        raise SystemExit(f"error: {len(failed)} retrain{'s' * (len(failed) > 1)} failed "
                         f"(seed {seed} {label}: {line}); the report holds the others, and "
                         "--resume reuses every retrain that finished")


if __name__ == "__main__":
    main()
