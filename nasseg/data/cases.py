"""The case-set interface every data source implements: cases of any size, read one at a time.

The demo arrays (:class:`~nasseg.data.arrays.SegmentationData`, all cases one shape) and the
preprocessed HDF5 cache of a real data set both offer it; loaders, the engine and the trainer
only use this interface.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Case", "CaseSet"]


@dataclass
class Case:
    """One preprocessed case.

    Attributes:
        case_id: identifier, unique in its set (the file stem for folder data sets).
        image: float32 ``(C, *spatial)``, normalised.
        label: int64 ``(*spatial)`` or None for cases without reference.
        presence: float32 ``(num_classes - 1,)`` class presence, or None.
        scene: scene index, or None.
        meta: what is needed to put a prediction back on the original grid (source files,
            original shape, crop box, spacing, affine); JSON values only.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None = None
    presence: np.ndarray | None = None
    scene: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class CaseSet(Protocol):
    """A data set as nasseg uses it."""

    name: str
    class_names: list[str]

    @property
    def in_channels(self) -> int: ...

    @property
    def spatial_dims(self) -> int: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def num_cases(self) -> int: ...

    @property
    def patch_size(self) -> tuple[int, ...]:
        """The patch size networks train on (the whole case when cases share one small shape)."""
        ...

    def case(self, index: int) -> Case:
        """Case ``index`` (0-based), read now."""
        ...
