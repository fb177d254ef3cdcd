"""Preprocess a data set folder once into an HDF5 cache and serve it as a :class:`CaseSet`.

Cache file: ``<cache_dir or folder/.nasseg_cache>/<name>-<data hash>-<settings hash>.h5``.  The
data hash covers the cache format version, the bytes of ``dataset.json`` and the relative path,
size and mtime of every source file (``scenes.csv`` included); the settings hash covers the
requested target spacing and the sampling settings.  A matching cache is reused; otherwise the
set is preprocessed into a temporary file renamed into place when complete.  In the default
folder-local cache directory, caches of the same set built from other (outdated) data are deleted.

Layout::

    /            attrs["dataset"]: JSON {name, format, class_names, channel_kinds, scene_names,
                                         spatial_dims, target_spacing, case_ids, ct_stats,
                                         fingerprint, format_version}
    /cases/<case_id>/image   float32 (C, *spatial), chunked
    /cases/<case_id>/label   uint8 (uint16 above 256 classes) (*spatial), chunked, lzf
                     attrs   meta (JSON, see nasseg.data.preprocess.META_KEYS),
                             presence (float32, num_classes - 1), scene (index, -1 if none)
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from nasseg.artifacts.files import atomic_path
from nasseg.data.arrays import DataError
from nasseg.data.cases import Case
from nasseg.data.formats import RawDataset, read_dataset
from nasseg.data.preprocess import (
    FOREGROUND_SAMPLES_PER_CASE,
    CTStats,
    ct_stats,
    is_ct,
    normalise,
    prepare_case,
    resolve_target_spacing,
)

__all__ = ["FORMAT_VERSION", "CACHE_DIRNAME", "H5CaseSet", "load_folder", "build_cache",
           "cache_path"]

FORMAT_VERSION = 1
CACHE_DIRNAME = ".nasseg_cache"
PATCH_CAP = {2: 256, 3: 128}

logger = logging.getLogger("nasseg.data")
T = TypeVar("T")


def _progress(items: Iterable[T], total: int, desc: str, show: bool) -> Iterator[T]:
    """A tqdm bar when ``show``, else a log line every ~10% of ``total``."""
    if show:
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
        return
    step = max(1, math.ceil(total / 10))
    for n, item in enumerate(items, 1):
        yield item
        if n % step == 0 or n == total:
            logger.info("%s: %d/%d cases", desc, n, total)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _fingerprint(ds: RawDataset, target_spacing: Sequence[float] | None) -> tuple[str, str]:
    """(data hash, settings hash) of a data set folder and the preprocessing settings."""
    files = []
    for f in ds.source_files():
        st = f.stat()
        files.append([Path(os.path.relpath(f, ds.folder)).as_posix(), st.st_size, st.st_mtime_ns])
    data = {"version": FORMAT_VERSION,
            "dataset_json": hashlib.sha256(ds.dataset_json.read_bytes()).hexdigest(),
            "files": files}
    settings = {"version": FORMAT_VERSION, "samples": FOREGROUND_SAMPLES_PER_CASE,
                "target_spacing": None if target_spacing is None else [float(v) for v in target_spacing]}
    return _sha(data), _sha(settings)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "dataset"


def cache_path(ds: RawDataset, cache_dir: str | Path | None = None,
               target_spacing: Sequence[float] | None = None) -> Path:
    """Where the cache of ``ds`` preprocessed with these settings lives."""
    data_hash, settings_hash = _fingerprint(ds, target_spacing)
    root = Path(cache_dir) if cache_dir is not None else ds.folder / CACHE_DIRNAME
    return root / f"{_safe(ds.name)}-{data_hash[:16]}-{settings_hash[:8]}.h5"


def _chunks(shape: Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    edge = 64 if spatial_dims == 3 else 256
    return tuple(min(int(s), edge) for s in shape)


def _build(ds: RawDataset, path: Path, target_spacing: Sequence[float] | None, show: bool) -> None:
    """Preprocess every case of ``ds`` into the HDF5 file ``path`` (atomically)."""
    import h5py

    target = resolve_target_spacing(ds, target_spacing)
    kinds = ds.channel_kinds
    ct_channels = [c for c, k in enumerate(kinds) if is_ct(k)]
    label_dtype = np.uint8 if len(ds.class_names) <= 256 else np.uint16
    scene_index = {s: i for i, s in enumerate(ds.scene_names or [])}
    samples: dict[int, list[np.ndarray]] = {c: [] for c in ct_channels}
    logger.info("preprocessing %s (%d cases) into %s", ds.name, len(ds.cases), path)
    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        root = f.create_group("cases")
        for i, raw in _progress(enumerate(ds.cases), len(ds.cases), f"preprocessing {ds.name}", show):
            pc = prepare_case(ds, raw, target, index=i)
            image = pc.image
            if not ct_channels:
                image, pc.meta["normalisation"] = normalise(image, kinds, {})
            for c in ct_channels:
                samples[c].append(pc.foreground.get(c, np.empty(0, np.float32)))
            g = root.create_group(raw.case_id)
            g.create_dataset("image", data=np.asarray(image, dtype=np.float32),
                             chunks=(1, *_chunks(image.shape[1:], ds.spatial_dims)))
            presence = np.zeros(len(ds.class_names) - 1, dtype=np.float32)
            if pc.label is not None:
                g.create_dataset("label", data=pc.label.astype(label_dtype),
                                 chunks=_chunks(pc.label.shape, ds.spatial_dims), compression="lzf")
                counts = np.bincount(pc.label.ravel().astype(np.int64), minlength=len(ds.class_names))
                presence = (counts[1:] > 0).astype(np.float32)
            g.attrs["presence"] = presence
            g.attrs["scene"] = scene_index.get(raw.scene, -1) if raw.scene is not None else -1
            g.attrs["meta"] = json.dumps(pc.meta)
        stats: dict[int, CTStats] = {c: ct_stats(samples[c], str(ds.folder)) for c in ct_channels}
        if ct_channels:
            for raw in _progress(ds.cases, len(ds.cases), f"normalising {ds.name}", show):
                g = root[raw.case_id]
                meta = json.loads(g.attrs["meta"])
                g["image"][...], meta["normalisation"] = normalise(g["image"][()], kinds, stats)
                g.attrs["meta"] = json.dumps(meta)
        f.attrs["dataset"] = json.dumps({
            "name": ds.name,
            "format": ds.format,
            "class_names": ds.class_names,
            "channel_kinds": kinds,
            "scene_names": ds.scene_names,
            "spatial_dims": ds.spatial_dims,
            "target_spacing": list(target),
            "case_ids": [c.case_id for c in ds.cases],
            "ct_stats": {str(c): vars(s) for c, s in stats.items()},
            "fingerprint": path.stem,
            "format_version": FORMAT_VERSION,
        })


def build_cache(ds: RawDataset, path: str | Path, target_spacing: Sequence[float] | None = None,
                show_progress: bool | None = None) -> H5CaseSet:
    """Preprocess the cases ``ds`` lists (a whole folder or a chosen part of it) into the cache
    file ``path``, with spacing and CT statistics from those cases alone, and open it."""
    path = Path(path)
    show = sys.stderr.isatty() if show_progress is None else show_progress
    _build(ds, path, target_spacing, show)
    return H5CaseSet(path, ds.folder)


def _readable(path: Path) -> bool:
    """Whether ``path`` is a complete cache file of this format version."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs["dataset"]).get("format_version") == FORMAT_VERSION
    except (OSError, KeyError, ValueError):
        return False


