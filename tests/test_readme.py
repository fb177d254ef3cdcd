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


def _example() -> str:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- custom-space-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README lost its custom-space example"
    return block.group(1)


@pytest.fixture()
def example_module(tmp_path, monkeypatch) -> Path:
    (tmp_path / "my_spaces.py").write_text(_example(), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_space_searches_from_python(example_module, small2d):
    from nasseg.searches.darts import SearchConfig
    from nasseg.searches.darts.run import start_search

    run = start_search(example_module / "runs" / "tiny", "my_spaces:TinySpace", str(small2d),
                       knobs={"width": 2}, space_args={},
                       config=SearchConfig(epochs=1, warmup_epochs=0, device="cpu"))
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
           "--out", "runs/cli", "--device", "cpu"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=example_module)
    assert result.returncode == 0, result.stderr
    derive = subprocess.run([sys.executable, "-m", "nasseg.cli", "derive", "runs/cli",
                             "--tau", "0.3"], env=env, capture_output=True, text=True,
                            cwd=example_module)
    assert derive.returncode == 0, derive.stderr
    assert "1/1 connections kept" in derive.stdout
