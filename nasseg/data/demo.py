"""Built-in synthetic demo data sets, generated deterministically and cached as ``.npz``.

``demo3d`` (40 volumes, 32^3, bright vs. textured blobs) needs a receptive field
larger than one voxel to separate its two classes by texture; its scene says whether a
volume holds both blob classes (``mixed``) or one (``single_class``); ``demo2d`` (120
images, 64x64) hides the object class in a faint global background pattern, so
labels depend on wide context.  Both are generated from a fixed seed without
downloads and cached under ``$NASSEG_HOME/demo`` (default ``~/.cache/nasseg/demo``).

``demo_slides`` (8 one-channel "slides" of 1024 x 1024-1280 pixels) is a large-image set,
cached as a folder of PNG files read region by region (:mod:`nasseg.data.large_images`).  Its
four classes are ordered like BACH's (normal, benign, in situ, invasive): every region is
made of the same small "gland" clusters at the same density (about one per 40 x 40 pixels),
and the class is only their arrangement over a wide area -- scattered at random (normal), on a
square lattice (benign), in rings of eight (in situ), in parallel cords (invasive).  A 32-pixel
patch shows about one cluster, alike in every class; a context five times wider shows the
arrangement.  Patches 32, 64 per slide and pass.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from nasseg.data.arrays import DataError, SegmentationData, load_arrays, save_arrays
from nasseg.data.cases import CaseSet
from nasseg.data.large_images import LargeImageSet

__all__ = ["DEMO_SETS", "SLIDE_CLASSES", "fresh_demo_cases", "make_demo"]

DEMO_SETS: tuple[str, ...] = ("demo3d", "demo2d", "demo_slides")

#: demo_slides' classes, in BACH's order (the score of DA-RefineNet weighs their distance).
SLIDE_CLASSES: tuple[str, ...] = ("normal", "benign", "in_situ", "invasive")

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


def _seed(base: int, stream: int) -> int | list[int]:
    """The generator seed of a demo set's random ``stream``: its own cases come from stream 0
    (the plain base seed, so they never change), fresh cases from the others."""
    return base if stream == 0 else [base, stream]


def _fresh_name(name: str, stream: int) -> str:
    """The data set name of a stream's cases (their case ids start with it)."""
    return name if stream == 0 else f"{name}-fresh{stream}"


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


def _generate_demo3d(n: int = 40, stream: int = 0) -> SegmentationData:
    """``n`` volumes 32^3: smooth bright blobs (class 1) vs. equally bright textured blobs
    (class 2), drawn from random ``stream`` (0: the demo set's own cases)."""
    rng = np.random.default_rng(_seed(20240301, stream))
    size = 32
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
        name=_fresh_name("demo3d", stream),
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


def _generate_demo2d(n: int = 120, stream: int = 0) -> SegmentationData:
    """``n`` images 64x64: identical-looking objects whose class is given by the background
    pattern, drawn from random ``stream`` (0: the demo set's own cases)."""
    rng = np.random.default_rng(_seed(20240302, stream))
    size = 64
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
        name=_fresh_name("demo2d", stream),
        images=images,
        labels=labels,
        class_names=class_names,
        presence=_presence(labels, len(class_names)),
        scene=scenes,
        scene_names=["striped", "dotted"],
    )


# ----- demo_slides: large images whose classes only wide context tells apart --------------------

_SLIDE_SPACING = 40.0  # one cluster per 40 x 40 pixels in every class
_CLUSTER_RADIUS = 8


def _lattice(shape: tuple[int, int], spacing: tuple[float, float], angle: float,
             rng: np.random.Generator) -> np.ndarray:
    """``(n, 2)`` points (row, col) of a rotated rectangular lattice covering ``shape``."""
    h, w = shape
    reach = float(np.hypot(h, w)) + max(spacing)
    u = np.arange(-reach, reach, spacing[0]) + rng.uniform(0, spacing[0])
    v = np.arange(-reach, reach, spacing[1]) + rng.uniform(0, spacing[1])
    uu, vv = (a.ravel() for a in np.meshgrid(u, v, indexing="ij"))
    c, s = np.cos(angle), np.sin(angle)
    pts = np.stack([h / 2 + c * uu - s * vv, w / 2 + s * uu + c * vv], axis=1)
    return pts[(pts[:, 0] > -16) & (pts[:, 0] < h + 16) & (pts[:, 1] > -16) & (pts[:, 1] < w + 16)]


def _slide_layouts(shape: tuple[int, int], rng: np.random.Generator) -> list[np.ndarray]:
    """Cluster centres of every class over the whole slide, all at one cluster per 40^2 px."""
    h, w = shape
    count = int(h * w / _SLIDE_SPACING**2)
    area = (h + 32) * (w + 32) / (h * w)
    scattered = np.stack([rng.uniform(-16, h + 16, 3 * count),
                          rng.uniform(-16, w + 16, 3 * count)], 1)
    keep = [scattered[0]]
    for p in scattered[1:]:  # a hard core of 22 px, so no two clusters merge
        if len(keep) >= count * area:
            break
        if np.min(np.hypot(*(np.asarray(keep) - p).T)) >= 22:
            keep.append(p)
    lattice = _lattice(shape, (_SLIDE_SPACING, _SLIDE_SPACING), rng.uniform(0, np.pi / 2), rng)
    ring_centres = _lattice(shape, (112.0, 112.0), rng.uniform(0, np.pi / 2), rng)
    turns = np.arange(8) * np.pi / 4
    rings = (ring_centres[:, None, :] + 34.0 * np.stack([np.sin(turns), np.cos(turns)], 1)
             ).reshape(-1, 2)
    cords = _lattice(shape, (64.0, 25.0), rng.uniform(0, np.pi), rng)
    return [np.asarray(keep)] + [p + rng.normal(0.0, 1.5, p.shape) for p in (lattice, rings, cords)]


