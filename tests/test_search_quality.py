"""The controls of the search-quality benchmark: random architectures from a space, how decided a
search's gates are, and how alike the architectures of several searches are; and its held-out
cases, split from a demo set or a data set folder and scored as a user's tools score them."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nasseg.data import DataError, load_data
from nasseg.data.formats import RawDataset
from nasseg.derive import build_derived
from nasseg.derive.compare import agreement, gate_spread, kept_by_all
from nasseg.evaluation.folders import evaluate_folders
from nasseg.inference.predict import predict_path
from nasseg.searches.random_arch import random_architecture
from nasseg.training.trainer import TrainConfig, train_architecture

ARGS = {"features": 4, "levels": 3}
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the benchmark is a script beside its report module
from search_quality import (held_out_scores, held_out_sets, split_held_out,  # noqa: E402
                            summarize)
from report import (EXACT_SIGN_FLIPS, least_sign_flip_p, paired_evidence,  # noqa: E402
                    sign_flip_p)
from test_real_data import make_msd  # noqa: E402


def _kept(arch):
    return {label: e["kept"] for label, e in arch["choices"].items() if e["kind"] == "connection"}


def test_random_architectures_are_valid_repeatable_draws(small3d, tmp_path):
    draws = [random_architecture("uxnet", str(small3d), seed, tmp_path / f"a{seed}.json",
                                 space_args=ARGS)[1] for seed in range(4)]
    again = random_architecture("uxnet", str(small3d), 0, tmp_path / "again.json",
                                space_args=ARGS)[1]
    assert again["sample"] == draws[0]["sample"]
    assert len({json.dumps(d["sample"], sort_keys=True) for d in draws}) == 4
    kept_share = [sum(map(len, _kept(d).values())) / sum(len(e["sources"])
                  for e in d["choices"].values() if e["kind"] == "connection") for d in draws]
    assert 0.2 < sum(kept_share) / 4 < 0.9      # about half the gates, plus each node's best
    for d in draws:
        assert d["params"] < d["supernet_params"]
        net = build_derived(d)
        out = net(torch.randn(1, 1, 16, 16, 16))
        assert out.shape == (1, 3, 16, 16, 16)   # background and two blob classes
    written = json.loads((tmp_path / "a1.json").read_text())
    assert written["random_seed"] == 1 and written["sample"] == draws[1]["sample"]


def test_gate_spread_counts_the_decided_gates():
    scores = {"connection": {"a": {"probs": [0.05, 0.5, 0.95]}, "b": {"probs": [0.69, 0.71]}}}
    assert gate_spread(scores) == 3 / 5
    assert gate_spread({"op": {}, "connection": {}}) is None


def test_agreement_of_identical_and_of_disjoint_architectures(small3d, tmp_path):
    a = random_architecture("uxnet", str(small3d), 0, tmp_path / "a.json", {"sbb": True},
                            space_args=ARGS)[1]
    assert agreement([a, a]) == {"connections_jaccard": 1.0, "ops_agree": 1.0}
    assert agreement([a]) == {"connections_jaccard": None, "ops_agree": None}
    b = json.loads(json.dumps(a))
    for entry in b["choices"].values():
        if entry["kind"] == "connection":
            entry["kept"] = [i for i in range(len(entry["sources"])) if i not in entry["kept"]]
        elif entry["kind"] == "op":
            entry["chosen"] = next(c for c in entry["candidates"] if c != entry["chosen"])
    assert agreement([a, b]) == {"connections_jaccard": 0.0, "ops_agree": 0.0}
    assert kept_by_all([a, b]) == []


def test_kept_by_all_names_the_connections_every_seed_keeps(small3d, tmp_path):
    a = random_architecture("uxnet", str(small3d), 0, tmp_path / "a.json", space_args=ARGS)[1]
    named = [f"{e['sources'][i]} -> {e['node']}" for e in a["choices"].values()
             if e["kind"] == "connection" for i in e["kept"]]
    assert kept_by_all([a, a]) == named and kept_by_all([]) == []
    b = json.loads(json.dumps(a))
    dropped = next(e for e in b["choices"].values() if e["kind"] == "connection" and e["kept"])
    gone = f"{dropped['sources'][dropped['kept'].pop(0)]} -> {dropped['node']}"
    assert kept_by_all([a, b]) == [edge for edge in named if edge != gone]


def test_a_derived_nets_initial_weights_depend_on_the_seed_not_on_its_supernet(small3d, tmp_path):
    """Variants compared at one seed start alike: building the supernet to check the sample
    draws no random numbers, so the derived net is initialised as if built alone."""
    from nni.nas.space import model_context

    from nasseg.runtime.seeding import seed_everything
    from nasseg.space import create_space

    arch = random_architecture("uxnet", str(small3d), 1, tmp_path / "a.json", space_args=ARGS)[1]
    seed_everything(3)
    derived = build_derived(arch)
    seed_everything(3)
    with model_context(arch["sample"]):
        alone = create_space("uxnet", knobs={k: arch["sample"][k] for k in arch["knobs"]},
                             **arch["space_args"])
    for (name, a), (_, b) in zip(derived.state_dict().items(), alone.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)


def test_a_given_network_becomes_an_arch_file_and_a_bad_one_is_refused():
    from nasseg.derive import fixed_architecture
    from nasseg.space import create_space

    space = create_space("unet", features=4, levels=3)
    plain = {**space.knob_values, **{label: info.candidates[0] if info.kind == "op" else [0]
                                     for label, info in space.choice_infos.items()
                                     if info.kind != "knob"}}
    arch = fixed_architecture(space, plain, [1, 16, 16, 16])
    assert arch["sample"] == plain and arch["params"] == arch["supernet_params"] - sum(
        p.numel() for name, p in space.named_parameters() if "conv5" in name or "dil3" in name)
    no_skip = {**plain, "skip0": []}
    assert fixed_architecture(space, no_skip, [1, 16, 16, 16])["sample"] == no_skip
    with pytest.raises(ValueError, match="not a network of this space"):
        fixed_architecture(space, {**plain, "enc0_op": "conv7"}, [1, 16, 16, 16])


def test_the_held_out_split_of_a_folder_and_of_an_array_set(small3d, tmp_path):
    folder = make_msd(tmp_path)  # 4 cases of different shapes and spacings
    dev, test = split_held_out(str(folder), 0.2, tmp_path / "out")
    assert dev == str(tmp_path / "out" / "Task01_Toy-dev.h5")
    assert load_data(dev).case_ids == ["case_000", "case_001", "case_002"]
    assert isinstance(test, RawDataset) and [c.case_id for c in test.cases] == ["case_003"]
    dev, test = split_held_out(str(small3d), 0.25, tmp_path / "arrays")
    assert dev == str(tmp_path / "arrays" / "small3d-dev.npz")
    assert (load_data(dev).num_cases, test.num_cases) == (9, 3)
    assert (test.images == load_data(str(small3d)).images[9:]).all()
    with pytest.raises(DataError, match="4 cases leave 1 for the search"):
        split_held_out(str(folder), 0.75, tmp_path / "few")


def test_held_out_raw_cases_are_scored_as_predict_and_evaluate_would(tmp_path):
    """The benchmark's score of a held-out raw case is what `nasseg predict` then `nasseg
    evaluate` give a user: the case segmented through the training set's preprocessing and
    compared with its label file on its own grid."""
    folder = make_msd(tmp_path)
    dev, test = split_held_out(str(folder), 0.25, tmp_path / "out")
    arch_path, _ = random_architecture("uxnet", dev, 0, tmp_path / "arch.json",
                                       {"sbb": False, "mssa": False}, ARGS)
    train_architecture(arch_path, tmp_path / "train", None,
                       TrainConfig(epochs=1, steps_per_epoch=2, seed=0))
    raw = test.cases[0]
    predict_path(tmp_path / "train", raw.image_files[0], tmp_path / "pred")
    (tmp_path / "ref").mkdir()
    shutil.copy(raw.label_file, tmp_path / "ref")
    user = evaluate_folders(tmp_path / "pred", tmp_path / "ref", class_names=test.class_names)
    assert user["summary"]["mean_dice"] > 0  # a net that segments something, not all background
    scores = held_out_scores(tmp_path / "train", [test])
    assert scores["dice_test"] == pytest.approx(user["summary"]["mean_dice"], abs=1e-6)
    assert scores["dice_test_classes"] == pytest.approx(user["summary"]["dice"], abs=1e-6)
    assert list(scores["dice_test_cases"]) == ["case_003"]


def test_fresh_demo_cases_join_the_held_out_split_and_are_scored_with_it(tmp_path, monkeypatch):
    monkeypatch.setenv("NASSEG_HOME", str(tmp_path / "home"))
    dev, tests = held_out_sets("demo3d", 0.2, 3, tmp_path / "out")
    assert load_data(dev).num_cases == 32
    assert [t.num_cases for t in tests] == [8, 3] and tests[1].name == "demo3d-fresh1"
    arch_path, _ = random_architecture("uxnet", dev, 0, tmp_path / "arch.json",
                                       {"sbb": False, "mssa": False}, ARGS)
    train_architecture(arch_path, tmp_path / "train", None,
                       TrainConfig(epochs=1, steps_per_epoch=1, seed=0))
    scores = held_out_scores(tmp_path / "train", tests)
    cases = scores["dice_test_cases"]
    assert list(cases)[8:] == [f"demo3d-fresh1_000{i}" for i in range(3)] and len(cases) == 11
    own = held_out_scores(tmp_path / "train", tests[:1])["dice_test_cases"]
    assert {case: cases[case] for case in own} == own
    with pytest.raises(DataError, match="come from demo sets only"):
        held_out_sets(str(tmp_path / "out" / "demo3d-dev.npz"), 0.25, 2, tmp_path / "npz")


def test_the_benchmark_refuses_a_set_too_small_to_split_in_one_line(tmp_path):
    folder = make_msd(tmp_path)
    done = subprocess.run([sys.executable, str(BENCHMARKS / "search_quality.py"), "--data",
                           str(folder), "--test-fraction", "0.75", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr  # after preprocessing's log
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {folder}: 4 cases leave 1 for the search after holding out 3; it needs at "
        "least 2 (a weight and an architecture half)")


def test_the_benchmark_refuses_a_bad_memory_budget_before_it_runs(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "search_quality.py"),
                           "--memory-budget", "lots", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(
        "error: argument --memory-budget: memory budget 'lots': expected 'auto' or a size such "
        "as 20GB, 1.5GiB or 800M")
    assert not (tmp_path / "o").exists()


def test_the_summary_names_the_searches_whose_supernet_had_not_learned_a_class():
    row = {"method": "SBB + MSSA", "tau": 0.6, "dice_test": 0.77, "dice_val": 0.95,
           "params": 20483, "flops": 4e8, "gates_decided": 0.9, "search_seconds": 1600.0,
           "train_seconds": 600.0, "searched": True}
    rows = [dict(row, seed=0, unlearned_classes=[]),
            dict(row, seed=1, unlearned_classes=["bright_blob"])]
    table = summarize(rows, {})
    assert "| SBB + MSSA | 0.6 | 2 | 0.770 ± 0.000 |" in table
    assert table.splitlines()[-1] == "- SBB + MSSA, seed 1: bright_blob"
    assert "had not learned" not in summarize(rows[:1], {})


def test_the_summary_pairs_each_search_with_the_fixed_net_and_the_random_median_by_seed():
    common = {"dice_val": 0.9, "params": 1000, "flops": 1e8, "gates_decided": None,
              "train_seconds": 1.0, "search_seconds": 0.0, "searched": False, "tau": None}
    rows = []
    for seed, (searched, unet, randoms) in enumerate([(0.90, 0.95, (0.80, 0.85, 0.99)),
                                                      (0.92, 0.90, (0.91, 0.93, 0.20)),
                                                      (0.94, 0.92, (0.70, 0.96, 0.95))]):
        rows.append(dict(common, method="MSSA only", tau=0.6, seed=seed, dice_test=searched,
                         searched=True, search_seconds=9.0, gates_decided=1.0))
        rows.append(dict(common, method="UNet", seed=seed, dice_test=unet))
        rows += [dict(common, method="random", seed=seed, dice_test=d) for d in randoms]
    lines = summarize(rows, {}).splitlines()
    start = lines.index("Paired by seed (held-out Dice, searched minus control):")
    # differences -0.05 / +0.02 / +0.02 against the UNet; medians 0.85 / 0.91 / 0.95
    # of the 8 sign flips of (-0.05, +0.02, +0.02) all have a sum as far from 0 as -0.01; of
    # (+0.05, +0.01, -0.01) 6 have one as far as +0.05
    assert lines[start + 1:start + 3] == [
        "- MSSA only, tau 0.6 against the UNet: -0.003 ± 0.040, better at 2 of 3 seeds "
        "(standard error 0.023, sign-flip p = 1.00; 3 seeds cannot give p below 0.25)",
        "- MSSA only, tau 0.6 against the random median: +0.017 ± 0.031, better at 2 of 3 seeds "
        "(standard error 0.018, sign-flip p = 0.75; 3 seeds cannot give p below 0.25)"]


def test_the_sign_flip_test_is_exact_for_few_pairs_and_never_zero_when_sampled():
    # five wins: only the observed signs and their mirror are as extreme, 2 of 32
    assert sign_flip_p([0.01, 0.02, 0.01, 0.03, 0.02]) == pytest.approx(2 / 32)
    # a mean difference of 0: every assignment is as far from 0
    assert sign_flip_p([0.02, -0.02]) == 1.0
    # sum 0.04; the flips sum to +-0.06, +-0.04, +-0.02, 0: 4 of 8 reach 0.04
    assert sign_flip_p([0.03, 0.02, -0.01]) == pytest.approx(4 / 8)
    # beyond the exact range the draws estimate it, counting the observed assignment
    wins = [0.01] * (EXACT_SIGN_FLIPS + 4)
    assert sign_flip_p(wins, draws=999) == pytest.approx(1 / 1000)
    assert paired_evidence([0.01]) == "-"
    assert "sign-flip p = 0.0020;" in paired_evidence([0.01] * 10)  # 2 of 1024
    assert "sign-flip p < 0.0001;" in paired_evidence(wins)
    with pytest.raises(ValueError, match="at least one"):
        sign_flip_p([])


def test_the_evidence_says_what_its_seeds_can_resolve():
    # five pairs that all agree reach only 2 of 32: no run of five seeds can show p <= 0.05
    assert least_sign_flip_p(5) == pytest.approx(1 / 16)
    assert least_sign_flip_p(6) == pytest.approx(1 / 32)
    assert paired_evidence([0.01, 0.02, 0.01, 0.03, 0.02]).endswith(
        "sign-flip p = 0.06; 5 seeds cannot give p below 0.06")
    # sd 0.01095 over six pairs: standard error 0.00447, 2.8 of them 0.0125
    assert paired_evidence([0.01, -0.01] * 3) == (
        "standard error 0.004, sign-flip p = 1.00; finds ±0.013 with 80 % power")


def test_the_retrain_spread_is_pooled_per_method_and_paired_with_the_fixed_net_by_seed():
    def row(method, seed, dice, searched):
        return {"method": method, "tau": 0.6 if searched else None, "seed": seed,
                "searched": searched, "dice_test": sum(dice) / len(dice), "dice_val": 0.9,
                "params": 1000, "flops": 1e8, "gates_decided": 1.0 if searched else None,
                "search_seconds": 9.0 if searched else 0.0, "train_seconds": 1.0,
                "retrains": [{"dice_test": d, "dice_test_classes": {"a": d}} for d in dice]}

    rows = [row("UNet", 0, [0.90, 0.92], False), row("UNet", 1, [0.85, 0.85], False),
            row("MSSA only", 0, [0.80, 0.90], True), row("MSSA only", 1, [0.88, 0.86], True)]
    lines = summarize(rows, {}).splitlines()
    start = lines.index("Retrain spread (the sd of one net's held-out Dice over its retrains, "
                        "pooled over the method's nets):")
    # variances 0.0002 and 0 (UNet), 0.005 and 0.0002 (searched): pooled sqrt(0.0001), sqrt(0.0026)
    # sd differences by seed 0.0707 - 0.0141 and 0.0141 - 0: both wider
    assert lines[start + 1:] == [
        "- UNet: 0.010 (largest 0.014) over 4 retrains at 2 seeds; 0 lost a class (Dice < 0.1)",
        "- MSSA only, tau 0.6: 0.051 (largest 0.071) over 4 retrains at 2 seeds; 0 lost a class "
        "(Dice < 0.1)",
        "- MSSA only, tau 0.6 against the UNet, seed by seed: sd +0.035 ± 0.030, wider at 2 of 2 "
        "seeds (standard error 0.021, sign-flip p = 0.50; 2 seeds cannot give p below 0.50)"]


def test_each_net_is_retrained_with_its_own_seeds_and_scored_by_their_mean(tmp_path, monkeypatch):
    import search_quality

    calls = []

    def once(arch_path, out, tests, args, seed):
        calls.append((out.name, seed))
        dice = {0: 0.9, 1000: 0.4, 2000: 0.8}[seed]
        return {"dice_test": dice, "dice_val": dice + 0.05, "train_seconds": 10.0 + seed / 1000,
                "params": 1234, "flops": 5e8, "train_epochs": 30, "postprocessing": None,
                "dice_test_classes": {"bright": dice, "textured": None},
                "dice_test_cases": {"a": dice, "b": 1.0}}

    monkeypatch.setattr(search_quality, "retrain_once", once)
    args = argparse.Namespace(retrains=3)
    row = search_quality.retrain(tmp_path / "arch.json", tmp_path / "train-tau0.6", [], args, 0)
    assert calls == [("train-tau0.6", 0), ("train-tau0.6-r1", 1000), ("train-tau0.6-r2", 2000)]
    assert row["dice_test"] == pytest.approx(0.7) and row["dice_val"] == pytest.approx(0.75)
    assert row["dice_test_classes"] == {"bright": pytest.approx(0.7), "textured": None}
    assert row["dice_test_cases"] == {"a": pytest.approx(0.7), "b": 1.0}
    assert [r["seed"] for r in row["retrains"]] == [0, 1000, 2000]
    assert row["params"] == 1234 and row["train_seconds"] == pytest.approx(11.0)
    spread = summarize([dict(row, method="UNet", tau=None, seed=0, searched=False,
                             search_seconds=0.0, gates_decided=None)], {}).splitlines()[-1]
    assert spread == ("- UNet: 0.265 (largest 0.265) over 3 retrains at 1 seed; 0 lost a class "
                      "(Dice < 0.1)")
    row["retrains"][1]["dice_test_classes"]["bright"] = 0.0
    assert "over 3 retrains at 1 seed; 1 lost a class" in summarize(
        [dict(row, method="UNet", tau=None, seed=0, searched=False, search_seconds=0.0,
              gates_decided=None)], {})


def test_the_benchmark_refuses_retrains_under_one_before_it_runs(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "search_quality.py"),
                           "--retrains", "0", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and not (tmp_path / "o").exists()
    assert done.stderr.strip().splitlines()[-1].endswith(
        "error: argument --retrains: expected a whole number of at least 1, got '0'")


def test_the_benchmark_refuses_an_out_folder_holding_its_seeds_before_it_runs(tmp_path):
    (tmp_path / "o" / "seed1").mkdir(parents=True)
    (tmp_path / "o" / "seed1" / "kept.txt").write_text("an earlier run")
    done = subprocess.run([sys.executable, str(BENCHMARKS / "search_quality.py"), "--quick",
                           "--first-seed", "1", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'o' / 'seed1'} holds an earlier benchmark's runs; give another "
        "--out, --first-seed past the seeds it holds, or --resume")
    assert sorted(p.name for p in (tmp_path / "o").rglob("*")) == ["kept.txt", "seed1"]


def test_a_resume_is_refused_where_a_seeds_runs_were_made_with_other_settings(tmp_path):
    seed = tmp_path / "o" / "seed0"
    seed.mkdir(parents=True)
    command = [sys.executable, str(BENCHMARKS / "search_quality.py"), "--quick", "--resume",
               "--out", str(tmp_path / "o")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {seed / 'benchmark_settings.json'}: missing, so the settings of the runs in "
        f"{seed} are unknown; they cannot be resumed")
    (seed / "benchmark_settings.json").write_text(json.dumps(
        {"train_epochs": "30", "seeds": "3", "taus": "[0.6]"}))
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {seed / 'benchmark_settings.json'}: its runs were made with --train-epochs 30, "
        "not 2; resume with the same settings")
    assert sorted(p.name for p in (tmp_path / "o").rglob("*")) == [
        "benchmark_settings.json", "seed0"]


def _benchmark_args(out, **changes):
    """run_seed's settings for a benchmark of tiny searches and retrains."""
    return argparse.Namespace(**{
        "jobs": 1, "space": "uxnet", "variants": ["MSSA only"], "knob": {}, "random": 1,
        "random_variant": None, "out": out, "search_epochs": 2, "warmup_epochs": 1,
        "mode": "full", "arch_lr": None, "gates": "sigmoid", "path_dropout": 0.0,
        "select_ops": "alphas", "extend_unlearned": 0, "search_steps": 2, "patch_size": None,
        "memory_budget": None, "fit": "batch", "taus": [0.6], "train_epochs": 2,
        "train_budget": None, "train_steps": 2, "retrains": 1, **ARGS, **changes})


def _count_runs(monkeypatch, module):
    """The names of the search and retrain entry points the benchmark calls, in order."""
    calls = []
    for name in ("start_search", "resume_search", "train_architecture", "resume_training"):
        real = getattr(module, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)
        monkeypatch.setattr(module, name, counted)
    return calls


def test_a_resumed_benchmark_reuses_its_finished_runs_and_runs_what_is_missing(
        small3d, tmp_path, monkeypatch):
    import search_quality

    calls = _count_runs(monkeypatch, search_quality)
    dev, tests = held_out_sets(str(small3d), 0.25, 0, tmp_path)
    rows, _ = search_quality.run_seed(_benchmark_args(tmp_path / "a"), dev, tests, 0)
    assert calls == ["start_search", "train_architecture", "train_architecture"]
    # a seed run elsewhere (a benchmark split over machines) joins another --out by a copy
    shutil.copytree(tmp_path / "a" / "seed0", tmp_path / "b" / "seed0")
    shutil.rmtree(tmp_path / "a")
    calls.clear()
    again, _ = search_quality.run_seed(_benchmark_args(tmp_path / "b", retrains=2), dev, tests,
                                       0)
    assert calls == ["train_architecture", "train_architecture"]  # the second retrains alone
    assert [[r["seed"] for r in row["retrains"]] for row in again] == [[0, 1000], [0, 1000]]
    for first, second in zip(rows, again):
        assert second["search_seconds"] == first["search_seconds"]
        assert second["retrains"][0]["dice_test"] == first["dice_test"]
        assert second["retrains"][0]["train_seconds"] == first["train_seconds"]


def test_a_killed_retrain_is_continued_from_its_checkpoint(small3d, tmp_path, monkeypatch):
    import search_quality

    class Killed(Exception):
        pass

    def kill(epoch, value):
        raise Killed

    dev, tests = held_out_sets(str(small3d), 0.25, 0, tmp_path)
    arch_path, _ = random_architecture("uxnet", dev, 0, tmp_path / "arch.json", {}, ARGS)
    args = _benchmark_args(tmp_path, train_epochs=3)
    config = TrainConfig(epochs=3, seed=7, steps_per_epoch=2)
    with pytest.raises(Killed):  # killed after its first epoch's checkpoint
        train_architecture(arch_path, tmp_path / "killed", None, config, on_epoch=kill)
    calls = _count_runs(monkeypatch, search_quality)
    outcome = search_quality.retrain_once(arch_path, tmp_path / "killed", tests, args, 7)
    assert calls == ["resume_training"] and outcome["train_epochs"] == 3
    sessions = json.loads((tmp_path / "killed" / "cost.json").read_text())["sessions"]
    assert [s["epochs"] for s in sessions] == [[0, 1], [1, 3]]
    assert outcome["train_seconds"] >= sessions[0]["wall_seconds"]
    # killed before its first checkpoint: nothing to continue, so it starts again
    (tmp_path / "early").mkdir()
    shutil.copy(tmp_path / "killed" / "run.json", tmp_path / "early" / "run.json")
    calls.clear()
    outcome = search_quality.retrain_once(arch_path, tmp_path / "early", tests, args, 7)
    assert calls == ["train_architecture"] and outcome["train_epochs"] == 3
    assert (tmp_path / "early" / "benchmark_outcome.json").exists()


def test_no_variants_named_runs_only_the_random_architectures(small3d, tmp_path, monkeypatch):
    import search_quality

    trained = []

    def retrain(arch_path, out, tests, args, seed):
        trained.append(out.relative_to(tmp_path).as_posix())
        return {"dice_test": 0.5, "params": 1}

    monkeypatch.setattr(search_quality, "retrain", retrain)
    args = argparse.Namespace(jobs=1, space="uxnet", variants=[], knob={}, random=2,
                              random_variant=None, out=tmp_path, **ARGS)
    rows, archs = search_quality.run_seed(args, str(small3d), [], 3)
    assert trained == ["seed3/random0/train", "seed3/random1/train"] and archs == {}
    assert [r["method"] for r in rows] == ["random", "random"]


def test_a_failed_seed_leaves_the_others_reported_and_fails_in_one_line(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    import search_quality

    def run_seed(args, dev, tests, seed):
        if seed == 1:
            raise RuntimeError("CPU out of memory: tried to allocate 9 GB\nmore detail")
        return [{"method": "UNet", "seed": seed, "dice_test": 0.8}], {}

    monkeypatch.setattr(search_quality, "ProcessPoolExecutor",
                        lambda jobs, mp_context: ThreadPoolExecutor(jobs))
    monkeypatch.setattr(search_quality, "run_seed", run_seed)
    monkeypatch.setattr(search_quality, "held_out_sets", lambda *args: ("dev.npz", []))
    monkeypatch.setattr(search_quality, "summarize", lambda rows, archs: f"{len(rows)} rows")
    monkeypatch.setattr(sys, "argv", ["search_quality.py", "--seeds", "3", "--jobs", "2",
                                      "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as failure:
        search_quality.main()
    assert str(failure.value) == (
        "error: seed 1 failed (seed 1: CPU out of memory: tried to allocate 9 GB); the report "
        "holds the other seeds' runs, and --resume reuses every run that finished")
    report = json.loads((tmp_path / "o" / "search_quality.json").read_text())
    assert sorted(row["seed"] for row in report["rows"]) == [0, 2]

