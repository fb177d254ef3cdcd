"""Pictures beside the numbers: a search's progress and architecture evolution (whole after a
resume), a retrain's progress, each verb naming them, and atomic writes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from nasseg.artifacts.pictures import _figure, write_png
from nasseg.cli import cli

TINY = ["--space", "unet", "--space-arg", "features=2", "--space-arg", "levels=2",
        "--device", "cpu", "--steps-per-epoch", "2"]


def _check_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0, path
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG" and min(image.size) > 0


def _no_temp_files(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], folder


def test_search_and_retrain_draw_their_progress(small3d, tmp_path):
    run = tmp_path / "search"
    first = CliRunner().invoke(cli, ["search", "--data", str(small3d), "--out", str(run),
                                     "--epochs", "1", "--warmup-epochs", "0", *TINY])
    assert first.exit_code == 0, first.output
    resumed = CliRunner().invoke(cli, ["search", "--resume", "--out", str(run), "--epochs", "2"])
    assert resumed.exit_code == 0, resumed.output
    history = torch.load(run / "checkpoint.pt", weights_only=False)["history"]
    assert [r["epoch"] for r in history] == [0, 1]  # the evolution survives the resume
    assert all(set(r["scores"]) == {"op", "connection"} for r in history)
    for name in ("progress.png", "arch_evolution.png"):
        _check_png(run / name)
        assert str(run / name) in resumed.output.splitlines()[-3]  # the verb says where
    _no_temp_files(run)

    train = tmp_path / "train"
    trained = CliRunner().invoke(cli, ["train", str(run / "arch.json"), "--out", str(train),
                                       "--epochs", "2", "--steps-per-epoch", "2", "--device",
                                       "cpu"])
    assert trained.exit_code == 0, trained.output
    _check_png(train / "progress.png")
    assert f"picture: {train / 'progress.png'}" in trained.output
    _no_temp_files(train)


def test_a_picture_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "progress.png"
    fig = _figure(2, 2)
    fig.subplots().plot([0, 1], [1, 0])
    write_png(fig, target)
    _check_png(target)
    before = target.read_bytes()

    def broken_savefig(path, **_):
        Path(path).write_bytes(b"\x89PNG half")
        raise RuntimeError("disk full")

    fig.savefig = broken_savefig
    with pytest.raises(RuntimeError, match="disk full"):
        write_png(fig, target)
    assert target.read_bytes() == before  # the old picture stays
    assert [p.name for p in tmp_path.iterdir()] == ["progress.png"]  # no temp file left
