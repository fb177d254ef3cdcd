"""Error anatomy: wrong voxels sorted by place, shapes too small or too large, objects judged."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nasseg.evaluation.error_anatomy import add_counts, error_anatomy
from nasseg.searches.random_arch import random_architecture
from nasseg.training.trainer import TrainConfig, train_architecture

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _ball(shape: tuple[int, ...], centre: tuple[int, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def _scene() -> np.ndarray:
    ref = np.zeros((26, 26, 26), dtype=np.int64)
    ref[_ball(ref.shape, (8, 8, 8), 6)] = 1
    ref[_ball(ref.shape, (18, 18, 18), 4)] = 2
    return ref


def test_a_shrunken_shape_errs_only_on_its_edge_as_misses():
    ref = _scene()
    pred = ref.copy()
    pred[(ref == 1) & ~_ball(ref.shape, (8, 8, 8), 5)] = 0  # the bright ball one voxel smaller
    counts = error_anatomy(pred, ref, 3)
    assert counts["wrong"] > 0 and counts["edge"] + counts["near"] == counts["wrong"]
    assert counts["edge_misses_1"] > 0 and counts["edge_extras_1"] == 0
    assert counts["edge_misses_2"] == counts["edge_extras_2"] == 0
    assert counts["objects"] == 2 and counts["missed"] == counts["wrong_class"] == 0
    assert counts["overlap_1"] == counts["predicted_1"] < counts["voxels_1"]


def test_a_grown_shape_errs_as_edge_extras():
    ref = _scene()
    pred = ref.copy()
    pred[_ball(ref.shape, (8, 8, 8), 7) & (ref == 0)] = 1
    counts = error_anatomy(pred, ref, 3)
    assert counts["edge_extras_1"] > 0 and counts["edge_misses_1"] == 0
    assert counts["inside"] == 0 and counts["strays"] == 0


def test_whole_objects_missed_confused_and_strays_are_counted():
    ref = _scene()
    pred = np.where(ref == 1, 0, ref)  # the first object missed
    pred[ref == 2] = 1  # the second given the other class
    pred[22:25, 2:5, 2:5] = 2  # a stray far from both
    counts = error_anatomy(pred, ref, 3)
    assert (counts["missed"], counts["wrong_class"], counts["strays"]) == (1, 1, 1)
    assert counts["inside"] > 0 and counts["outside"] == 27
    total = add_counts([counts, counts])
    assert total["wrong"] == 2 * counts["wrong"] and total["objects"] == 4


def test_a_perfect_segmentation_has_no_errors_and_bad_labels_are_refused():
    ref = _scene()
    counts = error_anatomy(ref, ref, 3)
    assert counts["wrong"] == 0 and counts["overlap_2"] == counts["voxels_2"]
    with pytest.raises(ValueError, match="outside 0..2"):
        error_anatomy(ref + 1, ref, 3)


def test_the_benchmark_reports_a_trained_net_and_refuses_a_folder_without_a_model(
        tmp_path, small3d):
    sys.path.insert(0, str(BENCHMARKS))
    from search_quality import split_held_out
    dev, _ = split_held_out(str(small3d), 0.25, tmp_path)
    arch, _ = random_architecture("uxnet", dev, 0, tmp_path / "arch.json",
                                  {"sbb": False, "mssa": False}, {"features": 4})
    train_architecture(arch, tmp_path / "train", None,
                       TrainConfig(epochs=1, steps_per_epoch=1, seed=0))
    run = [sys.executable, str(BENCHMARKS / "error_anatomy.py"), "--data", str(small3d),
           "--test-fraction", "0.25", "--out", str(tmp_path / "report")]
    done = subprocess.run([*run, f"tiny={tmp_path / 'train'}"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    row = json.loads((tmp_path / "report" / "error_anatomy.json").read_text())["rows"][0]
    assert row["net"] == "tiny" and row["counts"]["objects"] > 0
    assert set(row["pooled_dice"]) == {"bright_blob", "textured_blob"}
    assert "| tiny |" in (tmp_path / "report" / "error_anatomy.md").read_text()
    refused = subprocess.run([*run, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == [f"error: {tmp_path}: no model.pt (not a "
                                                   "trained run folder)"]
