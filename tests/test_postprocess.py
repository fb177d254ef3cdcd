"""Post-processing decided on the validation cases: small components of a class removed under
a default drawn from the training labels unless that lowers the validation Dice, under a larger
threshold where that raises it; recorded in the training folder's plan."""
from __future__ import annotations

import json

import numpy as np
import torch

from nasseg.inference.postprocess import (choose_min_sizes, remove_small_components,
                                          small_object_sizes)
from nasseg.searches.random_arch import random_architecture
from nasseg.training.trainer import TrainConfig, train_architecture


def _blobs() -> np.ndarray:
    label = np.zeros((12, 12, 12), dtype=np.int64)
    label[1:6, 1:6, 1:6] = 1      # 125 voxels
    label[8:10, 8:10, 8:10] = 2   # 8 voxels
    return label


def test_only_the_small_components_of_the_asked_class_go():
    label = _blobs()
    label[11, 0, 0] = 1           # a speck of class 1
    label[0, 11, 11] = 2          # a speck of class 2
    cleaned = remove_small_components(label, {1: 2})
    assert cleaned[11, 0, 0] == 0 and cleaned[0, 11, 11] == 2
    assert (cleaned[1:6, 1:6, 1:6] == 1).all() and label[11, 0, 0] == 1  # a copy
    assert remove_small_components(label, {}) is label
    assert not remove_small_components(label, {1: 126})[label == 1].any()


def test_small_object_sizes_are_a_low_percentile_of_the_reference_components():
    other = np.zeros((12, 12, 12), dtype=np.int64)
    other[0:3, 0:3, 0:3] = 1      # 27 voxels
    # class 1: 125 and 27 voxels, the 5th percentile 27 + 0.05 * 98; class 2: one object
    assert small_object_sizes([_blobs(), other], 3) == {1: 32, 2: 8}
    many = [_blobs() for _ in range(30)]
    many[0][11, 11, 11] = 1       # one fragment among 31 objects does not set the scale
    assert small_object_sizes(many, 3)[1] > 100


def test_the_default_threshold_stays_unless_validation_scores_lower_with_it():
    ref = _blobs()
    speckled = ref.copy()
    speckled[11, 0, 0] = speckled[0, 11, 0] = 1
    chosen, before, after = choose_min_sizes([speckled], [ref], 3, {1: 125, 2: 8})
    assert chosen == {1: 16} and after == 1.0 > before  # 125/8: the specks go, the blob stays
    # validation without specks cannot justify it, but the training labels do: 1/8 of a small
    # object is kept; class 2's 8/8 = 1 voxel is no threshold at all
    assert choose_min_sizes([ref], [ref], 3, {1: 125, 2: 8}) == ({1: 16}, 1.0, 1.0)
    # a real object smaller than every candidate is never removed for nothing
    small_real = ref.copy()
    small_real[11, 11, 0:2] = 1
    assert choose_min_sizes([small_real], [small_real], 3, {1: 125})[0] == {}


def test_a_larger_threshold_only_where_it_raises_the_validation_dice():
    ref = _blobs()
    speckled = ref.copy()
    speckled[9:12, 0:3, 0:3] = 1  # 27 voxels: over 1/8 (16) of the class's small size, under 1/4
    assert choose_min_sizes([speckled], [ref], 3, {1: 125})[0] == {1: 31}
    assert choose_min_sizes([ref], [ref], 3, {1: 125})[0] == {1: 16}


def test_a_class_of_one_voxel_fragments_has_no_default_but_may_lose_single_voxels():
    ref = _blobs()
    speckled = ref.copy()
    speckled[11, 0, 0] = 1
    assert choose_min_sizes([ref], [ref], 3, {1: 1})[0] == {}
    assert choose_min_sizes([speckled], [ref], 3, {1: 1})[0] == {1: 2}


def test_training_records_its_post_processing_and_can_be_told_not_to(small3d, tmp_path):
    arch, _ = random_architecture("uxnet", str(small3d), 0, tmp_path / "arch.json",
                                  {"sbb": False, "mssa": False}, {"features": 4, "levels": 2})
    config = TrainConfig(epochs=1, steps_per_epoch=2, seed=0, device="cpu")
    metrics = train_architecture(arch, tmp_path / "on", None, config)
    post = metrics["postprocessing"]
    assert set(post["small_object_voxels"]) == {"bright_blob", "textured_blob"}
    assert post["dice_mean_after"] >= post["dice_mean_before"]
    plan = json.loads((tmp_path / "on" / "plan.json").read_text())
    assert plan == torch.load(tmp_path / "on" / "model.pt", weights_only=False)["plan"]
    names = {"1": "bright_blob", "2": "textured_blob"}
    assert {names[c]: n for c, n in plan["min_component_voxels"].items()} == \
        post["min_component_voxels"]
    off = train_architecture(arch, tmp_path / "off", None,
                             TrainConfig(epochs=1, steps_per_epoch=2, seed=0, device="cpu",
                                         postprocess=False))
    assert off["postprocessing"] is None
    assert json.loads((tmp_path / "off" / "plan.json").read_text())["min_component_voxels"] == {}
