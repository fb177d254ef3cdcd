"""Does the search beat what a user would write by hand, and random architectures, at equal cost?

    python benchmarks/search_quality.py --space uxnet --data demo3d --out bench/quality
    python benchmarks/search_quality.py --quick            # a smoke run: minutes on 2 CPU cores

For a space and a data set, over ``--seeds`` seeds, every method's network is retrained from
scratch with ONE budget (``--train-epochs`` of ``--train-steps`` steps, or ``--train-budget``
wall time) and scored on
held-out cases that neither the search nor the retrain's epoch selection saw (the last
``--test-fraction`` of the cases and, for a demo set, ``--fresh-test`` new cases of its
generator):

* each variant of the space (UXNet: its ablations UNet / SBB only / MSSA only / both), searched
  with the same settings and derived at every ``--taus`` value where it has gates;
* ``random``: ``--random`` architectures drawn per seed from the space as ``nasseg search``
  searches it by default, or from ``--random-variant``
  (:mod:`nasseg.searches.random_arch`), reported as their median and their best;
* the search's decisiveness (share of gates outside [0.3, 0.7]) and, over seeds, its stability
  (Jaccard index of kept connections, share of op choices alike);
* each searched method against the fixed network and the random median, paired by seed, with
  the standard error of the mean difference and a sign-flip test's p-value;
* with ``--retrains R``, every net retrained R times with its own seeds (its scores their mean),
  and how far one net's Dice moves between its retrains.

``--resume`` continues a killed or extended benchmark in ``--out``: finished searches and
retrains are reused, killed ones continue from their checkpoints, and only what is missing runs.

Writes ``OUT/search_quality.json`` (every run) and ``OUT/search_quality.md`` (the summary).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from nasseg.artifacts.files import error_line, read_json, write_json
from nasseg.artifacts.run_folder import RunFolder
from nasseg.cli.options import parse_patch_size
from nasseg.data import (DEMO_SETS, DataError, SegmentationData, fresh_demo_cases, load_data,
                         save_arrays)
from nasseg.data.formats import RawDataset, read_label, read_spacing
from nasseg.data.h5cache import build_cache
from nasseg.data.large_images import is_large_image_folder
from nasseg.data.source import verified_folder
from nasseg.derive import derive_run
from nasseg.derive.compare import agreement, gate_spread, kept_by_all
from nasseg.evaluation.folders import summarize_cases
from nasseg.evaluation.metrics import case_metrics
from nasseg.export import load_trained
from nasseg.inference import network_predict_fn, sliding_window_predict
from nasseg.inference.postprocess import remove_small_components
from nasseg.inference.predict import PredictionPlan, predict_case
from nasseg.runtime.device import resolve_device
from nasseg.searches.darts import SearchConfig
from nasseg.searches.darts.budget import FITS, check_budget
from nasseg.searches.darts.config import OP_SELECTIONS, SEARCH_STEPS_PER_EPOCH
from nasseg.searches.darts.relaxation import GATE_FORMS
from nasseg.searches.darts.run import resume_search, start_search
from nasseg.searches.random_arch import random_architecture
from nasseg.space import create_space
from nasseg.training.trainer import (TRAIN_EPOCHS, TRAIN_STEPS_PER_EPOCH, TrainConfig,
                                     resume_training, train_architecture)
from report import group_rows, mean_sd, paired_evidence, report_settings, save_report

#: The ablation variants of a space (knobs); a space without ablations has one variant.
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "uxnet": {"UNet": {"sbb": False, "mssa": False, "search_resampling": False},
              "SBB only": {"sbb": True, "mssa": False},
              "MSSA only": {"sbb": False, "mssa": True, "search_resampling": False},
              "SBB + MSSA": {"sbb": True, "mssa": True}},
}
FULL = {"uxnet": "SBB + MSSA"}
#: Retrain ``r`` of a net takes seed ``seed + RETRAIN_SEED_STRIDE * r``; retrain 0 takes the
#: seed itself, so ``--retrains 1`` is one retrain per net at the run's seed.
RETRAIN_SEED_STRIDE = 1000
#: A retrain whose held-out Dice on a class is under this has lost the class.
LOST_CLASS_DICE = 0.1
#: Fresh cases of a demo set scored beside its own held-out share: with demo3d's 8 alone, one
#: misclassified object moves a net's mean Dice by about 0.06, more than the nets differ.
FRESH_CASES = 96
#: A finished search's or retrain's outcome, kept in its run folder: ``--resume`` reuses it.
OUTCOME = "benchmark_outcome.json"
#: The settings a seed's runs were made with: ``OUT/seedN/benchmark_settings.json``.
SETTINGS = "benchmark_settings.json"
#: Options that decide which runs a benchmark holds, not how each runs: a resumed benchmark may
#: change them (add seeds, variants, taus, random nets or retrains); the others must match.
EXTENT_OPTIONS = {"out", "seeds", "first_seed", "jobs", "variants", "taus", "random", "retrains",
                  "resume"}


#: Held-out cases: an in-memory part of an array set, or the raw cases of a data set folder.
HeldOut = SegmentationData | RawDataset


def split_held_out(data: str, fraction: float, out: Path) -> tuple[str, HeldOut]:
    """The development cases as a data file (search and retrain see only these) and the
    held-out cases: the last ``fraction`` of the set, at least one.

    A data set folder's development cases are preprocessed on their own (spacing and CT
    statistics from them alone, as a user's training set would be); its held-out cases stay
    raw files, which :func:`held_out_scores` segments as ``nasseg predict`` would."""
    if Path(data).is_dir() and not is_large_image_folder(Path(data)):
        full: SegmentationData | RawDataset = verified_folder(Path(data))
        num_cases = len(full.cases)
    else:
        full = load_data(data)
        if not isinstance(full, SegmentationData):
            raise DataError(f"{data}: held-out cases are split from demo sets, .npz files and "
                            "folders of images and labels only")
        num_cases = full.num_cases
    n_test = max(1, round(num_cases * fraction))
    n_dev = num_cases - n_test
    if n_dev < 2:
        raise DataError(f"{data}: {num_cases} cases leave {n_dev} for the search after "
                        f"holding out {n_test}; it needs at least 2 (a weight and an "
                        "architecture half)")
    stem = out / Path(data).stem
    if isinstance(full, RawDataset):
        dev = build_cache(replace(full, cases=full.cases[:n_dev]), f"{stem}-dev.h5",
                          show_progress=False)
        return str(dev.path), replace(full, cases=full.cases[n_dev:])
    save_arrays(full.subset(range(n_dev)), f"{stem}-dev.npz")
    return f"{stem}-dev.npz", full.subset(range(n_dev, num_cases))


@torch.no_grad()
def held_out_labels(train_dir: Path, tests: Sequence[HeldOut]
                    ) -> Iterator[tuple[str, np.ndarray, np.ndarray, Any]]:
    """Every held-out case segmented by the trained network in ``train_dir``: whole cases by
    sliding window (raw cases on their own grid, through the training set's preprocessing),
    after the post-processing its training decided. Yields (case id, prediction, reference
    label map, voxel spacing or None)."""
    model, state = load_trained(train_dir)
    plan = PredictionPlan.from_dict(state["plan"])
    device = resolve_device("auto")
    model.to(device).eval()
    for test in tests:
        if isinstance(test, RawDataset):
            for raw in test.cases:
                label = predict_case(model, plan, raw, test.folder, device=device)
                yield raw.case_id, label, read_label(raw), read_spacing(raw)
            continue
        predict_fn = network_predict_fn(model)
        for i in range(test.num_cases):
            case = test.case(i)
            probs = sliding_window_predict(predict_fn, torch.from_numpy(case.image).to(device),
                                           plan.patch_size, view=model.data_view())
            label = remove_small_components(probs.argmax(0).cpu().numpy(), plan.min_component)
            yield case.case_id, label, case.label, None


def held_out_scores(train_dir: Path, tests: Sequence[HeldOut]) -> dict[str, Any]:
    """Dice of the trained network on every held-out set's cases (:func:`held_out_labels`):
    the mean foreground Dice over all of them, its mean per class, and each case's mean."""
    names = tests[0].class_names
    per_case = {case: case_metrics(label, ref, len(names), spacing=spacing, class_names=names)
                for case, label, ref, spacing in held_out_labels(train_dir, tests)}
    summary = summarize_cases(per_case, names)
    return {"dice_test": float(summary["mean_dice"]), "dice_test_classes": summary["dice"],
            "dice_test_cases": {case: m["mean_dice"] for case, m in per_case.items()}}


def held_out_sets(data: str, fraction: float, fresh: int, out: Path
                  ) -> tuple[str, list[HeldOut]]:
    """The development data file and the held-out sets: the split's last ``fraction`` and,
    for a demo set, ``fresh`` new cases of its generator (:func:`fresh_demo_cases`)."""
    dev, test = split_held_out(data, fraction, out)
    if not fresh:
        return dev, [test]
    if data not in DEMO_SETS:
        raise DataError(f"{data}: fresh held-out cases come from demo sets only")
    return dev, [test, fresh_demo_cases(data, fresh)]


def retrain(arch_path: Path, out: Path, tests: Sequence[HeldOut], args: argparse.Namespace,
            seed: int) -> dict[str, Any]:
    """Retrain the net ``args.retrains`` times from scratch (retrain ``r`` with seed ``seed +
    RETRAIN_SEED_STRIDE * r`` into ``out``, ``out-r1``...) and score each on the held-out cases.
    The row's scores are their means and ``retrains`` lists each: one retrain's Dice is noisy
    (on demo3d one net scored 0.40 to 0.94 by seed), more than the nets differ."""
    runs = [retrain_once(arch_path, out if r == 0 else out.with_name(f"{out.name}-r{r}"),
                         tests, args, seed + RETRAIN_SEED_STRIDE * r)
            for r in range(args.retrains)]
    first = runs[0]
    return {"params": first["params"], "flops": first["flops"],
            "train_epochs": first["train_epochs"],
            **{key: _mean([run[key] for run in runs])
               for key in ("dice_test", "dice_val", "train_seconds")},
            **{key: {name: _mean([run[key][name] for run in runs]) for name in first[key]}
               for key in ("dice_test_classes", "dice_test_cases")},
            "retrains": [{"seed": seed + RETRAIN_SEED_STRIDE * r,
                          **{key: run[key] for key in ("dice_test", "dice_test_classes",
                                                       "dice_val", "train_seconds",
                                                       "postprocessing")}}
                         for r, run in enumerate(runs)]}


def _mean(values: list[float | None]) -> float | None:
    """The mean of the values that exist (a class absent from every held-out case has none)."""
    present = [v for v in values if v is not None and v == v]
    return statistics.mean(present) if present else None


def retrain_once(arch_path: Path, out: Path, tests: Sequence[HeldOut], args: argparse.Namespace,
                 seed: int, data: str | None = None) -> dict[str, Any]:
    """One retrain of the net at ``arch_path`` with ``seed`` on ``data`` (default: the data it
    was searched on), scored on the held-out cases (a finished one's outcome reused, a killed
    one continued: see :func:`run_or_continue`)."""
    config = TrainConfig(epochs=args.train_epochs, time_budget=args.train_budget, seed=seed,
                         steps_per_epoch=args.train_steps, patch_size=args.patch_size)

    def train() -> dict[str, Any]:
        metrics, seconds = run_or_continue(
            out, lambda: train_architecture(arch_path, out, data, config),
            lambda: resume_training(out))
        return {**held_out_scores(out, tests), "dice_val": metrics["dice_mean"],
                "train_epochs": metrics["epochs"], "params": metrics["params"],
                "flops": metrics["flops"], "train_seconds": seconds,
                "postprocessing": metrics["postprocessing"]}

    return remembered(out, train)


def remembered(run_dir: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The outcome of the run in ``run_dir``: the one kept there by an earlier benchmark (only
    ``--resume`` lets a benchmark meet its earlier runs), else ``compute()``'s, kept there."""
    kept = run_dir / OUTCOME
    if kept.exists():
        logging.info("%s: finished earlier, reused", run_dir)
        return read_json(kept, "benchmark outcome")
    outcome = compute()
    write_json(kept, outcome)
    return outcome


def run_or_continue(run_dir: Path, start: Callable[[], Any], resume: Callable[[], Any]
                    ) -> tuple[Any, float]:
    """Run a search or a retrain into ``run_dir`` with ``start``, or, where a killed benchmark
    left it with a checkpoint, continue it with ``resume``. Returns its result and its wall
    seconds, the killed sessions' included (from its cost card)."""
    run = RunFolder(run_dir)
    earlier = 0.0
    clock = time.perf_counter()
    if run.config.exists() and run.checkpoint.exists():
        logging.info("%s: killed earlier, continued from its checkpoint", run_dir)
        if run.cost.exists():
            earlier = read_json(run.cost, "cost card")["wall_seconds"]
        result = resume()
    else:
        if run.config.exists():  # killed before its first checkpoint: nothing to continue
            shutil.rmtree(run_dir)
        result = start()
    return result, round(earlier + time.perf_counter() - clock, 1)


def run_seed(args: argparse.Namespace, dev: str, tests: list[HeldOut], seed: int
             ) -> tuple[list[dict[str, Any]], dict[tuple, dict]]:
    """Every method's runs with one seed, and each derived ``arch.json`` under
    ``(method, tau)`` for the stability measure."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # also in a worker process
    if args.jobs > 1:  # seeds run side by side: share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.jobs))
    rows, archs = [], {}
    space_args = {"features": args.features, "levels": args.levels}
    variants = VARIANTS.get(args.space, {"searched": {}})
    for name in list(variants) if args.variants is None else args.variants:
        knobs = dict(variants[name], **args.knob)
        folder = args.out / f"seed{seed}" / name.replace(" ", "").replace("+", "_")
        supernet = create_space(args.space, knobs=knobs, **space_args)
        if all(info.kind == "knob" for info in supernet.choice_infos.values()):
            # nothing to search (every ablation off): the fixed network, trained alike
            arch_path, arch = random_architecture(args.space, dev, 0,
                                                  folder / "arch-fixed.json", knobs, space_args)
            archs[(name, None)] = arch
            row = retrain(arch_path, folder / "train-fixed", tests, args, seed)
            rows.append({"method": name, "tau": None, "seed": seed, "searched": False,
                         "search_seconds": 0.0, "gates_decided": None,
                         "sample": arch["sample"], **row})
            logging.info("seed %d %s: held-out Dice %.3f, %d params", seed, name,
                         row["dice_test"], row["params"])
            continue
        config = SearchConfig(epochs=args.search_epochs, warmup_epochs=args.warmup_epochs,
                              seed=seed, mode=args.mode, arch_lr=args.arch_lr,
                              gates=args.gates, path_dropout=args.path_dropout,
                              select_ops=args.select_ops, extend_unlearned=args.extend_unlearned,
                              steps_per_epoch=args.search_steps, patch_size=args.patch_size,
                              memory_budget=args.memory_budget, fit=args.fit)
        search_dir = folder / "search"

        def search() -> dict[str, float]:
            _, seconds = run_or_continue(
                search_dir,
                lambda: start_search(search_dir, args.space, dev, knobs, space_args, config,
                                     show_progress=False),
                lambda: resume_search(search_dir, show_progress=False))
            return {"search_seconds": seconds}

        search_s = remembered(search_dir, search)["search_seconds"]
        scores = read_json(folder / "search" / "arch_params.json", "architecture parameters")
        spread = gate_spread(scores)
        selection = folder / "search" / "selection.json"
        unlearned = (read_json(selection, "selection").get("unlearned_classes", [])
                     if selection.exists() else [])
        described = read_json(folder / "search" / "run.json", "run description")
        extended = described.get("extended_for_unlearned")
        taus = args.taus if scores.get("connection") else [None]
        trained: dict[str, dict[str, Any]] = {}  # taus that derive the same net share a retrain
        for tau in taus:
            tag = "fixed" if tau is None else f"tau{tau}"
            arch_path, arch = derive_run(folder / "search", tau, folder / f"arch-{tag}.json")
            archs[(name, tau)] = arch
            net = json.dumps(arch["sample"], sort_keys=True)
            if net not in trained:
                trained[net] = retrain(arch_path, folder / f"train-{tag}", tests, args, seed)
            row = trained[net]
            rows.append({"method": name, "tau": tau, "seed": seed, "searched": True,
                         "search_seconds": search_s,
                         "gates_decided": spread, "unlearned_classes": unlearned,
                         "extended_for_unlearned": extended,
                         "memory_fit": described.get("memory_fit"),
                         "sample": arch["sample"], **row})
            logging.info("seed %d %s %s: held-out Dice %.3f, %d params", seed, name, tag,
                         row["dice_test"], row["params"])
    random_knobs = dict(variants.get(args.random_variant, {}), **args.knob)
    for k in range(args.random):
        folder = args.out / f"seed{seed}" / f"random{k}"
        arch_path, arch = random_architecture(args.space, dev, seed * 1000 + k,
                                              folder / "arch.json", random_knobs, space_args)
        row = retrain(arch_path, folder / "train", tests, args, seed)
        rows.append({"method": "random", "tau": None, "seed": seed, "searched": False,
                     "sample": arch["sample"],
                     "search_seconds": 0.0, "gates_decided": None, **row})
        logging.info("seed %d random %d: held-out Dice %.3f, %d params", seed, k,
                     row["dice_test"], row["params"])
    return rows, archs


def summarize(rows: list[dict[str, Any]], archs: dict[tuple, list[dict]]) -> str:
    """One line per method (and tau): mean ± sd over seeds; random as median and best."""
    lines = ["| method | tau | seeds | held-out Dice | val Dice | parameters | GFLOPs | "
             "gates decided | search s | retrain s | kept-edge Jaccard | ops alike |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    keys = list(dict.fromkeys((r["method"], r["tau"]) for r in rows if r["method"] != "random"))
    for method, tau in keys:
        rs = [r for r in rows if (r["method"], r["tau"]) == (method, tau)]
        stab = agreement(archs.get((method, tau), []))
        spread = [r["gates_decided"] for r in rs if r["gates_decided"] is not None]
        lines.append(
            f"| {method} | {'-' if tau is None else tau} | {len(rs)} | "
            f"{mean_sd([r['dice_test'] for r in rs])} | {mean_sd([r['dice_val'] for r in rs])} | "
            f"{statistics.mean(r['params'] for r in rs):,.0f} | "
            f"{statistics.mean(r['flops'] for r in rs) / 1e9:.2f} | "
            f"{mean_sd(spread) if spread else '-'} | "
            f"{statistics.mean(r['search_seconds'] for r in rs):.0f} | "
            f"{statistics.mean(r['train_seconds'] for r in rs):.0f} | "
            + " | ".join("-" if stab[k] is None else f"{stab[k]:.2f}"
                         for k in ("connections_jaccard", "ops_agree")) + " |")
    randoms = [r for r in rows if r["method"] == "random"]
    for label, pick in (("median", statistics.median), ("best", max)):
        per_seed = [pick([r["dice_test"] for r in randoms if r["seed"] == s])
                    for s in sorted({r["seed"] for r in randoms})]
        if per_seed:
            lines.append(f"| random ({label} of {len(randoms) // len(per_seed)}) | - | "
                         f"{len(per_seed)} | {mean_sd(per_seed)} | - | "
                         f"{statistics.mean(r['params'] for r in randoms):,.0f} | "
                         f"{statistics.mean(r['flops'] for r in randoms) / 1e9:.2f} | - | 0 | "
                         f"{statistics.mean(r['train_seconds'] for r in randoms):.0f} | - | - |")
    lines += paired(rows) + retrain_spread(rows)
    common = [f"- {method}, tau {tau}: {', '.join(kept_by_all(found)) or 'none'}"
              for (method, tau), found in archs.items() if tau is not None and len(found) > 1]
    if common:
        lines += ["", "Connections kept at every seed:", *common]
    stuck = sorted({(r["method"], r["seed"], ", ".join(r["unlearned_classes"])) for r in rows
                    if r.get("unlearned_classes")})
    if stuck:
        lines += ["", "Searches whose supernet had not learned a class at selection (their nets "
                  "are likely too small; see the search's warning):",
                  *(f"- {method}, seed {seed}: {classes}" for method, seed, classes in stuck)]
    extended = sorted({(r["method"], r["seed"], r["extended_for_unlearned"]["after_epochs"],
                        r["extended_for_unlearned"]["epochs"]) for r in rows
                       if r.get("extended_for_unlearned")})
    if extended:
        lines += ["", "Searches extended because their supernet had not learned a class (their "
                  "search seconds include the extension):",
                  *(f"- {method}, seed {seed}: {done} -> {total} epochs"
                    for method, seed, done, total in extended)]
    return "\n".join(lines)


def paired(rows: list[dict[str, Any]]) -> list[str]:
    """Each searched method against each fixed network and the random median, seed by seed
    (the same retrain seeds and held-out cases per seed, so a pair differs only by the network):
    the mean ± sd of the differences in held-out Dice and the seeds it wins."""
    def by_seed(rs: list[dict[str, Any]]) -> dict[int, float]:
        return {r["seed"]: r["dice_test"] for r in rs}

    controls = {f"the {method}": by_seed([r for r in rows if r["method"] == method])
                for method in dict.fromkeys(r["method"] for r in rows
                                            if not r["searched"] and r["method"] != "random")}
    randoms = [r for r in rows if r["method"] == "random"]
    controls["the random median"] = {
        seed: statistics.median(r["dice_test"] for r in randoms if r["seed"] == seed)
        for seed in {r["seed"] for r in randoms}}
    lines = []
    for method, tau in dict.fromkeys((r["method"], r["tau"]) for r in rows if r["searched"]):
        mine = by_seed([r for r in rows if (r["method"], r["tau"]) == (method, tau)])
        for name, control in controls.items():
            seeds = sorted(set(mine) & set(control))
            if len(seeds) < 2:
                continue
            diffs = [mine[s] - control[s] for s in seeds]
            lines.append(f"- {method_label(method, tau)} against {name}: "
                         f"{mean_sd(diffs, signed=True)}, better at {sum(d > 0 for d in diffs)} "
                         f"of {len(seeds)} seeds ({paired_evidence(diffs)})")
    return ["", "Paired by seed (held-out Dice, searched minus control):", *lines] if lines else []


def method_label(method: str, tau: float | None) -> str:
    """A method as the report names it: with its tau where it has one."""
    return method if tau is None else f"{method}, tau {tau}"


def retrain_spread(rows: list[dict[str, Any]]) -> list[str]:
    """How much one net's held-out Dice moves between its retrains, per method: the sd over
    retrains pooled over its nets, and how many retrains lost a class (Dice under
    :data:`LOST_CLASS_DICE` on it). Each searched method's spread is then set against each
    fixed net's seed by seed (the same retrain seeds and validation cases), because a net that
    retrains unreliably needs more retrains, and a mean over seeds hides it."""
    retrained = [r for r in rows if len(r.get("retrains", ())) > 1]
    if not retrained:
        return []

    def dice(row: dict[str, Any]) -> list[float]:
        return [run["dice_test"] for run in row["retrains"]]

    lines = ["", "Retrain spread (the sd of one net's held-out Dice over its retrains, pooled "
             "over the method's nets):"]
    by_method = group_rows(retrained, lambda r: (r["method"], r["tau"]))
    for (method, tau), rs in by_method.items():
        dof = sum(len(r["retrains"]) - 1 for r in rs)
        pooled = math.sqrt(sum(statistics.variance(dice(r)) * (len(r["retrains"]) - 1)
                               for r in rs) / dof)
        seeds = len({r["seed"] for r in rs})
        lost = sum(any(d is not None and d < LOST_CLASS_DICE
                       for d in run["dice_test_classes"].values())
                   for r in rs for run in r["retrains"])
        lines.append(f"- {method_label(method, tau)}: {pooled:.3f} (largest "
                     f"{max(statistics.stdev(dice(r)) for r in rs):.3f}) over "
                     f"{sum(len(r['retrains']) for r in rs)} retrains at "
                     f"{seeds} seed{'s' * (seeds > 1)}; {lost} lost a class "
                     f"(Dice < {LOST_CLASS_DICE})")
    for (method, tau), mine in by_method.items():
        if not mine[0]["searched"]:
            continue
        for (fixed, _), theirs in by_method.items():
            if theirs[0]["searched"] or fixed == "random":
                continue
            sd = {r["seed"]: statistics.stdev(dice(r)) for r in theirs}
            diffs = [statistics.stdev(dice(r)) - sd[r["seed"]] for r in mine if r["seed"] in sd]
            if len(diffs) > 1:
                lines.append(f"- {method_label(method, tau)} against the {fixed}, seed by seed: "
                             f"sd {mean_sd(diffs, signed=True)}, wider at "
                             f"{sum(d > 0 for d in diffs)} of {len(diffs)} seeds "
                             f"({paired_evidence(diffs)})")
    return lines


def steps(text: str) -> int | None:
    """Steps per epoch: a number, or ``pass`` for one pass over the cases."""
    return None if text == "pass" else int(text)


def at_least_one(text: str) -> int:
    """A count of one or more."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def memory_budget(text: str) -> str:
    """A search's memory budget: ``auto`` or a size such as ``8GB``."""
    try:
        check_budget(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def check_out_folder(args: argparse.Namespace, seeds: range,
                     extent: set[str] = EXTENT_OPTIONS) -> None:
    """Before any work: refuse to overwrite an earlier benchmark's runs, and, with
    ``--resume``, to continue a seed's runs with other settings than they were made with (the
    ``extent`` options excepted: they say which runs, not how each runs)."""
    taken = [args.out / f"seed{seed}" for seed in seeds if (args.out / f"seed{seed}").exists()]
    if taken and not args.resume:
        raise SystemExit(f"error: {taken[0]} holds an earlier benchmark's runs; give another "
                         "--out, --first-seed past the seeds it holds, or --resume")
    now = report_settings(args)
    for folder in taken:
        recorded = folder / SETTINGS
        if not recorded.exists():
            raise SystemExit(f"error: {recorded}: missing, so the settings of the runs in "
                             f"{folder} are unknown; they cannot be resumed")
        earlier = read_json(recorded, "benchmark settings")
        differ = sorted(key for key in earlier.keys() & now.keys()
                        if key not in extent and earlier[key] != now[key])
        if differ:
            option = "--" + differ[0].replace("_", "-")
            raise SystemExit(f"error: {recorded}: its runs were made with {option} "
                             f"{earlier[differ[0]]}, not {now[differ[0]]}; resume with the "
                             "same settings")


def add_retrain_options(parser: argparse.ArgumentParser) -> None:
    """The options of how every net is retrained and scored, shared by the benchmarks that
    retrain nets: the budget and the held-out cases."""
    parser.add_argument("--train-epochs", type=int, default=TRAIN_EPOCHS,
                        help="Retrain epochs of every net [default: %(default)s].")
    parser.add_argument("--train-budget", type=float, default=None, metavar="SECONDS",
                        help="Retrain by wall time instead of epochs (the same for every net).")
    parser.add_argument("--train-steps", type=steps, default=TRAIN_STEPS_PER_EPOCH,
                        help="Steps per retrain epoch, or 'pass' [default: %(default)s].")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="The last cases held out for scoring [default: %(default)s].")
    parser.add_argument("--fresh-test", type=int, default=None, metavar="N",
                        help="Also score on N new cases of a demo set's generator, never "
                             "among its own (a held-out set large enough to measure with) "
                             f"[default: {FRESH_CASES} for a demo set, else 0].")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="uxnet",
                        help="Registered space or module:ClassName [default: %(default)s].")
    parser.add_argument("--data", default="demo3d",
                        help="A demo set, a data set folder (MSD or nnU-Net v2) or a .npz file "
                             "[default: %(default)s].")
    parser.add_argument("--out", type=Path, default=Path("bench/search_quality"),
                        help="Folder of the runs and the report [default: %(default)s].")
    parser.add_argument("--seeds", type=int, default=3,
                        help="Seeds: searches, random draws and retrains [default: %(default)s].")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="Seeds run from this one on (to split a benchmark across runs).")
    parser.add_argument("--jobs", type=int, default=1,
                        help="Seeds run side by side in this many processes (threads shared).")
    parser.add_argument("--variants", nargs="*", default=None,
                        help="Variants to run [default: all of the space's]; none given: "
                             "only the random architectures.")
    parser.add_argument("--knob", nargs="*", default=[], metavar="LABEL=VALUE",
                        help="Knobs fixed for every variant (e.g. gate_reg=1).")
    parser.add_argument("--taus", nargs="+", type=float, default=[0.6, 0.75, 0.9],
                        help="Thresholds each search is derived at [default: 0.6 0.75 0.9].")
    parser.add_argument("--random", type=int, default=4,
                        help="Random architectures per seed [default: %(default)s].")
    parser.add_argument("--random-variant", default=None,
                        help="The variant random architectures are drawn from [default: the "
                             "space as `nasseg search` searches it].")
    add_retrain_options(parser)
    parser.add_argument("--search-epochs", type=int, default=25,
                        help="Search epochs, warm-up included [default: %(default)s].")
    parser.add_argument("--warmup-epochs", type=int, default=5,
                        help="Epochs that train weights only [default: %(default)s].")
    parser.add_argument("--mode", default="full",
                        help="Relaxation of the choices (see nasseg search) "
                             "[default: %(default)s].")
    parser.add_argument("--gates", default="sigmoid", choices=GATE_FORMS,
                        help="Connection gates (see nasseg search) [default: %(default)s].")
    parser.add_argument("--arch-lr", type=float, default=None,
                        help="Architecture learning rate [default: as nasseg search sets it].")
    parser.add_argument("--select-ops", default="alphas", choices=OP_SELECTIONS,
                        help="How searches choose ops (see nasseg search) [default: %(default)s].")
    parser.add_argument("--path-dropout", type=float, default=0.0,
                        help="Searches drop connection inputs in weight steps (see nasseg search).")
    parser.add_argument("--extend-unlearned", type=int, default=None, metavar="EPOCHS",
                        help="Epochs a search adds when its supernet has not learned a class "
                             "(see nasseg search) [default: as many as --search-epochs].")
    parser.add_argument("--retrains", type=at_least_one, default=1, metavar="R",
                        help="Retrains of every net, each from scratch with its own seed; a "
                             "net's scores are their mean [default: %(default)s].")
    parser.add_argument("--search-steps", type=steps, default=SEARCH_STEPS_PER_EPOCH,
                        help="Weight steps per search epoch, or 'pass' [default: %(default)s].")
    parser.add_argument("--patch-size", type=parse_patch_size, default=None, metavar="SIZE",
                        help="Patch size of every search and retrain, e.g. 96x96x64 "
                             "[default: the data set's].")
    parser.add_argument("--memory-budget", type=memory_budget, default=None, metavar="SIZE|auto",
                        help="Size each search to this much memory before it starts, as nasseg "
                             "search --memory-budget does (with --jobs N, a size per job; auto "
                             "takes 80%% of the free memory) [default: no sizing].")
    parser.add_argument("--fit", default="batch", choices=FITS,
                        help="--memory-budget sizes the searches' batch or their patch (the "
                             "retrains keep theirs) [default: %(default)s].")
    parser.add_argument("--features", type=int, default=8,
                        help="Channels of the first level [default: %(default)s].")
    parser.add_argument("--levels", type=int, default=3,
                        help="Resolution levels [default: %(default)s].")
    parser.add_argument("--resume", action="store_true",
                        help="Continue a benchmark in --out: reuse its finished searches and "
                             "retrains, continue its killed ones from their checkpoints, run "
                             "what is missing (more seeds, variants, taus, random nets or "
                             "retrains may be asked for; every other setting must match).")
    parser.add_argument("--quick", action="store_true",
                        help="Smoke run: 1 seed, UNet and the full space, 4+2 epochs, 2 random.")
    args = parser.parse_args()
    args.knob = {k: json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v
                 for k, _, v in (item.partition("=") for item in args.knob)}
    if args.quick:
        args.seeds, args.random, args.search_epochs, args.warmup_epochs = 1, 2, 4, 2
        args.train_epochs, args.taus = 2, [0.6]
        if args.variants is None and args.space in FULL:
            args.variants = ["UNet", FULL[args.space]]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.fresh_test is None:
        args.fresh_test = FRESH_CASES if args.data in DEMO_SETS else 0
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    check_out_folder(args, seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        dev, tests = held_out_sets(args.data, args.test_fraction, args.fresh_test, args.out)
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    for seed in seeds:  # what a seed's runs are made with, for a later --resume to check
        if not (args.out / f"seed{seed}" / SETTINGS).exists():
            write_json(args.out / f"seed{seed}" / SETTINGS, report_settings(args))
    rows: list[dict[str, Any]] = []
    archs: dict[tuple, list[dict]] = {}
    failed: dict[int, str] = {}
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = {pool.submit(run_seed, args, dev, tests, seed): seed for seed in seeds}
        for done in as_completed(runs):  # the report is rewritten after every seed
            try:
                seed_rows, seed_archs = done.result()
            except Exception as exc:  # e.g. out of memory: the other seeds go on
                logging.error("seed %d failed", runs[done], exc_info=exc)
                failed[runs[done]] = error_line(exc)
                continue
            rows += seed_rows
            for key, arch in seed_archs.items():
                archs.setdefault(key, []).append(arch)
            save_report(args.out, "search_quality", args, rows, summarize(rows, archs))
    if failed:
        first = min(failed)
        which = f"seed{'s' if len(failed) > 1 else ''} {', '.join(map(str, sorted(failed)))}"
        raise SystemExit(f"error: {which} failed (seed {first}: {failed[first]}); the report "
                         "holds the other seeds' runs, and --resume reuses every run that "
                         "finished")


if __name__ == "__main__":
    main()
