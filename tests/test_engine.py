"""The differentiable engine: it moves the architecture, its second order is right, it stops on
NaN, and a killed search resumes to exactly the architecture of an unbroken one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import kill_after_first_checkpoint, rename_first_weight
from torch.func import functional_call

from nasseg.artifacts.files import read_json
from nasseg.artifacts.run_folder import RunFolder, RunFolderError
from nasseg.data import load_arrays
from nasseg.runtime.guards import NonFiniteLossError
from nasseg.runtime.settings import cosine_lr
from nasseg.runtime.seeding import seed_everything
from nasseg.searches.darts import DartsSearch, SearchConfig
from nasseg.searches.darts.engine import search_split
from nasseg.space import create_space

TINY = {"in_channels": 1, "num_classes": 3, "spatial_dims": 3, "features": 4, "levels": 2}


def _engine(small3d: Path, tmp_path: Path, **config) -> DartsSearch:
    seed_everything(0)
    run = RunFolder(tmp_path / "run")
    run.path.mkdir(parents=True, exist_ok=True)
    cfg = SearchConfig(**{"epochs": 2, "warmup_epochs": 0, "device": "cpu", "steps_per_epoch": 2,
                          "extend_unlearned": 0, **config})
    return DartsSearch(create_space("unet", **TINY), load_arrays(small3d), run, cfg,
                       show_progress=False)


def test_search_moves_architecture_parameters(small3d, tmp_path):
    engine = _engine(small3d, tmp_path, arch_lr=3e-3)
    before = engine.arch.labelled_state()
    engine.run()
    after = engine.arch.labelled_state()
    for kind in ("alpha", "beta"):
        for label in before[kind]:
            assert not torch.allclose(before[kind][label], after[kind][label]), label
    scores = read_json(engine.run_folder.arch_params)
    assert set(scores["op"]) == {"enc0_op", "enc1_op", "dec0_op"}
    assert scores["epochs_done"] == 2


def test_warmup_keeps_architecture_frozen(small3d, tmp_path):
    engine = _engine(small3d, tmp_path, epochs=1, warmup_epochs=1)
    before = engine.arch.labelled_state()
    engine.run()
    after = engine.arch.labelled_state()
    assert all(torch.equal(before["alpha"][k], after["alpha"][k]) for k in before["alpha"])


def test_architecture_step_computes_no_weight_gradients(small3d, tmp_path):
    engine = _engine(small3d, tmp_path)
    batch = next(engine.stage_loaders(engine.schedule[0])[1].epoch(0))
    engine._arch_step(batch, batch, 0, 0)
    assert all(w.grad is None for w in engine.weights)
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in engine.arch_params)


def _smooth(module: torch.nn.Module) -> None:
    """Swap kinks (LeakyReLU, max pooling) for smooth ops, so finite differences converge."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.LeakyReLU):
                setattr(parent, name, torch.nn.SiLU())
            elif isinstance(child, torch.nn.MaxPool3d):
                setattr(parent, name, torch.nn.AvgPool3d(2, ceil_mode=True))


def test_second_order_matches_exact_unrolled_gradient(small3d, tmp_path):
    """The finite-difference Hessian-vector product equals autograd's exact unrolled gradient
    (on a smooth network: with ReLU-like kinks finite differences only approximate it)."""
    torch.set_default_dtype(torch.float64)
    try:
        engine = _engine(small3d, tmp_path, order=2, weight_decay=0.0)
        _smooth(engine.model)
        engine.model.double()
        engine.arch.double()
        for group in engine.weight_opt.param_groups:
            group["lr"] = 0.05
        wb = {k: (v.double() if k == "image" else v) for k, v in next(engine.stage_loaders(engine.schedule[0])[0].epoch(0)).items()}
        ab = {k: (v.double() if k == "image" else v) for k, v in next(engine.stage_loaders(engine.schedule[0])[1].epoch(0)).items()}
        _, approx = engine._unrolled_grads(ab, wb, 0, 0)

        names = [n for n, _ in engine.model.named_parameters()]
        weights = [p for _, p in engine.model.named_parameters()]
        model = engine.model

        def loss_with(params, batch):
            out = functional_call(model, dict(zip(names, params)), (batch["image"],))
            return model.compute_loss(out, batch, engine.schedule[0])

        g = torch.autograd.grad(loss_with(weights, wb), weights, create_graph=True)
        unrolled = [w - 0.05 * gi for w, gi in zip(weights, g)]
        exact = torch.autograd.grad(loss_with(unrolled, ab), engine.arch_params)
        for a, e in zip(approx, exact):
            assert torch.allclose(a, e, rtol=2e-2, atol=1e-6), (a, e)
        first = torch.autograd.grad(loss_with(weights, ab), engine.arch_params)
        assert any(not torch.allclose(f, e, rtol=1e-3) for f, e in zip(first, exact))
    finally:
        torch.set_default_dtype(torch.float32)


