"""Exported networks load and run in a clean process without nasseg, matching nasseg's output."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import rename_first_weight

from nasseg.cli import cli
from nasseg.export import load_trained

LOADERS = {
    "torchscript": """
        import torch
        net = torch.jit.load(sys.argv[1])
        out = net(torch.from_numpy(x)).detach().numpy()
    """,
    "onnx": """
        import onnxruntime
        session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
        out = session.run(None, {"image": x})[0]
    """,
}


@pytest.fixture(scope="module")
def trained(small3d, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    runner = CliRunner()
    result = runner.invoke(cli, ["search", "--data", str(small3d), "--out", str(root / "s"),
                                 "--epochs", "1", "--warmup-epochs", "0", "--steps-per-epoch", "2",
                                 "--device", "cpu", "--space-arg", "features=2"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["train", str(root / "s" / "arch.json"), "--out", str(root / "t"),
                                 "--epochs", "1", "--steps-per-epoch", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return root / "t"


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_runs_without_nasseg(trained, fmt, tmp_path):
    result = CliRunner().invoke(cli, ["export", str(trained), "--format", fmt])
    assert result.exit_code == 0, result.output
    path = trained / ("model.ts" if fmt == "torchscript" else "model.onnx")
    model, info = load_trained(trained)
    arch = info["arch"]
    x = np.random.default_rng(0).standard_normal((2, *arch["input_shape"])).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent("""
        import sys
        import numpy as np
        sys.modules["nasseg"] = None  # any import of nasseg now fails
        x = np.load(sys.argv[2])
    """) + textwrap.dedent(LOADERS[fmt]) + "np.save(sys.argv[3], out)\n")
    done = subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "x.npy"),
                           str(tmp_path / "out.npy")], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-4, atol=1e-4)


def test_export_of_a_non_training_folder_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(cli, ["export", str(tmp_path)])
    assert result.exit_code == 1
    assert f"{tmp_path}/model.pt: missing" in result.stderr


def test_weights_that_no_longer_fit_their_architecture_are_a_clear_error(trained, tmp_path):
    """A model.pt trained before its space's fixed ops changed names the mismatch in one line."""
    old = tmp_path / "old"
    old.mkdir()
    name = rename_first_weight(trained / "model.pt", old / "model.pt")
    result = CliRunner().invoke(cli, ["export", str(old)])
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert f"{old}/model.pt: its weights do not fit the network" in message
    assert name in message  # the first missing key
