"""The main-job benchmark runs the user's commands and compares the searched net with the U-Net."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "main_job.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600)


def test_main_job_benchmark_trains_both_nets_and_reports_the_difference(small3d, tmp_path):
    out = tmp_path / "bench"
    done = _run("--data", str(small3d), "--out", str(out), "--seeds", "1", "--jobs", "1",
                "--search-args", "--epochs 2 --warmup-epochs 1",
                "--train-args", "--epochs 1 --no-postprocess")
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "main_job.json").read_text())
    rows = {r["net"]: r for r in report["rows"]}
    assert set(rows) == {"searched", "UNet"}
    searched = json.loads((out / "search" / "arch.json").read_text())
    # two search epochs on 12 small cases may keep every input (machines' sums differ)
    assert rows["searched"]["params"] == searched["params"] <= searched["supernet_params"]
    assert rows["searched"]["derived_params"] == searched["params"]
    assert rows["UNet"]["params"] != rows["searched"]["params"]
    assert rows["searched"]["search_seconds"] > 0 and rows["searched"]["search_peak_mb"] > 0
    assert "dice_test" not in rows["UNet"]        # no fresh cases for a non-demo set
    assert rows["UNet"]["dice_val_postprocessed"] == rows["UNet"]["dice_val"]  # none decided
    table = (out / "main_job.md").read_text()
    difference = rows["searched"]["dice_val"] - rows["UNet"]["dice_val"]
    assert f"{difference:+.3f}" in table and "ahead at" in table


def test_a_failing_command_ends_the_benchmark_with_its_error_line(tmp_path):
    missing = tmp_path / "missing.npz"
    done = _run("--data", str(missing), "--out", str(tmp_path / "bench"))
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: nasseg search") and "missing.npz" in last
