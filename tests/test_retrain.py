"""The retrain shares the search's runtime: resume after SIGKILL to the same weights, AMP,
portable folders, and one clear line for an arch.json that does not fit its space."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import kill_after_first_checkpoint, rename_first_weight

from nasseg.artifacts.arch_file import build_derived
from nasseg.cli import cli

TINY = ["--space", "unet", "--space-arg", "features=4", "--space-arg", "levels=2",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def arch_file(small3d, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("search") / "run"
    result = CliRunner().invoke(cli, ["search", "--data", str(small3d), "--out", str(out),
                                      "--epochs", "2", "--warmup-epochs", "1",
                                      "--extend-unlearned", "0", *TINY])
    assert result.exit_code == 0, result.output
    return out / "arch.json"


def _train_cmd(arch: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nasseg.cli", "train", str(arch), "--out", str(out),
            "--epochs", "5", "--steps-per-epoch", "2", "--seed", "2", "--deterministic",
            "--device", "cpu", *extra]


def test_killed_retrain_resumes_to_the_same_weights(arch_file, tmp_path):
    run = dict(env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=tmp_path)
    unbroken = tmp_path / "unbroken"
    subprocess.run(_train_cmd(arch_file, unbroken), check=True, capture_output=True, **run)

    broken = tmp_path / "broken"
    done = kill_after_first_checkpoint(_train_cmd(arch_file, broken), broken, 5, **run)
    resumed = subprocess.run([sys.executable, "-m", "nasseg.cli", "train", "--resume", "--out",
                              str(broken)], capture_output=True, text=True, **run)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {broken} after epoch {done}" in resumed.stderr

    a = torch.load(unbroken / "checkpoint.pt", weights_only=False)
    b = torch.load(broken / "checkpoint.pt", weights_only=False)
    assert a["epochs_done"] == b["epochs_done"] == 5
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    ma = json.loads((unbroken / "metrics.json").read_text())
    mb = json.loads((broken / "metrics.json").read_text())
    assert ma["best_epoch"] == mb["best_epoch"] and ma["dice_mean"] == mb["dice_mean"]
    cost = json.loads((broken / "cost.json").read_text())
    assert len(cost["sessions"]) == 2 and cost["steps"]["weight"] > 0


def test_amp_retrain_runs_on_cpu(arch_file, tmp_path):
    result = CliRunner().invoke(cli, ["train", str(arch_file), "--out", str(tmp_path / "t"),
                                      "--epochs", "1", "--amp", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "t" / "cost.json").read_text())["amp_dtype"] == "bfloat16"


def test_arch_file_missing_a_choice_gives_one_line(arch_file, tmp_path):
    arch = json.loads(arch_file.read_text())
    del arch["sample"]["upsample"]
    del arch["sample"]["enc0_op"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**arch, "data": str(arch_file.parent / arch["data"])}))
    result = CliRunner().invoke(cli, ["train", str(bad), "--out", str(tmp_path / "t")])
    assert result.exit_code == 1
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("nasseg: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    line = errors[0]
    assert str(bad) in line
    assert "lacks enc0_op (space" in line  # the knob takes its default; the op cannot
    assert not (tmp_path / "t").exists()


def test_a_knob_added_since_the_file_was_written_takes_its_default(arch_file):
    """An arch file written before a knob existed still builds, as the net it was derived as."""
    arch = json.loads(arch_file.read_text())
    written = build_derived(arch)
    upsample = arch["sample"].pop("upsample")
    older = build_derived(arch)
    assert upsample == "transpose" == older.knob_values["upsample"]
    assert [p.shape for p in older.parameters()] == [p.shape for p in written.parameters()]


def test_resume_needs_a_training_folder(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--resume", "--out", str(tmp_path / "none")])
    assert result.exit_code == 1 and "missing" in result.stderr


def test_resume_names_weights_that_do_not_fit_in_one_line(arch_file, tmp_path):
    out = tmp_path / "t"
    result = CliRunner().invoke(cli, ["train", str(arch_file), "--out", str(out), "--epochs",
                                      "1", "--steps-per-epoch", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    name = rename_first_weight(out / "checkpoint.pt")
    result = CliRunner().invoke(cli, ["train", "--resume", "--out", str(out)])
    assert result.exit_code == 1
    errors = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and f"{out}/checkpoint.pt: unreadable or not" in errors[0]
    assert name in errors[0]


def test_an_epoch_can_be_set_in_steps_for_search_and_retrain(small3d, tmp_path):
    """Fixed steps per epoch, more than one pass over the few cases of a search half holds."""
    result = CliRunner().invoke(cli, ["search", "--data", str(small3d), "--out", str(tmp_path / "s"),
                                      "--epochs", "2", "--warmup-epochs", "1",
                                      "--steps-per-epoch", "7", "--extend-unlearned", "0",
                                      *TINY])
    assert result.exit_code == 0, result.output
    cost = json.loads((tmp_path / "s" / "cost.json").read_text())
    assert cost["steps"] == {"weight": 14, "arch": 7}
    result = CliRunner().invoke(cli, ["train", str(tmp_path / "s" / "arch.json"), "--out",
                                      str(tmp_path / "t"), "--epochs", "2", "--device", "cpu",
                                      "--steps-per-epoch", "5"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "t" / "cost.json").read_text())["steps"]["weight"] == 10


def test_by_default_an_epoch_is_a_fixed_number_of_steps_whatever_the_data_size(arch_file,
                                                                               tmp_path):
    """small3d's search half is 5 cases (2 steps a pass), yet a default search epoch is
    SEARCH_STEPS_PER_EPOCH steps, a default retrain epoch TRAIN_STEPS_PER_EPOCH; 'pass' asks
    for one pass over the cases."""
    from nasseg.searches.darts.config import SEARCH_STEPS_PER_EPOCH
    from nasseg.training.trainer import TRAIN_STEPS_PER_EPOCH

    searched = json.loads((arch_file.parent / "cost.json").read_text())["steps"]
    assert searched == {"weight": 2 * SEARCH_STEPS_PER_EPOCH, "arch": SEARCH_STEPS_PER_EPOCH}
    for steps, expected in ((None, TRAIN_STEPS_PER_EPOCH), ("pass", 5)):
        out = tmp_path / f"t-{steps}"
        result = CliRunner().invoke(cli, ["train", str(arch_file), "--out", str(out),
                                          "--epochs", "1", "--device", "cpu",
                                          *(["--steps-per-epoch", steps] if steps else [])])
        assert result.exit_code == 0, result.output
        assert json.loads((out / "cost.json").read_text())["steps"]["weight"] == expected
        assert json.loads((out / "run.json").read_text())["train"]["steps_per_epoch"] == (
            TRAIN_STEPS_PER_EPOCH if steps is None else None)


@pytest.mark.parametrize("value", ["0", "many"])
def test_a_bad_steps_per_epoch_is_a_usage_error(value, tmp_path):
    result = CliRunner().invoke(cli, ["search", "--out", str(tmp_path / "s"),
                                      "--steps-per-epoch", value])
    assert result.exit_code == 2 and "positive number of steps or 'pass'" in result.output
    assert not (tmp_path / "s").exists()
