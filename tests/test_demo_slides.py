"""The large-image demo ``demo_slides``: cached folder, BACH-ordered classes, fine patches alike
across classes, patches per case with fixed validation places."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nasseg.data import DataView, PatchDataset, load_data, make_demo
from nasseg.data import demo as demo_module
from nasseg.data.large_images import LargeImageSet


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> tuple[LargeImageSet, Path]:
    cache = tmp_path_factory.mktemp("demo")
    return make_demo("demo_slides", cache_dir=cache), cache


def test_cached_folder_and_contents(slides: tuple[LargeImageSet, Path],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data, cache = slides
    (folder,) = cache.glob("demo_slides-v*")
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "images", "labels"]
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temp left

    def fail(folder: Path) -> None:
        raise AssertionError("generator called although a valid cache exists")

    monkeypatch.setattr(demo_module, "_generate_slides", fail)
    again = make_demo("demo_slides", cache_dir=cache)
    np.testing.assert_array_equal(again.case(3).image, data.case(3).image)
    assert data.class_names == ["normal", "benign", "in_situ", "invasive"]
    assert (data.num_cases, data.in_channels, data.spatial_dims) == (8, 1, 2)
    assert data.patch_size == (32, 32) and data.patches_per_case == 64
    for i in range(data.num_cases):
        width, height = data.images[i].size
        assert min(width, height) >= 1024
        assert set(np.unique(data.case(i).label)) == {0, 1, 2, 3}


def test_corrupt_cache_is_regenerated(slides: tuple[LargeImageSet, Path]) -> None:
    data, cache = slides
    (folder,) = cache.glob("demo_slides-v*")
    (folder / "labels" / "slide_00.png").write_bytes(b"not a png")
    again = make_demo("demo_slides", cache_dir=cache)
    np.testing.assert_array_equal(again.case(0).label, data.case(0).label)


def test_fine_statistics_alike_across_classes(slides: tuple[LargeImageSet, Path]) -> None:
    """Every class is the same clusters at the same density: only the arrangement differs."""
    data, _ = slides
    means, stds = [], []
    for k in range(4):
        values = np.concatenate([data.case(i).image[0][data.case(i).label == k]
                                 for i in range(data.num_cases)])
        means.append(values.mean())
        stds.append(values.std())
    assert max(means) - min(means) < 0.005 and max(stds) - min(stds) < 0.005


def test_patches_per_case_and_fixed_validation_places(slides: tuple[LargeImageSet, Path]
                                                      ) -> None:
    data, _ = slides
    view = DataView(context=(5,))
    val = PatchDataset(data, [6, 7], augment=False, view=view)
    assert len(val) == 2 * 64
    first = [val[i] for i in (0, 1, 70)]
    val.set_epoch(3)
    for i, item in zip((0, 1, 70), first):
        again = val[i]
        assert np.array_equal(again["image"], item["image"])
        assert again["context"].shape == (1, 1, 32, 32) and again["index"] == item["index"]
    assert not np.array_equal(first[0]["image"], first[1]["image"])  # different places
    train = PatchDataset(data, [0], augment=True, view=view)
    train.set_epoch(0)
    a = train[5]["image"]
    train.set_epoch(1)
    assert not np.array_equal(a, train[5]["image"])


def test_named_on_the_command_line(monkeypatch: pytest.MonkeyPatch,
                                   slides: tuple[LargeImageSet, Path]) -> None:
    _, cache = slides
    monkeypatch.setenv("NASSEG_HOME", str(cache.parent / "home"))
    monkeypatch.setattr(demo_module, "_default_cache_dir", lambda: cache)
    assert load_data("demo_slides").num_cases == 8
