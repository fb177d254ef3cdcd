"""A 2-process Gloo search on CPU: every rank ends with identical architecture parameters."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nasseg.artifacts.files import read_json
from nasseg.runtime.distributed import shard


def test_shards_are_disjoint_and_complete():
    parts = [shard(range(10), r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(10))
    with pytest.raises(ValueError, match="cannot be shared"):
        shard([1], 1, 2)


def test_two_process_search_keeps_ranks_identical(small3d, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "nasseg.cli", "search", "--space", "unet", "--data", str(small3d),
           "--out", str(out), "--epochs", "2", "--warmup-epochs", "0", "--arch-lr", "0.01",
           "--space-arg", "features=2", "--space-arg", "levels=2", "--steps-per-epoch", "2",
           "--device", "cpu", "--nproc", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("search finished") == 1  # only rank 0 reports and writes
    params = read_json(out / "arch_params.json")
    assert params["world_size"] == 2
    assert params["rank_max_difference"] == 0.0
    assert (out / "arch.json").is_file()


def test_several_processes_need_an_explicit_folder():
    from click.testing import CliRunner

    from nasseg.cli import cli

    result = CliRunner().invoke(cli, ["search", "--nproc", "2"])
    assert result.exit_code != 0 and "needs --out" in result.output


def test_two_process_retrain_keeps_ranks_identical(small3d, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    search = tmp_path / "s"
    base = [sys.executable, "-m", "nasseg.cli"]
    subprocess.run(base + ["search", "--space", "unet", "--data", str(small3d), "--out",
                           str(search), "--epochs", "1", "--warmup-epochs", "0",
                           "--steps-per-epoch", "2", "--space-arg", "features=2",
                           "--space-arg", "levels=2", "--device", "cpu"],
                   check=True, capture_output=True, cwd=tmp_path, env=env, timeout=300)
    done = subprocess.run(base + ["train", str(search / "arch.json"), "--out", str(tmp_path / "t"),
                                  "--epochs", "2", "--steps-per-epoch", "2", "--device", "cpu",
                                  "--nproc", "2"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("training finished") == 1  # only rank 0 reports and writes
    cost = read_json(tmp_path / "t" / "cost.json")
    assert cost["world_size"] == 2 and cost["rank_max_difference"] == 0.0
    assert read_json(tmp_path / "t" / "metrics.json")["epochs"] == 2
