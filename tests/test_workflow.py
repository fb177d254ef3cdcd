"""search -> derive -> train through the CLI, and the one-line errors of bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from nasseg.artifacts.files import read_json
from nasseg.cli import cli

SMALL = ["--space-arg", "features=4", "--space-arg", "levels=2", "--device", "cpu",
         "--steps-per-epoch", "2"]


def _invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def search_run(small3d, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("search") / "run"
    result = _invoke("search", "--space", "unet", "--data", small3d, "--out", out, "--epochs", 3,
                     "--warmup-epochs", 1, "--arch-lr", 0.05, *SMALL)
    assert result.exit_code == 0, result.output
    assert "next: nasseg train" in result.stdout
    return out


def test_search_writes_the_run_folder(search_run):
    for name in ("run.json", "split.json", "checkpoint.pt", "arch_params.json", "arch.json"):
        assert (search_run / name).is_file(), name
    assert any((search_run / "tensorboard").iterdir())
    arch = read_json(search_run / "arch.json")
    assert arch["format"] == "nasseg.arch/1" and arch["space"] == "unet"
    assert arch["params"] < arch["supernet_params"]
    assert arch["flops"] > 0 and arch["tau"] == 0.5
    op = arch["choices"]["enc0_op"]
    assert op["chosen"] == op["candidates"][max(range(3), key=op["scores"].__getitem__)]


def test_derive_at_two_taus_keeps_different_connections(search_run, tmp_path):
    scores = read_json(search_run / "arch_params.json")["connection"]
    gates = sorted(p for entry in scores.values() for p in entry["probs"])
    low, high = gates[0] - 1e-3, gates[-1] + 1e-3
    assert 0 < low and high < 1
    for tau, name in ((low, "low.json"), (high, "high.json")):
        result = _invoke("derive", search_run, "--tau", tau, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
    a, b = read_json(tmp_path / "low.json"), read_json(tmp_path / "high.json")
    kept = lambda arch: sum(len(c["kept"]) for c in arch["choices"].values()  # noqa: E731
                            if c["kind"] == "connection")
    assert kept(a) == len(gates) and kept(b) == 0
    assert a["sample"] != b["sample"] and b["params"] <= a["params"]


def test_derive_builds_the_searched_architecture_wider(search_run, tmp_path):
    searched = read_json(search_run / "arch.json")
    result = _invoke("derive", search_run, "--space-arg", "features=8", "--out",
                     tmp_path / "wide.json")
    assert result.exit_code == 0, result.output
    wide = read_json(tmp_path / "wide.json")
    assert wide["sample"] == searched["sample"] and wide["space_args"]["features"] == 8
    assert wide["params"] > 2 * searched["params"]
    result = CliRunner().invoke(cli, ["derive", str(search_run), "--space-arg", "featurez=8",
                                      "--out", str(tmp_path / "bad.json")])
    assert result.exit_code == 1 and "cannot be built with" in result.output
    assert "featurez" in result.output and not (tmp_path / "bad.json").exists()


def test_train_beats_chance(demo3d_subset, tmp_path):
    search = tmp_path / "search"
    result = _invoke("search", "--space", "unet", "--data", demo3d_subset, "--out", search,
                     "--epochs", 1, "--warmup-epochs", 0, "--steps-per-epoch", 2, "--space-arg",
                     "features=8", "--space-arg", "levels=2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    out = tmp_path / "train"
    # 10 epochs of the default 32 steps: 320 steps, 20 passes over the 16 training cases
    result = _invoke("train", search / "arch.json", "--out", out, "--epochs", 10, "--device", "cpu")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["dice_per_class"]) == {"bright_blob", "textured_blob"}
    assert metrics["dice_mean"] > max(0.4, 5 * metrics["chance_dice"]), metrics
    assert (out / "model.pt").is_file()


@pytest.mark.parametrize("args,message", [
    (["search", "--data", "missing.npz"], "missing.npz: "),
    (["search", "--space", "nope"], "unknown space 'nope'"),
    (["search", "--space", "unet", "--set", "upsample=sideways"], "knob 'upsample' takes one of"),
    (["search", "--set", "sbb=sometimes"], "knob 'sbb' takes one of"),
    (["search", "--set", "depth=3"], "has no knob 'depth'"),
    (["search", "--space-arg", "features=wide"], "cannot be built with"),
    (["derive", "not_a_run", "--tau", "0.5"], "not_a_run/run.json: missing"),
    (["derive", "not_a_run", "--tau", "1.5"], "tau must lie in (0, 1)"),
    (["train", "nothing.json"], "nothing.json: no such architecture file"),
])
def test_bad_input_gives_one_clear_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("nasseg: error: ") and message in lines[-1], result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("run.json"))


def test_corrupt_arch_file_is_named(tmp_path):
    bad = tmp_path / "arch.json"
    bad.write_text("{ not json")
    result = CliRunner().invoke(cli, ["train", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}: not a readable architecture file" in result.stderr


def test_existing_run_is_never_overwritten(search_run, small3d):
    before = (search_run / "run.json").read_bytes()
    result = CliRunner().invoke(cli, ["search", "--data", str(small3d), "--out", str(search_run)])
    assert result.exit_code == 1
    assert "already holds a run; pass --resume" in result.stderr
    assert (search_run / "run.json").read_bytes() == before


def test_spaces_lists_unet_and_its_choices():
    result = _invoke("spaces")
    assert result.exit_code == 0 and "unet" in result.stdout
    result = _invoke("spaces", "unet")
    assert "knob        upsample" in result.stdout and "skip0" in result.stdout