def _remove_outdated(path: Path) -> None:
    """Delete caches of the same set in ``path``'s folder built from other data."""
    name, data_hash, _ = path.stem.rsplit("-", 2)
    for other in path.parent.glob(f"{name}-*-*.h5"):
        parts = other.stem.rsplit("-", 2)
        if len(parts) == 3 and parts[0] == name and parts[1] != data_hash:
            other.unlink(missing_ok=True)
            logger.info("removed outdated cache %s", other)


def load_folder(folder: str | Path, cache_dir: str | Path | None = None,
                target_spacing: Sequence[float] | None = None,
                show_progress: bool | None = None) -> H5CaseSet:
    """The data set folder ``folder`` preprocessed into (or reused from) its HDF5 cache.

    ``target_spacing`` defaults to the set's median spacing; ``show_progress`` to whether stderr
    is a terminal (bar) rather than log lines.  Problems raise :class:`DataError`.
    """
    ds = read_dataset(folder)
    path = cache_path(ds, cache_dir, target_spacing)
    if path.is_file() and _readable(path):
        logger.info("reusing preprocessed cache %s", path)
    else:
        show = sys.stderr.isatty() if show_progress is None else show_progress
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"{path.parent}: cannot create the cache folder ({exc}); pass a writable "
                            "cache_dir") from None
        _build(ds, path, target_spacing, show)
        if cache_dir is None:
            _remove_outdated(path)
    return H5CaseSet(path, ds.folder)


