"""The method contract end to end: a space written in this file alone, with two inputs (a patch
and a context crop), two outputs, a training-only head, two stages, a searched fusion over both
inputs and its own validation metric, runs search -> derive -> train -> predict -> export
through the CLI, with no edit anywhere else."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_real_data import make_png
from test_views import _large_image_folder
from torch import nn
from torch.nn import functional as F

from nasseg.cli import cli
from nasseg.data import DataView
from nasseg.derive import build_derived, count_parameters, read_arch
from nasseg.export import load_trained
from nasseg.ops import ConvNormAct, OutputHead
from nasseg.space import SearchSpace, TrainingStage


class AddFusion(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class ConcatFusion(nn.Module):
    def __init__(self, dims: int, channels: int) -> None:
        super().__init__()
        self.mix = ConvNormAct(dims, 2 * channels, channels, kernel=1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.cat([a, b], 1))


class AttentionFusion(nn.Module):
    def __init__(self, dims: int, channels: int) -> None:
        super().__init__()
        self.gate = ConvNormAct(dims, channels, channels, kernel=1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + torch.sigmoid(self.gate(b)) * b


class PixelAccuracy:
    """The space's own metric: the share of pixels the segmentation gets right."""

    def __init__(self) -> None:
        self.right = self.total = 0

    def update(self, outputs: Any, batch: Mapping[str, Any]) -> None:
        logits = outputs if isinstance(outputs, torch.Tensor) else outputs["seg"]
        pred = logits.argmax(1)
        self.right += int((pred == batch["label"]).sum())
        self.total += pred.numel()

    def compute(self) -> dict[str, float]:
        return {"pixel_acc": self.right / max(self.total, 1)}


