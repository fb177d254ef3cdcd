"""Built-in synthetic demo data sets, generated deterministically and cached as ``.npz``.

``demo3d`` (40 volumes, 32^3, bright vs. textured blobs) needs a receptive field
larger than one voxel to separate its two classes by texture; its scene says whether a
volume holds both blob classes (``mixed``) or one (``single_class``); ``demo2d`` (120
images, 64x64) hides the object class in a faint global background pattern, so
labels depend on wide context.  Both are generated from a fixed seed without
downloads and cached under ``$NASSEG_HOME/demo`` (default ``~/.cache/nasseg/demo``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from nasseg.data.arrays import DataError, SegmentationData, load_arrays, save_arrays

__all__ = ["DEMO_SETS", "make_demo"]

DEMO_SETS: tuple[str, ...] = ("demo3d", "demo2d")

# Bump when a generator changes so stale caches are regenerated instead of reused.
_VERSION = 2  # 2: demo3d gained its scene label (images and labels unchanged)


def _default_cache_dir() -> Path:
    """The demo cache folder: ``$NASSEG_HOME/demo`` or ``~/.cache/nasseg/demo``."""
    home = os.environ.get("NASSEG_HOME")
    root = Path(home) if home else Path.home() / ".cache" / "nasseg"
    return root / "demo"


def _presence(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-case float32 flags ``(N, num_classes-1)``: 1 where a foreground class occurs."""
    flat = labels.reshape(labels.shape[0], -1)
    return np.stack([(flat == c).any(axis=1) for c in range(1, num_classes)], axis=1).astype(np.float32)


def _zscore(image: np.ndarray) -> np.ndarray:
    """Normalise one image to zero mean and unit variance."""
    return (image - image.mean()) / (image.std() + 1e-6)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation matrix."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _generate_demo3d() -> SegmentationData:
    """40 volumes 32^3: smooth bright blobs (class 1) vs. equally bright textured blobs (class 2)."""
    rng = np.random.default_rng(20240301)
    n, size = 40, 32
    grid = np.stack(np.meshgrid(*(np.arange(size, dtype=np.float32),) * 3, indexing="ij"))  # (3, D, H, W)
    images = np.empty((n, 1, size, size, size), dtype=np.float32)
    labels = np.zeros((n, size, size, size), dtype=np.int64)
    for i in range(n):
        # Smooth bias field: a few random low-frequency plane waves.
        bias = np.zeros((size,) * 3, dtype=np.float32)
        for _ in range(3):
            k = rng.normal(size=3) * (2 * np.pi / size)
            bias += np.float32(rng.uniform(0.2, 0.5)) * np.cos(
                np.tensordot(k.astype(np.float32), grid, axes=1) + np.float32(rng.uniform(0, 2 * np.pi))
            )
        image = bias + rng.normal(0.0, 0.5, size=(size,) * 3).astype(np.float32)
        label = np.zeros((size,) * 3, dtype=np.int64)
        num_objects = int(rng.integers(1, 5))
        single_class = rng.random() < 0.3
        first_cls = int(rng.integers(1, 3))
        for _ in range(num_objects):
            cls = first_cls if single_class else int(rng.integers(1, 3))
            centre = rng.uniform(7, size - 7, size=3).astype(np.float32)
            radii = rng.uniform(3, 8, size=3).astype(np.float32)
            local = np.tensordot(_random_rotation(rng).T.astype(np.float32), grid - centre[:, None, None, None], axes=1)
            mask = ((local / radii[:, None, None, None]) ** 2).sum(axis=0) <= 1.0
            if cls == 1:
                signal = np.float32(2.5)
            else:
                # Same mean, strong sine texture with a period of 3-4 voxels in a random direction.
                direction = rng.normal(size=3)
                k = (direction / np.linalg.norm(direction) * 2 * np.pi / rng.uniform(3.0, 4.0)).astype(np.float32)
                phase = np.float32(rng.uniform(0, 2 * np.pi))
                signal = 2.5 + 2.0 * np.sin(np.tensordot(k, grid, axes=1)[mask] + phase)
            image[mask] = bias[mask] + rng.normal(0.0, 0.5, size=int(mask.sum())).astype(np.float32) + signal
            label[mask] = cls
        images[i, 0] = _zscore(image)
        labels[i] = label
    class_names = ["background", "bright_blob", "textured_blob"]
    presence = _presence(labels, len(class_names))
    # The scene is what the volume shows, not the drawn ``single_class`` flag: a volume drawn
    # "mixed" can still end up with one class (one object, or equal draws).
    return SegmentationData(
        name="demo3d",
        images=images,
        labels=labels,
        class_names=class_names,
        presence=presence,
        scene=(presence.sum(axis=1) < 2).astype(np.int64),
        scene_names=["mixed", "single_class"],
    )


