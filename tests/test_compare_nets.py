"""The net-comparison benchmark: fixed nets retrained at the same seeds, paired by seed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nasseg.searches.random_arch import random_architecture

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the benchmark is a script beside its report module
from compare_nets import fixed_variant_net, main, named_net, summarize  # noqa: E402
from report import paired_evidence  # noqa: E402

TINY = ["--train-epochs", "1", "--train-steps", "2", "--test-fraction", "0.25"]


def _compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / "compare_nets.py"), *args],
                          capture_output=True, text=True, timeout=600)


def _rows(dice: dict[str, list[float]], first_seed: int = 10) -> list[dict]:
    return [{"net": net, "seed": first_seed + i, "dice_test": d, "dice_val": d, "params": 1000,
             "flops": 2e9, "train_seconds": 5.0} for net, ds in dice.items()
            for i, d in enumerate(ds)]


def test_a_net_is_named_by_its_label_or_by_its_folder_and_file():
    assert named_net("unet=a/b/arch.json") == ("unet", Path("a/b/arch.json"))
    assert named_net("runs/seed3/arch.json") == ("seed3/arch", Path("runs/seed3/arch.json"))
    assert named_net("arch.json") == ("arch", Path("arch.json"))


def test_the_summary_pairs_every_net_with_the_baseline_by_seed_and_splits_off_the_seed():
    dice = {"a": [0.80, 0.86, 0.83, 0.90], "b": [0.79, 0.85, 0.80, 0.91],
            "UNet": [0.78, 0.83, 0.80, 0.86]}
    lines = summarize(_rows(dice), "UNet").splitlines()
    assert lines[2] == "| a | 4 | 0.848 ± 0.043 | 0.848 ± 0.043 | 1,000 | 2.00 | 5 |"
    assert "| 12 | 0.830 | 0.800 | 0.800 |" in lines
    diffs = [0.02, 0.03, 0.03, 0.04]
    assert lines.index("Paired by retrain seed (held-out Dice, net minus UNet):") > 0
    assert f"- a: +0.030 ± 0.008, better at 4 of 4 seeds ({paired_evidence(diffs)})" in lines
    assert any(line.startswith("- b: +0.020 ± 0.022, better at 3 of 4 seeds") for line in lines)
    # seed means 0.79, 0.8467, 0.81, 0.89 (sd 0.0440); residuals' sd over (3-1)(4-1) = 6 dof
    # 0.0115; the seed's share: sqrt(0.0440^2 - 0.0115^2 / 3 nets) = 0.0435
    assert lines[-1].startswith("The retrain seed: it moves every net alike by sd 0.0435 (over "
                                "4 seeds); once each net's mean and each seed's are removed, "
                                "sd 0.0115 is left (6 degrees of freedom).")
    # a seed one net has not finished is shown, and left out of that net's pairs
    partial = _rows(dice) + _rows({"a": [0.9]}, first_seed=14)
    lines = summarize(partial, "UNet").splitlines()
    assert "| 14 | 0.900 | - | - |" in lines
    assert any(line.startswith("- a: +0.030 ± 0.008, better at 4 of 4 seeds") for line in lines)


def test_nets_retrain_at_every_seed_against_the_fixed_unet_and_a_resume_adds_seeds(
        small3d, tmp_path):
    net = random_architecture("uxnet", str(small3d), 1, tmp_path / "r1" / "arch.json",
                              space_args={"features": 4, "levels": 3})[0]
    out = tmp_path / "cmp"
    done = _compare(str(net), "--fixed-variant", "UNet", "--data", str(small3d),
                    "--out", str(out), "--retrain-seeds", "2", "--first-seed", "7", *TINY)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "compare_nets.json").read_text())
    assert [(r["seed"], r["net"]) for r in report["rows"]] == [
        (7, "r1/arch"), (7, "UNet"), (8, "r1/arch"), (8, "UNet")]
    unet = json.loads((out / "arch-UNet.json").read_text())
    assert {r["params"] for r in report["rows"] if r["net"] == "UNet"} == {unet["params"]}
    assert all(0 <= r["dice_test"] <= 1 and r["train_epochs"] == 1 for r in report["rows"])
    table = (out / "compare_nets.md").read_text()
    assert "Paired by retrain seed (held-out Dice, net minus UNet):" in table
    assert "- r1/arch: " in table and "better at" in table and "of 2 seeds" in table
    first = {(r["seed"], r["net"]): r["dice_test"] for r in report["rows"]}
    # a third seed: the first two seeds' retrains are reused, only the new one's run
    done = _compare(str(net), "--fixed-variant", "UNet", "--data", str(small3d),
                    "--out", str(out), "--retrain-seeds", "3", "--first-seed", "7", "--resume",
                    *TINY)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("finished earlier, reused") == 4
    rows = json.loads((out / "compare_nets.json").read_text())["rows"]
    assert len(rows) == 6 and {(r["seed"], r["net"]): r["dice_test"]
                               for r in rows if r["seed"] < 9} == first
    assert "The retrain seed: it moves every net alike by sd" in (
        out / "compare_nets.md").read_text()


@pytest.mark.parametrize("problem", ["missing", "not an arch", "same label", "bad baseline",
                                     "bad variant"])
def test_a_bad_net_is_refused_in_one_line_before_any_retrain(small3d, tmp_path, problem):
    net = random_architecture("uxnet", str(small3d), 1, tmp_path / "a" / "arch.json",
                              space_args={"features": 4, "levels": 3})[0]
    other = tmp_path / "other.json"
    other.write_text('{"not": "an arch"}')
    args, expected = {
        "missing": ([str(tmp_path / "gone.json")],
                    f"error: {tmp_path / 'gone.json'}: no such architecture file"),
        "not an arch": ([f"x={other}"], f"error: {other}: not a nasseg architecture file "
                        "(format 'nasseg.arch/1')"),
        "same label": ([f"x={net}", f"x={net}"], "error: two nets are labelled x; name "
                       "them LABEL=PATH"),
        "bad baseline": ([f"x={net}", f"y={net}", "--baseline", "z"],
                         "error: --baseline z: no such net (nets: x, y)"),
        "bad variant": ([f"x={net}", "--fixed-variant", "Plain"],
                        "error: --fixed-variant Plain: the uxnet space has UNet, SBB only, "
                        "MSSA only, SBB + MSSA"),
    }[problem]
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as refused:  # the message is the command's one stderr line
        main([*args, "--data", str(small3d), "--out", str(out), *TINY])
    assert str(refused.value) == expected
    assert not out.exists()


def test_the_fixed_variant_keeps_the_first_nets_other_knobs(small3d, tmp_path):
    """The U-Net built beside a net searched without ``image_skip`` (on by default) lacks the
    skip too: the two differ only in what the variant fixes."""
    import argparse
    net = random_architecture("uxnet", str(small3d), 1, tmp_path / "arch.json",
                              {"image_skip": False}, {"features": 4})[1]
    args = argparse.Namespace(out=tmp_path, fixed_variant="UNet")
    unet = json.loads(fixed_variant_net(args, net, str(small3d)).read_text())
    assert unet["knobs"] == {"image_skip": False, "mssa": False, "sbb": False,
                             "search_head": False, "search_resampling": False}
    assert net["knobs"]["mssa"] is True and "gate_reg" in net["knobs"]
