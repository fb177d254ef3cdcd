"""Resolve a ``--data`` argument: a demo name, a nasseg ``.npz`` file, a preprocessed ``.h5``
cache, or a data set folder.

A folder (Medical Segmentation Decathlon or nnU-Net v2 raw layout) is verified first; every
problem found is reported at once, and nothing is cached until the data is clean.
"""
from __future__ import annotations

import os
from pathlib import Path

from nasseg.data.arrays import DataError, load_arrays
from nasseg.data.cases import CaseSet
from nasseg.data.demo import DEMO_SETS, make_demo
from nasseg.data.formats import RawDataset, read_dataset

__all__ = ["load_data", "verified_folder", "resolve_data_spec", "record_data_spec",
           "locate_data_spec", "DataProblems"]


class DataProblems(DataError):
    """A data set folder failed verification; ``problems`` holds one line per problem."""

    def __init__(self, folder: Path, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{folder}: {len(problems)} problem(s) found by verification:\n"
                         + "\n".join(problems))


def resolve_data_spec(spec: str) -> str:
    """``spec`` as it should be recorded: demo names as they are, paths made absolute."""
    return spec if spec in DEMO_SETS else str(Path(spec).resolve())


def record_data_spec(spec: str, folder: str | os.PathLike[str]) -> str:
    """How a file in ``folder`` records the data ``spec`` without a machine's absolute path:
    demo names as they are, paths relative to ``folder`` (they still resolve when the folder
    and the data move together)."""
    if spec in DEMO_SETS:
        return spec
    return os.path.relpath(Path(spec).resolve(), Path(folder).resolve())


def locate_data_spec(recorded: str, folder: str | os.PathLike[str]) -> str:
    """The data ``spec`` a file in ``folder`` recorded with :func:`record_data_spec`."""
    if recorded in DEMO_SETS:
        return recorded
    path = Path(recorded)
    return str(path if path.is_absolute() else (Path(folder) / path).resolve())


def verified_folder(path: Path) -> RawDataset:
    """The data set folder ``path`` as its ``dataset.json`` describes it, once every case has
    passed verification (:class:`DataProblems` lists every problem otherwise)."""
    from nasseg.data.verify import verify_dataset

    problems = verify_dataset(path)
    if problems:
        raise DataProblems(path, problems)
    return read_dataset(path)


def load_data(spec: str) -> CaseSet:
    """Load the data set ``spec`` names; raise :class:`DataError` naming the problem."""
    if spec in DEMO_SETS:
        return make_demo(spec)
    path = Path(spec)
    if path.suffix == ".npz":
        return load_arrays(path)
    if path.suffix == ".h5":
        from nasseg.data.h5cache import H5CaseSet

        if not path.is_file():
            raise DataError(f"{path}: file not found")
        return H5CaseSet(path)
    if path.is_dir():
        from nasseg.data.large_images import LargeImageSet, is_large_image_folder

        if is_large_image_folder(path):
            return LargeImageSet.from_folder(path)
        from nasseg.data.h5cache import load_folder

        verified_folder(path)
        return load_folder(path)
    raise DataError(f"{spec}: not a demo data set ({', '.join(DEMO_SETS)}), a .npz array file, "
                    "a preprocessed .h5 cache, or a data set folder with a dataset.json "
                    "(images and labels, or large images)")