class H5CaseSet:
    """A preprocessed data set read lazily from its HDF5 cache; implements :class:`CaseSet`.

    The file is opened on first access in each process (re-opened after a fork), so the set can
    be pickled and used by DataLoader workers.  ``patch_size`` is the median preprocessed shape,
    each axis capped at 128 (3D) / 256 (2D), rounded down to a multiple of 8 and at least 8 (so it
    may exceed small cases, which loaders pad).
    """

    def __init__(self, path: str | Path, folder: str | Path | None = None) -> None:
        import h5py

        self.path = Path(path)
        try:
            with h5py.File(self.path, "r") as f:
                info = json.loads(f.attrs["dataset"])
                cases = f["cases"]
                metas = [json.loads(cases[cid].attrs["meta"]) for cid in info["case_ids"]]
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"{self.path}: not a readable nasseg cache ({exc})") from None
        self.folder = None if folder is None else Path(folder)
        self.name: str = info["name"]
        self.class_names: list[str] = list(info["class_names"])
        self.scene_names: list[str] | None = info["scene_names"]
        self.channel_kinds: list[str] = list(info["channel_kinds"])
        self.target_spacing: tuple[float, ...] = tuple(info["target_spacing"])
        self.ct_stats: dict[str, dict[str, float]] = info["ct_stats"]
        self._spatial_dims = int(info["spatial_dims"])
        self._case_ids: list[str] = list(info["case_ids"])
        self._shapes = [tuple(m["preprocessed_shape"]) for m in metas]
        self._file: Any = None
        self._pid: int | None = None

    @property
    def case_ids(self) -> list[str]:
        """Case identifiers in index order."""
        return list(self._case_ids)

    @property
    def in_channels(self) -> int:
        return len(self.channel_kinds)

    @property
    def spatial_dims(self) -> int:
        return self._spatial_dims

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_cases(self) -> int:
        return len(self._case_ids)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Preprocessed spatial shape of every case."""
        return list(self._shapes)

    @property
    def patch_size(self) -> tuple[int, ...]:
        """Median case shape, capped per axis (128 in 3D, 256 in 2D), a multiple of 8, >= 8."""
        cap = PATCH_CAP[self._spatial_dims]
        median = np.median(np.asarray(self._shapes), axis=0)
        return tuple(max(8, min(int(m), cap) // 8 * 8) for m in median)

    def _h5(self) -> Any:
        if self._file is None or self._pid != os.getpid():
            import h5py

            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def case(self, index: int) -> Case:
        """Case ``index`` read from the cache now."""
        if not 0 <= index < len(self._case_ids):
            raise IndexError(f"case index {index} outside 0..{len(self._case_ids) - 1}")
        g = self._h5()["cases"][self._case_ids[index]]
        meta = json.loads(g.attrs["meta"])
        if self.folder is not None:
            meta["dataset_folder"] = str(self.folder.resolve())
        scene = int(g.attrs["scene"])
        return Case(
            case_id=self._case_ids[index],
            image=g["image"][()],
            label=g["label"][()].astype(np.int64) if "label" in g else None,
            presence=np.asarray(g.attrs["presence"], dtype=np.float32),
            scene=None if scene < 0 else scene,
            meta=meta,
        )

    def close(self) -> None:
        """Close this process's file handle (reopened on the next access)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"] = state["_pid"] = None
        return state

    def __repr__(self) -> str:
        return (f"H5CaseSet({self.name!r}, {self.num_cases} cases, {self.in_channels} channel(s), "
                f"{self.spatial_dims}D, path={str(self.path)!r})")
