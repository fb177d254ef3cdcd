"""Data sets: the in-memory array format, its on-disk ``.npz`` form and the built-in demos."""

from nasseg.data.arrays import (
    DataError,
    SegmentationData,
    load_arrays,
    save_arrays,
    split_indices,
)
from nasseg.data.cases import Case, CaseSet
from nasseg.data.demo import DEMO_SETS, fresh_demo_cases, make_demo
from nasseg.data.patches import PatchDataset
from nasseg.data.views import PATCH_VIEW, DataView
from nasseg.data.source import (DataProblems, load_data, locate_data_spec, record_data_spec,
                                resolve_data_spec)

__all__ = [
    "DataError",
    "Case",
    "CaseSet",
    "SegmentationData",
    "save_arrays",
    "load_arrays",
    "split_indices",
    "PatchDataset",
    "DataView",
    "PATCH_VIEW",
    "DEMO_SETS",
    "fresh_demo_cases",
    "make_demo",
    "load_data",
    "resolve_data_spec",
    "record_data_spec",
    "locate_data_spec",
    "DataProblems",
]
