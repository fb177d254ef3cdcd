"""Export a trained derived network as one file that runs without nasseg.

``torchscript``: a traced TorchScript module (``torch.jit.load``). ``onnx``: an ONNX graph
(onnxruntime). Both are traced at the training patch size: the file takes inputs of shape
``(N, C, *patch)`` and returns class logits of shape ``(N, K, *patch)``; whole images are
predicted patch by patch (sliding window), as nasseg itself does.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from nasseg.artifacts.files import FileFormatError, atomic_path
from nasseg.artifacts.run_folder import RunFolder
from nasseg.derive import build_derived
from nasseg.space import SearchSpace

__all__ = ["FORMATS", "load_trained", "export_trained"]

FORMATS = ("torchscript", "onnx")


class _Logits(torch.nn.Module):
    """The network with its segmentation output alone, as a plain tensor function."""

    def __init__(self, model: SearchSpace) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.segmentation(self.model.forward_batch({"image": image}))


def load_trained(train_dir: str | Path) -> tuple[SearchSpace, dict[str, Any]]:
    """The trained network of a ``nasseg train`` folder (eval mode, CPU) and its ``arch``."""
    run = RunFolder(Path(train_dir))
    run.require(run.model)
    try:
        state = torch.load(run.model, map_location="cpu", weights_only=False)
        arch = state["arch"]
        model = build_derived(arch)
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError, EOFError, OSError) as exc:
        raise FileFormatError(f"{run.model}: not a nasseg trained model ({exc})") from None
    return model.eval(), arch


def export_trained(train_dir: str | Path, fmt: str, out: str | Path | None = None) -> Path:
    """Write the trained network of ``train_dir`` as ``model.ts`` or ``model.onnx`` (atomic)."""
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {FORMATS}, got {fmt!r}")
    model, arch = load_trained(train_dir)
    net = _Logits(model).eval()
    example = torch.randn(1, *arch["input_shape"])
    target = Path(out) if out else Path(train_dir) / ("model.ts" if fmt == "torchscript" else "model.onnx")
    with warnings.catch_warnings():
        # Tracing warns about Python shape arithmetic: by design the file is fixed to the patch.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # Instance norm always normalises by the input's own statistics: "train=True" is right.
        warnings.filterwarnings("ignore", message=".*'instance_norm' is set to train=True")
        # The TorchScript tracer and the TorchScript-based ONNX exporter are deprecated in
        # favour of torch.export, which cannot yet trace NNI model spaces; they still work.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        with atomic_path(target) as tmp, torch.no_grad():
            if fmt == "torchscript":
                torch.jit.trace(net, example, check_trace=False).save(str(tmp))
            else:
                torch.onnx.export(net, (example,), str(tmp), dynamo=False,
                                  input_names=["image"], output_names=["logits"],
                                  dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    return target
