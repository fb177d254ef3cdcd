"""Wall-time budgets: durations parse, the plan fits what is left, and search and train size
themselves to a budget and record it."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from nasseg.cli import cli
from nasseg.runtime.time_budget import SEARCH_EPOCH_FACTOR, TimeBudget, parse_duration

TINY = ["--space", "unet", "--space-arg", "features=4", "--space-arg", "levels=2",
        "--device", "cpu"]


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("10m", 600), ("2h", 7200),
                                          ("1h30m", 5400), ("0.5h", 1800), (45, 45)])
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "-5m", "0s", "m"])
def test_a_bad_duration_is_one_clear_error(text):
    with pytest.raises(ValueError, match="time budget"):
        parse_duration(text)


def test_the_plan_fills_the_budget_left():
    budget = TimeBudget(100.0)
    budget.record("train", 10.0)
    assert budget.fit_epochs(1) == 10          # 90 s left / 10 s an epoch, plus the one done
    budget.record("train", 30.0)               # epochs got slower: 60 s left / 20 s mean
    assert budget.fit_epochs(2) == 5


def test_warmup_epochs_are_cheaper_until_searching_is_timed():
    budget = TimeBudget(100.0)
    budget.record("warmup", 4.0)
    assert budget.estimate("train") == pytest.approx(4.0 * SEARCH_EPOCH_FACTOR)
    # a 20 % warm-up: of T epochs, round(0.2 T) are 4 s, the others 6 s
    total = budget.fit_epochs(1, lambda t: round(0.2 * t))
    warm = round(0.2 * total)
    assert (warm - 1) * 4 + (total - warm) * 6 <= 96 < warm * 4 + (total + 1 - warm) * 6


def test_an_exhausted_budget_still_ends_every_stage():
    budget = TimeBudget(5.0)
    budget.record("train", 10.0)
    assert budget.fit_epochs(1) == 1
    assert budget.fit_epochs(1, minimum=3) == 3


def test_budget_state_survives_a_resume():
    budget = TimeBudget(60.0)
    budget.record("warmup", 3.0)
    budget.record("train", 5.0)
    again = TimeBudget.from_state(60.0, json.loads(json.dumps(budget.to_dict())))
    assert again.spent == 8.0 and again.estimate("train") == 5.0


def test_search_and_train_fit_their_epochs_to_the_budget(small3d, tmp_path):
    """A budget smaller than one epoch ends the search after its first epoch (25 planned
    without it) and the retrain after its first; both record the budget."""
    out = tmp_path / "s"
    result = CliRunner().invoke(cli, ["search", "--data", str(small3d), "--out", str(out),
                                      "--time-budget", "0.01s", *TINY])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["search"]["time_budget"] == 0.01
    cost = json.loads((out / "cost.json").read_text())
    assert cost["epochs_done"] == 1 and cost["epochs_planned"] == 1
    assert cost["time_budget"]["seconds"] == 0.01 and cost["time_budget"]["spent"] > 0.01

    result = CliRunner().invoke(cli, ["train", str(out / "arch.json"), "--out",
                                      str(tmp_path / "t"), "--device", "cpu",
                                      "--time-budget", "0.01s"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["best_epoch"] == 1
    assert json.loads((tmp_path / "t" / "run.json").read_text())["train"]["time_budget"] == 0.01


def test_epochs_and_a_budget_are_exclusive(small3d, tmp_path):
    result = CliRunner().invoke(cli, ["search", "--data", str(small3d), "--out",
                                      str(tmp_path / "s"), "--epochs", "3",
                                      "--time-budget", "10m", *TINY])
    assert result.exit_code == 2 and "not both" in result.output
    result = CliRunner().invoke(cli, ["search", "--data", str(small3d), "--out",
                                      str(tmp_path / "s"), "--time-budget", "soon", *TINY])
    assert result.exit_code == 2 and "expected a duration" in result.output