class DualSpace(SearchSpace):
    """Patch + 4x context; fusion searched over both; a training-only head on the context."""

    selection_metric = "pixel_acc"

    def __init__(self, in_channels: int = 1, num_classes: int = 2, spatial_dims: int = 2,
                 features: int = 4) -> None:
        super().__init__()
        d, f = spatial_dims, features
        self.fine = ConvNormAct(d, in_channels, f)
        self.coarse = ConvNormAct(d, in_channels, f)
        self.fusion = self.op_choice("fusion", {
            "add": AddFusion, "concat": lambda: ConcatFusion(d, f),
            "attention": lambda: AttentionFusion(d, f)}, inputs=2)
        self.fixed_edge("input", "fused")
        self.fixed_edge("fused", "out")
        self.set_outputs("out")
        self.skip = self.connection_choice("skip", "out", ["input"])
        self.head = OutputHead(d, f, num_classes)
        self.context_head = OutputHead(d, f, num_classes)  # trains the coarse branch alone

    def data_view(self) -> DataView:
        return DataView(context=(4,), context_labels=True)

    def forward_batch(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        a, b = self.fine(batch["image"]), self.coarse(batch["context"][:, 0])
        fused = self.fusion(a, b)
        skip = self.skip([a])
        out = {"seg": self.head(fused if skip is None else fused + skip)}
        if self.training:
            out["context_seg"] = self.context_head(b)
        return out

    def compute_loss(self, outputs, batch, stage):
        context = F.cross_entropy(outputs["context_seg"], batch["context_label"][:, 0])
        if stage.name == "context":
            return context
        return self.segmentation_loss(outputs, batch) + 0.5 * context

    def training_stages(self) -> list[TrainingStage]:
        return [TrainingStage("context", 0.4, trainable=("coarse", "context_head"), search=False),
                TrainingStage("joint", 0.6, lr_scale=0.5, lr_multipliers={"coarse": 0.1})]

    def metrics(self) -> list[PixelAccuracy]:
        return [PixelAccuracy()]

    def training_only(self) -> tuple[str, ...]:
        return ("context_head",)


SPACE = f"{__name__}:DualSpace"


def _ok(*args: Any) -> Any:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def workflow(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("contract")
    data = make_png(root)
    _ok("search", "--space", SPACE, "--data", data, "--out", root / "search", "--epochs", 5,
        "--warmup-epochs", 2, "--steps-per-epoch", 2, "--arch-lr", 0.05, "--device", "cpu",
        "--seed", 1, "--extend-unlearned", 0)  # the planned stages only
    _ok("train", root / "search" / "arch.json", "--out", root / "train", "--epochs", 5,
        "--steps-per-epoch", 2, "--device", "cpu")
    return {"root": root, "data": data, "search": root / "search", "train": root / "train"}


def test_search_follows_the_stages_and_searches_the_two_input_fusion(workflow):
    search = workflow["search"]
    params = json.loads((search / "arch_params.json").read_text())
    probs = params["op"]["fusion"]["probs"]
    assert len(probs) == 3 and max(probs) - min(probs) > 1e-3  # the fusion's alphas moved
    state = torch.load(search / "checkpoint.pt", weights_only=False)
    stages = [h["stage"] for h in state["history"]]
    assert stages == ["context", "context", "joint", "joint", "joint"]
    assert "pixel_acc" in state["history"][-1]["val"]
    run = json.loads((search / "run.json").read_text())
    assert run["view"] == {"context": [4], "context_labels": True}
    assert not Path(run["data"]).is_absolute()


def test_derived_net_counts_exclude_the_training_only_head(workflow):
    arch = read_arch(workflow["search"] / "arch.json")
    stored = json.loads((workflow["search"] / "arch.json").read_text())["data"]
    assert not Path(stored).is_absolute() and Path(arch["data"]) == workflow["data"]
    net = build_derived(arch)
    head = sum(p.numel() for p in net.context_head.parameters())
    assert arch["params"] == count_parameters(net) == sum(
        p.numel() for p in net.parameters()) - head
    assert arch["params"] < arch["supernet_params"]


def test_train_selects_by_the_space_metric_and_keeps_a_portable_folder(workflow):
    train = workflow["train"]
    metrics = json.loads((train / "metrics.json").read_text())
    assert metrics["selection_metric"] == "pixel_acc"
    assert 0.0 <= metrics["validation"]["pixel_acc"] <= 1.0
    assert metrics["best_epoch"] in (3, 4, 5)  # chosen among the final stage's epochs
    assert [s["name"] for s in metrics["stages"]] == ["context", "joint"]
    for name in ("run.json", "arch.json", "plan.json", "model.pt", "checkpoint.pt", "cost.json"):
        assert (train / name).is_file(), name
    for name in ("run.json", "arch.json", "metrics.json", "plan.json"):
        text = (train / name).read_text()
        assert str(workflow["root"]) not in text, f"{name} holds an absolute path"
    assert json.loads((train / "plan.json").read_text())["view"]["context"] == [4]


def test_predict_runs_with_the_training_data_moved_away(workflow, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(workflow["data"] / "imagesTr", images)
    moved = tmp_path / "elsewhere"
    shutil.move(str(workflow["data"]), moved)
    try:
        out = tmp_path / "pred"
        result = _ok("predict", workflow["train"], "--input", images, "--output", out)
        assert "predicted 4 case(s)" in result.stdout
        from PIL import Image
        for f in images.glob("*.png"):
            pred = np.asarray(Image.open(out / f"{f.name.removesuffix('_0000.png')}.png"))
            assert pred.shape == (30, 34) and pred.max() < 3
    finally:
        shutil.move(str(moved), workflow["data"])


def test_eval_output_ignores_the_label_and_uses_the_context(workflow):
    model, info = load_trained(workflow["train"])
    batch = {k: torch.randn_like(v) for k, v in
             model.example_batch(info["arch"]["input_shape"][1:], 3).items()}
    batch["label"] = torch.zeros(1, 30, 34, dtype=torch.long)
    with torch.no_grad():
        with_label = model.forward_batch(batch)["seg"]
        without = model.forward_batch({k: v for k, v in batch.items() if k != "label"})["seg"]
        other_context = model.forward_batch({**batch, "context": batch["context"] + 1})["seg"]
    assert torch.equal(with_label, without)
    assert not torch.allclose(with_label, other_context)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_takes_both_inputs_and_runs_without_nasseg(workflow, fmt, tmp_path):
    out = tmp_path / ("m.ts" if fmt == "torchscript" else "m.onnx")
    _ok("export", workflow["train"], "--format", fmt, "--out", out)
    model, info = load_trained(workflow["train"])
    shape = info["arch"]["input_shape"]
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, *shape)).astype(np.float32)
    context = rng.standard_normal((2, 1, *shape)).astype(np.float32)
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "context.npy", context)
    with torch.no_grad():
        expected = model.forward_batch({"image": torch.from_numpy(image),
                                        "context": torch.from_numpy(context)})["seg"].numpy()
    run = {"torchscript": """
        import torch
        net = torch.jit.load(sys.argv[1])
        assert not any("context_head" in n for n, _ in net.named_parameters())
        with torch.no_grad():
            out = net(torch.from_numpy(image), torch.from_numpy(context)).numpy()
        """, "onnx": """
        import onnxruntime as ort
        s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
        assert [i.name for i in s.get_inputs()] == ["image", "context"]
        out = s.run(None, {"image": image, "context": context})[0]
        """}[fmt]
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent("""
        import sys
        import numpy as np
        sys.modules["nasseg"] = None  # any import of nasseg now fails
        image, context = np.load(sys.argv[2]), np.load(sys.argv[3])
        """) + textwrap.dedent(run) + "np.save(sys.argv[4], out)\n")
    subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "image.npy"),
                    str(tmp_path / "context.npy"), str(tmp_path / "out.npy")],
                   check=True, cwd=tmp_path)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-4, atol=1e-4)


def test_the_space_searches_and_trains_on_large_images_read_by_region(tmp_path):
    data = _large_image_folder(tmp_path, n=4, shape=(120, 110))
    _ok("search", "--space", SPACE, "--data", data, "--out", tmp_path / "s", "--epochs", 3,
        "--warmup-epochs", 1, "--steps-per-epoch", 2, "--device", "cpu")
    _ok("train", tmp_path / "s" / "arch.json", "--out", tmp_path / "t", "--epochs", 2,
        "--steps-per-epoch", 2, "--device", "cpu")
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["num_val_cases"] == 1 and 0.0 <= metrics["dice_mean"] <= 1.0
