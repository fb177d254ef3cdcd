"""The main job as a user runs it: is `nasseg search`'s net better than the hand-made U-Net?

    python benchmarks/main_job.py --out bench/main_job     # about 20 min on 2 CPU cores

Runs ``nasseg search`` with the README's settings (no arguments besides ``--out``; with an
empty ``NASSEG_HOME`` of its own, so the demo's generation is timed too), then ``nasseg
train`` with default settings on its ``arch.json`` and on the space's U-Net ablation, with
``--seeds`` seeds each, every command in its own process as a user would type it. Each trained
net is scored on its validation cases (the network alone, and after the post-processing its
training decided) and on ``--fresh-test`` new cases of the demo's generator, which neither the
search nor the training saw: 8 validation cases are too few to tell two good nets apart.

Reports the search's wall time and peak memory, the derived net's size, and per seed the two
nets' Dice and their difference. Writes ``OUT/main_job.json`` and ``OUT/main_job.md``.
"""
from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from nasseg.artifacts.files import read_json
from nasseg.data import DEMO_SETS, fresh_demo_cases
from nasseg.searches.random_arch import random_architecture
from report import mean_sd, paired_evidence, save_report
from search_quality import FRESH_CASES, VARIANTS, held_out_scores

#: The hand-made baseline: the main job's space with nothing searched.
SPACE, BASELINE = "uxnet", "UNet"


