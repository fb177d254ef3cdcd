"""The memory budget: sizes parse, candidates grow, the largest fitting one is chosen from real
measured probes, the choice lands in run.json and the search uses it; too small a budget is one
clear error. The CUDA probe runs only with a GPU."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from nasseg.cli import cli
from nasseg.data import load_arrays
from nasseg.searches.darts import SearchConfig
from nasseg.searches.darts.budget import (batch_candidates, largest_fitting, measure_peak,
                                          parse_memory_size, patch_candidates, resolve_budget)
from nasseg.space import create_space


def _supernet_builder(features: int):
    """Builds a fresh two-level UXNet supernet for small3d (1 channel, 3 classes) per call."""
    return lambda: create_space("uxnet", knobs={"sbb": True}, in_channels=1, num_classes=3,
                                spatial_dims=3, features=features, levels=2)


def test_memory_sizes_parse_in_decimal_and_binary_units():
    assert parse_memory_size("20GB") == 20 * 10**9
    assert parse_memory_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_memory_size("800M") == 800 * 2**20
    assert parse_memory_size(" 64 kb ") == 64_000
    for bad in ("", "GB", "-1GB", "12XB", "0"):
        with pytest.raises(ValueError, match="expected 'auto' or a size"):
            parse_memory_size(bad)
    assert resolve_budget("auto", torch.device("cpu")) > 0
    with pytest.raises(ValueError, match="memory budget"):
        SearchConfig(memory_budget="lots")
    with pytest.raises(ValueError, match="fit must be one of"):
        SearchConfig(fit="depth")


def test_candidates_grow_from_small_to_the_limit():
    assert batch_candidates(1) == [1]
    assert batch_candidates(16) == [1, 2, 3, 4, 6, 8, 12, 16]
    assert batch_candidates(10) == [1, 2, 3, 4, 6, 8]
    patches = patch_candidates((128, 128, 40))
    assert patches[0] == (32, 32, 8) and patches[-1] == (128, 128, 40)
    assert all(p % 8 == 0 for patch in patches[:-1] for p in patch)
    assert len(set(patches)) == len(patches)
    assert all(a <= b for x, y in zip(patches, patches[1:]) for a, b in zip(x, y))


def test_largest_fitting_candidate_stops_at_the_first_that_does_not_fit():
    seen = []

    def measure(batch):
        seen.append(batch)
        return None if batch >= 16 else batch * 100  # out of memory from 16 on

    best, probes = largest_fitting([1, 2, 4, 8, 16, 32], measure, budget=450)
    assert best == 4 and seen == [1, 2, 4, 8]  # 8 needs 800 > 450: 16 and 32 never tried
    best, probes = largest_fitting([1, 2, 4, 8, 16, 32], measure, budget=10**9)
    assert best == 8 and probes[-1] == (16, None)
    best, _ = largest_fitting([1, 2], measure, budget=50)
    assert best is None


def test_measured_peak_grows_with_the_patch(small3d):
    data = load_arrays(small3d)
    build = _supernet_builder(features=8)
    config = SearchConfig(device="cpu", batch_size=4, warmup_epochs=0, epochs=1)
    small = measure_peak(build, data, SearchConfig(**{**config.to_dict(),
                                                      "patch_size": (8, 8, 8)}))
    large = measure_peak(build, data, SearchConfig(**{**config.to_dict(),
                                                      "patch_size": (32, 32, 32)}))
    # 32^3 is 64x the voxels of 8^3: the supernet's activations alone add well over 100 MB
    # (measured: about 550 MB)
    assert large > small + 100 * 2**20


def _search(data, out, *options):
    """``nasseg search`` of a small UXNet (features 4, 2 levels) for one epoch on CPU."""
    return CliRunner().invoke(cli, [
        "search", "--data", str(data), "--out", str(out), "--epochs", "1", "--warmup-epochs",
        "0", "--steps-per-epoch", "2", "--device", "cpu", "--space-arg", "features=4",
        "--space-arg", "levels=2", *options])


def test_cli_search_fits_the_batch_to_the_budget(small3d, tmp_path):
    out = tmp_path / "run"
    result = _search(small3d, out, "--memory-budget", "1000GB")
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    fit = run["memory_fit"]
    tried = [p["batch"] for p in fit["probes"]]
    # 12 cases: 2 for validation, halves of 5: batches 1-4, all fit in 1000 GB
    assert tried == [1, 2, 3, 4] and fit["chosen"] == 4 and run["search"]["batch_size"] == 4
    assert all(p["peak_mb"] > 0 for p in fit["probes"]) and fit["seconds"] > 0
    assert (out / "arch.json").exists()

    patch = _search(small3d, tmp_path / "patch", "--memory-budget", "1000GB", "--fit", "patch")
    assert patch.exit_code == 0, patch.output
    run = json.loads((tmp_path / "patch" / "run.json").read_text())
    assert run["memory_fit"]["chosen"] == [16, 16, 16] == run["search"]["patch_size"]
    assert run["input_shape"] == [1, 16, 16, 16]


def test_cli_search_refuses_a_budget_nothing_fits(small3d, tmp_path):
    result = _search(small3d, tmp_path / "run", "--memory-budget", "1MB")
    assert result.exit_code == 1
    assert "even batch 1 does not fit" in result.output
    assert not (tmp_path / "run" / "run.json").exists()


def test_out_of_memory_in_a_probe_means_does_not_fit(small3d, monkeypatch):
    """The CUDA out-of-memory path, raised on CPU: the probe stops there and keeps the last
    batch that ran."""
    from nasseg.searches.darts.budget import fit_memory
    from nasseg.searches.darts.engine import DartsSearch

    real_step = DartsSearch._weight_step

    def step(self, batch, epoch, step):
        if batch["image"].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(self, batch, epoch, step)

    monkeypatch.setattr(DartsSearch, "_weight_step", step)
    data = load_arrays(small3d)
    config = SearchConfig(device="cpu", memory_budget="1000GB", warmup_epochs=0, epochs=1)
    fitted, record = fit_memory(_supernet_builder(features=4), data, config)
    assert fitted.batch_size == 2 and record["chosen"] == 2
    assert [p["batch"] for p in record["probes"]] == [1, 2, 3]
    assert record["probes"][-1]["peak_mb"] is None


def test_budget_refuses_several_processes(small3d, tmp_path, monkeypatch):
    from nasseg.searches.darts.run import start_search

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="probes in one process"):
        start_search(tmp_path / "run", "uxnet", str(small3d), {}, {"features": 4},
                     SearchConfig(memory_budget="8GB"))
    assert not (tmp_path / "run").exists()


def test_patch_size_option_sets_the_training_crops(small3d, tmp_path):
    out = tmp_path / "run"
    result = _search(small3d, out, "--patch-size", "8x8x8")
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["search"]["patch_size"] == [8, 8, 8] and run["input_shape"] == [1, 8, 8, 8]
    bad = CliRunner().invoke(cli, ["search", "--data", str(small3d), "--out",
                                   str(tmp_path / "bad"), "--patch-size", "8x8"])
    assert bad.exit_code == 1 and "patch size (8, 8) does not fit its 3D cases" in bad.output
    assert not (tmp_path / "bad" / "run.json").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_probe_measures_reserved_memory(small3d):
    data = load_arrays(small3d)
    build = _supernet_builder(features=8)
    config = SearchConfig(device="cuda", batch_size=2, warmup_epochs=0, epochs=1)
    peak = measure_peak(build, data, config)
    assert peak is not None and 0 < peak < torch.cuda.get_device_properties(0).total_memory
    assert resolve_budget("auto", torch.device("cuda")) > peak
