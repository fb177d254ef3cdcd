"""Export a trained derived network as one file that runs without nasseg.

``torchscript``: a traced TorchScript module (``torch.jit.load``). ``onnx``: an ONNX graph
(onnxruntime). Both are traced at the training patch size. The file takes the inputs of the
network's data view in order (``image`` ``(N, C, *patch)``, then ``context``
``(N, n, C, *patch)`` for a view with context crops) and returns class logits
``(N, K, *patch)``; whole images are predicted patch by patch (sliding window), as nasseg
itself does. Training-only modules are removed before tracing: the file holds the inference
network alone.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch

from nasseg.artifacts.files import FileFormatError, atomic_path, error_line
from nasseg.artifacts.run_folder import RunFolder
from nasseg.derive import build_derived
from nasseg.space import SearchSpace

__all__ = ["FORMATS", "load_trained", "export_trained", "inference_network"]

FORMATS = ("torchscript", "onnx")


class _Logits(torch.nn.Module):
    """The network with its view's tensors as positional inputs and its segmentation logits as
    the one output: a plain tensor function to trace."""

    def __init__(self, model: SearchSpace) -> None:
        super().__init__()
        self.model = model
        self.keys = model.data_view().keys

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model.segmentation(self.model.forward_batch(dict(zip(self.keys, inputs))))


def inference_network(model: SearchSpace) -> SearchSpace:
    """A copy of ``model`` without its training-only modules (eval mode)."""
    net = copy.deepcopy(model).eval()
    for name in model.training_only():
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name)
        if child not in parent._modules:
            raise ValueError(f"{type(model).__name__}.training_only() names {name!r}, "
                             "which is not a submodule")
        del parent._modules[child]
    return net


def load_trained(train_dir: str | Path) -> tuple[SearchSpace, dict[str, Any]]:
    """The trained network of a ``nasseg train`` folder (eval mode, CPU) and what the folder
    says of it: ``arch`` (its ``arch.json`` content) and ``plan`` (its preprocessing)."""
    run = RunFolder(Path(train_dir))
    run.require(run.model)
    try:
        state = torch.load(run.model, map_location="cpu", weights_only=False)
        arch, weights = state["arch"], state["model"]
        model = build_derived(arch)
    except (KeyError, RuntimeError, EOFError, OSError) as exc:
        raise FileFormatError(f"{run.model}: not a nasseg trained model "
                              f"({error_line(exc)})") from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:  # e.g. a space whose fixed ops changed since the training
        raise FileFormatError(
            f"{run.model}: its weights do not fit the network its architecture builds with this "
            f"version of nasseg ({error_line(exc)}); retrain it, or use a file it was exported "
            "to") from None
    return model.eval(), {k: v for k, v in state.items() if k != "model"}


def export_trained(train_dir: str | Path, fmt: str, out: str | Path | None = None) -> Path:
    """Write the trained network of ``train_dir`` as ``model.ts`` or ``model.onnx`` (atomic)."""
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {FORMATS}, got {fmt!r}")
    model, info = load_trained(train_dir)
    arch = info["arch"]
    net = _Logits(inference_network(model)).eval()
    shape = arch["input_shape"]
    example = tuple(torch.randn_like(t) for t in
                    model.example_batch(shape[1:], shape[0]).values())
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
                names = list(net.keys)
                torch.onnx.export(net, example, str(tmp), dynamo=False,
                                  input_names=names, output_names=["logits"],
                                  dynamic_axes={k: {0: "batch"} for k in names + ["logits"]})
    return target
