"""Resolve a ``--data`` argument: a built-in demo name or a nasseg ``.npz`` array file."""
from __future__ import annotations

from pathlib import Path

from nasseg.data.arrays import DataError, SegmentationData, load_arrays
from nasseg.data.demo import DEMO_SETS, make_demo

__all__ = ["load_data"]


def load_data(spec: str) -> SegmentationData:
    """Load the data set ``spec`` names, validated; raise :class:`DataError` naming the problem."""
    if spec in DEMO_SETS:
        return make_demo(spec)
    path = Path(spec)
    if path.suffix == ".npz":
        return load_arrays(path)
    if path.is_dir():
        raise DataError(f"{path}: data set folders are not readable yet; give a demo name "
                        f"({', '.join(DEMO_SETS)}) or a .npz file written by "
                        "nasseg.data.save_arrays")
    raise DataError(f"{spec}: not a demo data set ({', '.join(DEMO_SETS)}) nor a .npz array file")