def nasseg(args: list[str], env: dict[str, str]) -> float:
    """Run ``nasseg ARGS`` in its own process (this interpreter); its wall time in seconds.
    A failure ends the benchmark with the command's own error line.

    It runs in the benchmark's own folder (every path is absolute): in a checkout's root,
    ``python -m`` would import the source folder ``nasseg/``, which lacks the ``spaces`` and
    ``searches`` packages that only an install maps into it."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "nasseg.cli", *args], env=env,
                          cwd=env["NASSEG_HOME"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if done.returncode:
        said = done.stderr.strip().splitlines()
        raise SystemExit(f"error: nasseg {' '.join(args)} failed: "
                         f"{said[-1] if said else f'exit status {done.returncode}'}")
    return time.perf_counter() - start


def run_search(out: Path, data: str, extra: list[str], env: dict[str, str]) -> dict[str, Any]:
    """The main job: its wall time, peak memory (its process's resident set) and net."""
    seconds = nasseg(["search", "--data", data, "--out", str(out), *extra], env)
    arch = read_json(out / "arch.json", "derived architecture")
    return {"search_seconds": round(seconds, 1),
            "search_peak_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                                    / 1024),
            "derived_params": arch["params"], "supernet_params": arch["supernet_params"]}


def train_and_score(name: str, arch: Path, seed: int, out: Path, extra: list[str],
                    env: dict[str, str], tests: list) -> dict[str, Any]:
    """``nasseg train ARCH --seed SEED`` with default settings, scored: validation Dice of the
    network alone and after its post-processing, and Dice on the fresh cases."""
    folder = out / f"{name}-seed{seed}"
    seconds = nasseg(["train", str(arch), "--out", str(folder), "--seed", str(seed), *extra],
                     env)
    metrics = read_json(folder / "metrics.json", "training metrics")
    row = {"net": name, "seed": seed, "params": metrics["params"],
           "train_seconds": round(seconds, 1), "dice_val": metrics["dice_mean"],
           "dice_val_postprocessed": (metrics["postprocessing"] or {}).get(  # None: switched off
               "dice_mean_after", metrics["dice_mean"])}
    if tests:
        row.update(held_out_scores(folder, tests))
    return row


def summarize(search: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Per seed, the searched net's and the U-Net's Dice and the difference; their means."""
    scores = ["dice_val", "dice_val_postprocessed"] + (["dice_test"] if "dice_test" in rows[0]
                                                        else [])
    by_seed: dict[int, dict[str, dict]] = {}
    for r in rows:
        by_seed.setdefault(r["seed"], {})[r["net"]] = r
    lines = [f"Search: {search['search_seconds']:.0f} s, peak {search['search_peak_mb']} MB; "
             f"derived net {search['derived_params']:,} of {search['supernet_params']:,} "
             "parameters.",
             "", "| seed | " + " | ".join(f"{s}: searched / {BASELINE} / difference"
                                          for s in scores) + " |",
             "|" + " --- |" * (len(scores) + 1)]
    diffs: dict[str, list[float]] = {s: [] for s in scores}
    for seed, nets in sorted(by_seed.items()):
        cells = []
        for s in scores:
            mine, theirs = nets["searched"][s], nets[BASELINE][s]
            diffs[s].append(mine - theirs)
            cells.append(f"{mine:.3f} / {theirs:.3f} / {mine - theirs:+.3f}")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines.append("| mean ± sd | " + " | ".join(
        f"{mean_sd(r[s] for r in rows if r['net'] == 'searched')} / "
        f"{mean_sd(r[s] for r in rows if r['net'] == BASELINE)} / "
        f"{mean_sd(diffs[s], signed=True)}, ahead at {sum(d > 0 for d in diffs[s])} of "
        f"{len(diffs[s])}" for s in scores) + " |")
    if len(by_seed) > 1:
        lines += ["", "Median difference: " + ", ".join(
            f"{s} {statistics.median(diffs[s]):+.3f} (the mean's {paired_evidence(diffs[s])})"
            for s in scores)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/main_job"),
                        help="Folder of the runs and the report [default: %(default)s].")
    parser.add_argument("--data", default="demo3d",
                        help="The main job's data set [default: %(default)s].")
    parser.add_argument("--seeds", type=int, default=3,
                        help="Training seeds of each net [default: %(default)s].")
    parser.add_argument("--jobs", type=int, default=2,
                        help="Trainings side by side, the cores shared [default: %(default)s].")
    parser.add_argument("--fresh-test", type=int, default=None, metavar="N",
                        help=f"New cases of a demo set's generator to score on [default: "
                             f"{FRESH_CASES} for a demo set, else 0].")
    parser.add_argument("--search-args", default="", metavar="ARGS",
                        help="Added to `nasseg search` (a smoke run: '--epochs 2') "
                             "[default: none, the main job].")
    parser.add_argument("--train-args", default="", metavar="ARGS",
                        help="Added to every `nasseg train` [default: none].")
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"error: {args.out} exists; a benchmark's runs are never overwritten")
    args.out = args.out.resolve()
    if Path(args.data).exists():
        args.data = str(Path(args.data).resolve())
    (args.out / "home").mkdir(parents=True)
    fresh = (FRESH_CASES if args.data in DEMO_SETS else 0) if args.fresh_test is None \
        else args.fresh_test
    os.environ["NASSEG_HOME"] = str(args.out / "home")  # here and in every command
    env = dict(os.environ)
    search = run_search(args.out / "search", args.data, shlex.split(args.search_args), env)
    print(f"search: {search['search_seconds']:.0f} s, {search['derived_params']:,} parameters",
          flush=True)
    baseline, _ = random_architecture(SPACE, args.data, 0, args.out / f"{BASELINE}-arch.json",
                                      VARIANTS[SPACE][BASELINE], {})
    tests = [fresh_demo_cases(args.data, fresh)] if fresh else []
    threads = str(max(1, (os.cpu_count() or 1) // args.jobs))
    torch.set_num_threads(int(threads))  # the scoring shares the cores with the trainings
    jobs = [(name, arch, seed) for seed in range(args.seeds)
            for name, arch in (("searched", args.out / "search" / "arch.json"),
                               (BASELINE, baseline))]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: train_and_score(
            *job, args.out, shlex.split(args.train_args), dict(env, OMP_NUM_THREADS=threads),
            tests), jobs))
    for r in rows:
        r.update(search)  # every row: the main job it belongs to
    save_report(args.out, "main_job", args, rows, summarize(search, rows))


if __name__ == "__main__":
    main()