def test_nan_loss_stops_the_run_and_keeps_the_checkpoint(small3d, tmp_path):
    engine = _engine(small3d, tmp_path, epochs=1)
    engine.run()
    saved = engine.run_folder.checkpoint.read_bytes()
    engine = _engine(small3d, tmp_path, epochs=2)
    engine.resume()
    engine.model.compute_loss = lambda out, batch, stage: out.sum() * float("nan")
    with pytest.raises(NonFiniteLossError, match="became nan at epoch 1, step 0"):
        engine.run()
    assert engine.run_folder.checkpoint.read_bytes() == saved


def test_the_weight_lr_climbs_over_its_warmup_epochs(small3d, tmp_path):
    engine = _engine(small3d, tmp_path, epochs=10, lr_warmup_epochs=2)
    rates = []
    enter = engine.staged.enter
    engine.staged.enter = lambda stage, lr: (rates.append(lr), enter(stage, lr))
    engine.run()
    peak = engine.config.weight_lr
    assert rates[0] == pytest.approx(cosine_lr(peak, 0, 10) / 2)
    assert rates[1:] == pytest.approx([cosine_lr(peak, e, 10) for e in range(1, 10)])
    # at most a fifth of the search ramps; a run written before the ramp resumes without one
    assert cosine_lr(peak, 0, 4, ramp=4) == cosine_lr(peak, 0, 4)
    old = {k: v for k, v in engine.config.to_dict().items() if k != "lr_warmup_epochs"}
    assert SearchConfig.from_dict(old).lr_warmup_epochs == 0


def test_halves_are_dealt_at_random_not_in_file_order(small3d, tmp_path):
    data = load_arrays(small3d)
    splits = {seed: search_split(data, SearchConfig(seed=seed, steps_per_epoch=2))
              for seed in range(6)}
    for split in splits.values():
        train = sorted(split["weights"] + split["arch"])
        assert not set(train) & set(split["val"])
        assert len(train) + len(split["val"]) == data.num_cases
        assert abs(len(split["weights"]) - len(split["arch"])) <= 1
    # file order would give the weights the lowest-numbered training cases at every seed
    assert any(max(s["weights"]) > min(s["arch"]) for s in splits.values())
    assert search_split(data, SearchConfig(seed=2)) == splits[2]
    assert len({tuple(s["weights"]) for s in splits.values()}) > 1


def test_resume_refuses_a_run_split_otherwise(small3d, tmp_path):
    engine = _engine(small3d, tmp_path, epochs=1)
    engine.run()
    older = {"weights": sorted(engine.split["arch"]), "arch": sorted(engine.split["weights"]),
             "val": engine.split["val"]}
    engine.run_folder.split.write_text(json.dumps(older))
    engine = _engine(small3d, tmp_path, epochs=2)
    with pytest.raises(RunFolderError, match="split.json: this search split its cases"):
        engine.resume()


def test_resume_names_weights_that_do_not_fit_in_one_line(small3d, tmp_path):
    """A checkpoint of a space whose modules changed since (a renamed weight here)."""
    _engine(small3d, tmp_path, epochs=1).run()
    path = tmp_path / "run" / "checkpoint.pt"
    name = rename_first_weight(path)
    with pytest.raises(RunFolderError) as caught:
        _engine(small3d, tmp_path, epochs=2).resume()
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"{path}: unreadable or not")
    assert name in message


def _search_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nasseg.cli", "search", "--data", str(data), "--out", str(out),
            "--epochs", "4", "--warmup-epochs", "1", "--steps-per-epoch", "4", "--seed", "3",
            "--deterministic", "--device", "cpu", "--space-arg", "features=4", "--space-arg",
            "levels=2", *extra]


def test_killed_search_resumes_to_the_same_architecture(small3d, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    unbroken = tmp_path / "unbroken"
    # cwd: away from the source folder, so `python -m` imports the installed package
    run = dict(env=env, cwd=tmp_path)
    subprocess.run(_search_cmd(small3d, unbroken), check=True, capture_output=True, **run)

    broken = tmp_path / "broken"
    done = kill_after_first_checkpoint(_search_cmd(small3d, broken), broken, 4, **run)
    resumed = subprocess.run(_search_cmd(small3d, broken, "--resume"), capture_output=True,
                             text=True, **run)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {broken} after epoch {done}" in resumed.stderr

    a = torch.load(unbroken / "checkpoint.pt", weights_only=False)["arch"]
    b = torch.load(broken / "checkpoint.pt", weights_only=False)["arch"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
