"""The engine's GPU levers: AMP (bf16, or fp16 with a GradScaler) and channels-last.

The ``gpu``-marked tests run a short search on CUDA and are skipped without a GPU. The unmarked
ones run the same code paths on CPU (bf16 autocast there; fp16 forced), so CI without a GPU
still catches a broken path.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nasseg.artifacts.files import read_json
from nasseg.artifacts.run_folder import RunFolder
from nasseg.data import load_arrays
from nasseg.runtime.seeding import seed_everything
from nasseg.searches.darts import DartsSearch, SearchConfig
from nasseg.space import create_space

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
OPTIONS = {"amp": {"amp": True}, "amp-fp16": {"amp": True},
           "channels-last": {"channels_last": True},
           "amp+channels-last": {"amp": True, "channels_last": True}}


def _search(data: Path, tmp_path: Path, device: str, mode: str = "full", epochs: int = 2,
            **options) -> DartsSearch:
    seed_everything(0)
    dataset = load_arrays(data)
    run = RunFolder(tmp_path / "run")
    run.path.mkdir(parents=True, exist_ok=True)
    config = SearchConfig(epochs=epochs, warmup_epochs=0, device=device, mode=mode,
                          steps_per_epoch=2, arch_lr=3e-2, arch_weight_decay=0.0, **options)
    space = create_space("uxnet", knobs={"sbb": True}, in_channels=1, num_classes=3,
                         spatial_dims=3, features=4, levels=2)
    return DartsSearch(space, dataset, run, config, show_progress=False)


def _check_search(engine: DartsSearch) -> dict:
    before = engine.arch.labelled_state()
    engine.run()
    after = engine.arch.labelled_state()
    assert any(not torch.equal(before["alpha"][k], after["alpha"][k]) for k in before["alpha"])
    assert all(torch.isfinite(p).all() for p in engine.model.parameters())
    return read_json(engine.run_folder.cost)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("mode", ["full", "gumbel"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_short_search_on_cuda(option, mode, small3d, tmp_path, monkeypatch):
    if option == "amp-fp16":  # the fp16 + GradScaler path of GPUs without bf16
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    engine = _search(small3d, tmp_path, "cuda", mode, **OPTIONS[option])
    if OPTIONS[option].get("channels_last"):
        conv = next(p for p in engine.model.parameters() if p.dim() == 5)
        assert conv.is_contiguous(memory_format=torch.channels_last_3d)
    card = _check_search(engine)
    assert card["device"].startswith("cuda")
    assert card["peak_memory_mb"]["cuda_allocated"] > 0
    if OPTIONS[option].get("amp"):
        assert card["amp_dtype"] == ("float16" if option == "amp-fp16" else "bfloat16")
        assert (engine.precision.scaler is not None) == (option == "amp-fp16")


@pytest.mark.parametrize("option", ["amp", "channels-last"])
def test_gpu_paths_run_on_cpu(option, small3d, tmp_path):
    card = _check_search(_search(small3d, tmp_path, "cpu", **OPTIONS[option]))
    assert card["peak_memory_mb"]["cuda_allocated"] is None
    if option == "amp":
        assert card["amp_dtype"] == "bfloat16"


def test_fp16_grad_scaler_path_runs_on_cpu(small3d, tmp_path):
    engine = _search(small3d, tmp_path, "cpu", epochs=1, amp=True)
    engine.precision.dtype = torch.float16  # what a GPU without bf16 gets
    engine.precision.scaler = torch.amp.GradScaler("cpu")
    _check_search(engine)
    assert "scaler" in torch.load(engine.run_folder.checkpoint, weights_only=False)


def test_compile_path_traces_the_supernet_on_cpu(small3d, tmp_path, monkeypatch):
    """``--compile`` through TorchDynamo and AOT autograd (the relaxed choices and the custom
    conv gradients included); the "aot_eager" backend skips inductor's C++ build, which takes
    minutes on CPU (measured: a 2-epoch compiled search works, about 100 s of it compiling)."""
    original = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, **kw: original(self, backend="aot_eager", **kw))
    torch._dynamo.reset()
    engine = _search(small3d, tmp_path, "cpu", epochs=1, compile=True)
    assert engine.model._compiled_call_impl is not None
    card = _check_search(engine)
    assert card["compile"] is True
    torch._dynamo.reset()