def _slide_regions(shape: tuple[int, int], rng: np.random.Generator, classes: list[int],
                   yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """The label map: normal everywhere, one lobed region (2-3 ellipses) per listed class."""
    h, w = shape
    label = np.zeros(shape, np.uint8)
    for cls in classes:
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        region = np.zeros(shape, bool)
        for _ in range(int(rng.integers(2, 4))):
            oy, ox = rng.normal(0, 70, 2)
            ry, rx = rng.uniform(110, 220, 2)
            t = rng.uniform(0, np.pi)
            dy, dx = yy - (cy + oy), xx - (cx + ox)
            a, b = np.cos(t) * dy + np.sin(t) * dx, -np.sin(t) * dy + np.cos(t) * dx
            region |= (a / ry) ** 2 + (b / rx) ** 2 <= 1.0
        label[region] = cls
    return label


def _draw_cluster(image: np.ndarray, centre: np.ndarray, rng: np.random.Generator) -> None:
    """Add one cluster (a soft bright disc with six dark nuclei) to ``image`` in place."""
    r = _CLUSTER_RADIUS + 3
    cy, cx = round(centre[0]), round(centre[1])
    y0, y1 = max(cy - r, 0), min(cy + r + 1, image.shape[0])
    x0, x1 = max(cx - r, 0), min(cx + r + 1, image.shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dist = np.hypot(yy - centre[0], xx - centre[1])
    stamp = 0.30 / (1.0 + np.exp((dist - _CLUSTER_RADIUS) / 1.0))
    angles = rng.uniform(0, 2 * np.pi, 6)
    radii = rng.uniform(0, _CLUSTER_RADIUS - 3, 6)
    for a, d in zip(angles, radii):
        ny, nx = centre[0] + d * np.sin(a), centre[1] + d * np.cos(a)
        stamp -= 0.25 * np.exp(-((yy - ny) ** 2 + (xx - nx) ** 2) / (2 * 1.3**2))
    image[y0:y1, x0:x1] += stamp


def _generate_slides(folder: Path) -> None:
    """Write demo_slides into ``folder`` (``dataset.json``, ``images/``, ``labels/``)."""
    from PIL import Image

    rng = np.random.default_rng(20240303)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for i in range(8):
        shape = (1024, 1024 + 128 * (i % 3))
        yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
        # every slide shows benign, in situ and invasive (and one of them twice on some)
        classes = [1, 2, 3] + ([int(rng.integers(1, 4))] if i % 2 else [])
        label = _slide_regions(shape, rng, list(rng.permutation(classes)), yy, xx)
        image = 0.35 + 0.05 * rng.normal(size=shape).astype(np.float32)
        for cls, points in enumerate(_slide_layouts(shape, rng)):
            inside = np.clip(np.round(points).astype(np.int64), 0, np.array(shape) - 1)
            for p in points[label[inside[:, 0], inside[:, 1]] == cls]:
                _draw_cluster(image, p, rng)
        pixels = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"slide_{i:02d}.png")
        Image.fromarray(label).save(folder / "labels" / f"slide_{i:02d}.png")
    meta = {"name": "demo_slides", "large_images": True, "patch_size": 32, "patches_per_case": 64,
            "labels": {name: k for k, name in enumerate(SLIDE_CLASSES)}}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")


def _make_slides(folder: Path) -> CaseSet:
    """demo_slides from its cache folder, generated (into a temporary folder, then renamed)
    when the folder is missing or unreadable."""
    if folder.is_dir():
        try:
            data = LargeImageSet.from_folder(folder)
            if data.num_cases == 8 and all(lab is not None for lab in data.labels):
                return data
        except (DataError, OSError, ValueError):
            pass
        shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _generate_slides(tmp / "set")
        os.replace(tmp / "set", folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return LargeImageSet.from_folder(folder)


_GENERATORS: dict[str, Callable[..., SegmentationData]] = {
    "demo3d": _generate_demo3d,
    "demo2d": _generate_demo2d,
}


def make_demo(name: str, cache_dir: Path | None = None) -> CaseSet:
    """Return the demo data set ``name``, loading it from the cache or generating and caching it.

    ``cache_dir`` is the folder holding the ``.npz`` files and the ``demo_slides`` folder
    (default ``$NASSEG_HOME/demo`` or ``~/.cache/nasseg/demo``).  A cache that is unreadable
    or invalid is regenerated.
    """
    if name not in DEMO_SETS:
        raise DataError(f"unknown demo data set {name!r}; valid names: {', '.join(DEMO_SETS)}")
    folder = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    if name == "demo_slides":
        return _make_slides(folder / f"{name}-v{_VERSION}")
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


def fresh_demo_cases(name: str, count: int) -> SegmentationData:
    """``count`` new cases of demo set ``name`` (``demo3d`` or ``demo2d``), drawn by its
    generator from another random stream: the same distribution, none of the set's own cases.

    A benchmark scores on them when the set's own held-out share is too small to measure with
    (demo3d holds out 8 cases; one misclassified object moves their mean Dice by about 0.06).
    Generated in memory, not cached; the same ``count`` always gives the same cases."""
    if name not in _GENERATORS:
        raise DataError(f"fresh cases come from demo sets {', '.join(_GENERATORS)}; got {name!r}")
    if count < 1:
        raise DataError(f"{name}: the number of fresh cases must be positive, got {count}")
    return _GENERATORS[name](n=count, stream=1)