def _background_pattern(scene: int, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Unit-variance whole-image texture: oriented stripes (scene 0) or a dot lattice (scene 1)."""
    if scene == 0:
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(6.0, 10.0)
        proj = np.cos(angle) * xx + np.sin(angle) * yy
        pattern = np.sin(2 * np.pi * proj / period + rng.uniform(0, 2 * np.pi))
    else:
        period = rng.uniform(6.0, 10.0)
        oy, ox = rng.uniform(0, period, size=2)
        dy = (yy - oy + period / 2) % period - period / 2
        dx = (xx - ox + period / 2) % period - period / 2
        pattern = np.exp(-(dy**2 + dx**2) / (2 * 1.2**2))
    pattern = pattern - pattern.mean()
    return (pattern / (pattern.std() + 1e-6)).astype(np.float32)


def _generate_demo2d() -> SegmentationData:
    """120 images 64x64: identical-looking objects whose class is given by the background pattern."""
    rng = np.random.default_rng(20240302)
    n, size = 120, 64
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
    scenes = rng.permutation(np.arange(n) % 2).astype(np.int64)
    images = np.empty((n, 1, size, size), dtype=np.float32)
    labels = np.zeros((n, size, size), dtype=np.int64)
    for i in range(n):
        scene = int(scenes[i])
        image = 0.5 * _background_pattern(scene, rng, yy, xx) + rng.normal(0.0, 0.4, size=(size, size))
        label = np.zeros((size, size), dtype=np.int64)
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(10, size - 10, size=2)
            radius = rng.uniform(4, 10)
            if rng.random() < 0.5:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
            else:
                mask = (np.abs(yy - cy) <= radius * 0.85) & (np.abs(xx - cx) <= radius * 0.85)
            image[mask] = 2.0 + rng.normal(0.0, 0.4, size=int(mask.sum()))
            label[mask] = 1 + scene
        images[i, 0] = _zscore(image)
        labels[i] = label
    class_names = ["background", "object_a", "object_b"]
    return SegmentationData(
        name="demo2d",
        images=images,
        labels=labels,
        class_names=class_names,
        presence=_presence(labels, len(class_names)),
        scene=scenes,
        scene_names=["striped", "dotted"],
    )


_GENERATORS: dict[str, Callable[[], SegmentationData]] = {
    "demo3d": _generate_demo3d,
    "demo2d": _generate_demo2d,
}


def make_demo(name: str, cache_dir: Path | None = None) -> SegmentationData:
    """Return the demo data set ``name``, loading it from the cache or generating and caching it.

    ``cache_dir`` is the folder holding the ``.npz`` files (default
    ``$NASSEG_HOME/demo`` or ``~/.cache/nasseg/demo``).  A cache file that is
    unreadable or invalid is regenerated.
    """
    if name not in _GENERATORS:
        raise DataError(f"unknown demo data set {name!r}; valid names: {', '.join(DEMO_SETS)}")
    folder = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    path = folder / f"{name}-v{_VERSION}.npz"
    if path.is_file():
        try:
            data = load_arrays(path)
        except DataError:
            data = None
        if data is not None and data.name == name:
            return data
    data = _GENERATORS[name]()
    save_arrays(data, path)
    return data
