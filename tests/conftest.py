"""Shared fixtures: an isolated cache folder and small data sets made from the demo generators."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
import torch

from nasseg.data import SegmentationData, make_demo, save_arrays


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test writes its demo caches below a temporary NASSEG_HOME, never the user's home."""
    mp = pytest.MonkeyPatch()
    mp.setenv("NASSEG_HOME", str(tmp_path_factory.mktemp("nasseg_home")))
    yield
    mp.undo()


def _crop(data: SegmentationData, n: int, size: int, name: str) -> SegmentationData:
    sl = (slice(None),) * 1 + (slice(0, size),) * data.spatial_dims
    labels = data.labels[:n][(slice(None),) + sl[1:]]
    images = data.images[:n][(slice(None), slice(None)) + sl[1:]]
    presence = None
    if data.presence is not None:
        presence = np.stack([[float((lab == c).any()) for c in range(1, data.num_classes)]
                             for lab in labels]).astype(np.float32)
    return SegmentationData(name, np.ascontiguousarray(images), np.ascontiguousarray(labels),
                            data.class_names, presence,
                            None if data.scene is None else data.scene[:n], data.scene_names)


@pytest.fixture(scope="session")
def small3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 demo3d volumes cropped to 16^3, saved as a nasseg .npz file."""
    path = tmp_path_factory.mktemp("data") / "small3d.npz"
    save_arrays(_crop(make_demo("demo3d"), 12, 16, "small3d"), path)
    return path


@pytest.fixture(scope="session")
def demo3d_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 full-size demo3d volumes, enough to show a trained net beats chance."""
    path = tmp_path_factory.mktemp("data") / "demo3d20.npz"
    save_arrays(_crop(make_demo("demo3d"), 20, 32, "demo3d20"), path)
    return path


@pytest.fixture(scope="session")
def small2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 demo2d images cropped to 32x32, saved as a nasseg .npz file."""
    path = tmp_path_factory.mktemp("data") / "small2d.npz"
    save_arrays(_crop(make_demo("demo2d"), 12, 32, "small2d"), path)
    return path


def kill_after_first_checkpoint(cmd: Sequence[str], folder: Path, epochs: int, **run: Any) -> int:
    """Start ``cmd``, SIGKILL it once ``folder/checkpoint.pt`` exists; the epochs it had done
    (asserted to be mid-run)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **run)
    deadline = time.time() + 120
    while not (folder / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = torch.load(folder / "checkpoint.pt", weights_only=False)["epochs_done"]
    assert 1 <= done < epochs, "the kill should land mid-run"
    return done


def rename_first_weight(source: Path, target: Path | None = None) -> str:
    """Save the checkpoint ``source`` (to ``target``, default: itself) with its first network
    weight renamed, as a space whose modules changed since would see it; return the old name."""
    state = torch.load(source, map_location="cpu", weights_only=False)
    name = next(iter(state["model"]))
    state["model"][name + "_gone"] = state["model"].pop(name)
    torch.save(state, target or source)
    return name
