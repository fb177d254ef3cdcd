"""The README's custom-space example works as written, from Python and from the CLI."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nasseg.derive import build_derived, read_arch

README = Path(__file__).resolve().parents[1] / "README.md"


def _example(marker: str) -> str:
    text = README.read_text(encoding="utf-8")
    block = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", text, re.S)
    assert block, f"README lost its {marker}"
    return block.group(1)


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, marker: str) -> Path:
    (tmp_path / f"{name}.py").write_text(_example(marker), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture()
def example_module(tmp_path, monkeypatch) -> Path:
    return _module(tmp_path, monkeypatch, "my_spaces", "custom-space-example")


def test_readme_space_searches_from_python(example_module, small2d):
    from nasseg.searches.darts import SearchConfig
    from nasseg.searches.darts.run import start_search

    run = start_search(example_module / "runs" / "tiny", "my_spaces:TinySpace", str(small2d),
                       knobs={"width": 2}, space_args={},
                       config=SearchConfig(epochs=1, warmup_epochs=0, device="cpu",
                                           steps_per_epoch=2))
    arch = read_arch(run.arch_path)
    assert arch["space"] == "my_spaces:TinySpace" and arch["sample"]["width"] == 2
    assert set(arch["sample"]) == {"width", "gate_reg", "skip", "deep_op"}
    net = build_derived(arch)
    assert arch["params"] < arch["supernet_params"]
    assert type(net).__name__ == "TinySpace"


def test_readme_space_searches_from_the_cli(example_module, small2d):
    env = {**os.environ, "PYTHONPATH": str(example_module)}
    cmd = [sys.executable, "-m", "nasseg.cli", "search", "--space", "my_spaces:TinySpace",
           "--data", str(small2d), "--set", "width=2", "--epochs", "1", "--warmup-epochs", "0",
           "--steps-per-epoch", "2", "--out", "runs/cli", "--device", "cpu"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=example_module)
    assert result.returncode == 0, result.stderr
    derive = subprocess.run([sys.executable, "-m", "nasseg.cli", "derive", "runs/cli",
                             "--tau", "0.3"], env=env, capture_output=True, text=True,
                            cwd=example_module)
    assert derive.returncode == 0, derive.stderr
    assert "1/1 connections kept" in derive.stdout


def test_readme_method_contract_example_searches_trains_and_exports(tmp_path, monkeypatch,
                                                                     small2d):
    from nasseg.export import export_trained
    from nasseg.searches.darts import SearchConfig
    from nasseg.searches.darts.run import start_search
    from nasseg.training.trainer import TrainConfig, train_architecture

    folder = _module(tmp_path, monkeypatch, "fusion_space", "method-contract-example")
    run = start_search(folder / "s", "fusion_space:FusionSpace", str(small2d), knobs={},
                       space_args={"features": 4},
                       config=SearchConfig(epochs=3, warmup_epochs=1, device="cpu",
                                           steps_per_epoch=2))
    arch = read_arch(run.arch_path)
    assert arch["sample"]["fuse"] in ("add", "gate")
    net = build_derived(arch)
    assert arch["params"] == sum(p.numel() for n, p in net.named_parameters()
                                 if not n.startswith("aux."))
    metrics = train_architecture(run.arch_path, folder / "t", None,
                                 TrainConfig(epochs=3, device="cpu"))
    assert [s["name"] for s in metrics["stages"]] == ["context", "joint"]
    assert metrics["best_epoch"] in (2, 3)
    assert export_trained(folder / "t", "torchscript").is_file()
