"""Large 2D images as a case set read region by region: big PNG/TIFF files and whole-slide
pyramids (OpenSlide when installed).

Training patches and their context crops are cut with ``LargeImage.read_region`` at the
context's downsample (the pyramid level nearest below it, then area averaging), never by
loading a slide whole; the geometry is :mod:`nasseg.data.views`', so a space sees the same
inputs as from any other source. Whole cases (:meth:`LargeImageSet.case`, used by whole-image
validation) are read at level 0.

Folder layout: ``dataset.json`` with ``"large_images": true``, ``"labels"`` (name -> value,
as nnU-Net) and optionally ``"patch_size"`` (default 256) and ``"patches_per_case"`` (patches
cut from each image in one pass over the cases, default 1; validation cuts as many at fixed
places); ``images/CASE.<png|tif|svs|...>``
and ``labels/CASE.png`` (or ``.tif``), one label map per image at its level-0 size.
Eight-bit images are scaled to [0, 1]; other types are kept as they are.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from nasseg.data.arrays import DataError
from nasseg.data.cases import Case
from nasseg.data.multires import LargeImage, open_large_image, sample_centres
from nasseg.data.views import context_start

__all__ = ["LargeImageSet", "is_large_image_folder"]


def is_large_image_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a large-image data set (``"large_images": true``)."""
    meta = folder / "dataset.json"
    try:
        return bool(json.loads(meta.read_text()).get("large_images", False))
    except (OSError, ValueError, AttributeError):
        return False


class LargeImageSet:
    """Cases that are large 2D images, each with an optional label map of the same size."""

    spatial_dims = 2

    def __init__(self, name: str, images: Sequence[LargeImage], labels: Sequence[LargeImage | None],
                 class_names: Sequence[str], patch_size: Sequence[int] = (256, 256),
                 case_ids: Sequence[str] | None = None, patches_per_case: int = 1) -> None:
        if not images:
            raise DataError(f"{name}: no images")
        if len(labels) != len(images):
            raise DataError(f"{name}: {len(images)} images but {len(labels)} label maps")
        for i, (img, lab) in enumerate(zip(images, labels)):
            if lab is not None and tuple(lab.size) != tuple(img.size):
                raise DataError(f"{name}: case {i}: label size {lab.size} differs from image "
                                f"size {img.size}")
        if len({img.channels for img in images}) != 1:
            raise DataError(f"{name}: images have different channel counts")
        self.name = name
        self.images, self.labels = list(images), list(labels)
        self.class_names = list(class_names)
        self._patch = tuple(int(p) for p in patch_size)
        self.case_ids = list(case_ids or (f"case_{i:03d}" for i in range(len(images))))
        if int(patches_per_case) != patches_per_case or patches_per_case < 1:
            raise DataError(f"{name}: patches_per_case must be a whole number >= 1, got "
                            f"{patches_per_case}")
        self.patches_per_case = int(patches_per_case)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "LargeImageSet":
        """Open a folder laid out as the module docstring says; problems name the file."""
        folder = Path(folder)
        meta = json.loads((folder / "dataset.json").read_text())
        labels = meta.get("labels")
        if not isinstance(labels, dict) or sorted(labels.values()) != list(range(len(labels))):
            raise DataError(f"{folder / 'dataset.json'}: 'labels' must map names to 0..K-1")
        names = [n for n, _ in sorted(labels.items(), key=lambda kv: kv[1])]
        files = sorted(p for p in (folder / "images").iterdir() if not p.name.startswith("."))
        if not files:
            raise DataError(f"{folder / 'images'}: no image files")
        images, maps = [], []
        for f in files:
            images.append(open_large_image(f))
            found = [p for p in (folder / "labels").glob(f"{f.stem}.*")]
            maps.append(open_large_image(found[0], label=True) if found else None)
        size = meta.get("patch_size", 256)
        patch = (size, size) if isinstance(size, int) else tuple(size)
        return cls(meta.get("name", folder.name), images, maps, names, patch,
                   [f.stem for f in files], meta.get("patches_per_case", 1))

    # ----- the case-set interface -------------------------------------------------------------
    @property
    def in_channels(self) -> int:
        return self.images[0].channels

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_cases(self) -> int:
        return len(self.images)

    @property
    def patch_size(self) -> tuple[int, ...]:
        return self._patch

    def case(self, index: int) -> Case:
        """The whole case at level 0 (for whole-image validation; training reads regions)."""
        w, h = self.images[index].size
        label = self.read(index, (0, 0), (h, w), 1, label=True)
        return Case(self.case_ids[index], self.read(index, (0, 0), (h, w), 1),
                    None if self.labels[index] is None else label)

    # ----- region reads ----------------------------------------------------------------------
    def read(self, index: int, start: Sequence[int], size: Sequence[int], factor: int,
             label: bool = False) -> np.ndarray:
        """The box of ``size`` (rows, cols) at the output scale starting at level-0 ``start``
        (row, col), read at downsample ``factor``: ``(C, *size)`` float32, or the label
        ``(*size)`` int64 (zeros for an unlabelled case). Outside the image reads as zeros."""
        source = self.labels[index] if label else self.images[index]
        rows, cols = (int(s) for s in size)
        if source is None:
            return np.zeros((rows, cols), np.int64)
        region = source.read_region(int(start[1]), int(start[0]), cols * factor, rows * factor,
                                    factor)
        if label:
            return region[..., 0].astype(np.int64)
        if source.dtype == np.uint8:
            region = region / np.float32(255)
        return np.ascontiguousarray(region.transpose(2, 0, 1), dtype=np.float32)

    def read_context(self, index: int, patch_start: Sequence[int], patch: Sequence[int],
                     factor: int, label: bool = False) -> np.ndarray:
        """The context crop of ``factor`` around a patch, as :func:`views.context_crop` cuts
        it from an array."""
        return self.read(index, context_start(patch_start, patch, factor), patch, factor, label)

    def sample_centre(self, index: int, rng: np.random.Generator, fg_fraction: float
                      ) -> list[int]:
        """A training patch centre (row, col), on labelled foreground with ``fg_fraction``."""
        label = self.labels[index]
        source = label if label is not None else self.images[index].size
        on_foreground = float(rng.random() < fg_fraction)
        (x, y), = sample_centres(source, 1, rng, foreground_fraction=on_foreground)
        return [int(y), int(x)]
