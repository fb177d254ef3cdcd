"""Data views: what a space reads from one location of a case, for training and for inference.

A space declares a :class:`DataView`; the loaders (training patches) and the sliding window
(whole-image inference) both build its batches, from any data source, so a context input is
cut the same way in training, validation and prediction:

``image``           ``(C, *patch)`` the patch itself (every view)
``context``         ``(n, C, *patch)`` one crop per context factor ``f``: the box of side
                    ``f * patch`` centred on the patch, block-averaged down to the patch size
                    (the coarse inputs of multi-magnification methods such as MSN and
                    DA-RefineNet). Outside the case the box reads as zeros.
``context_label``   ``(n, *patch)`` the label of each context crop (nearest sampling: the
                    sample at offset ``f // 2`` of each block), when the view asks for it.

The boxes are concentric: the patch is exactly the central region of every context box, as
:func:`nasseg.data.multires.multires_crops` cuts large images (the same pixels in 2D).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["DataView", "PATCH_VIEW", "read_box", "context_crop", "context_start",
           "patch_presence"]


@dataclass(frozen=True)
class DataView:
    """The inputs a space takes from one location.

    Args:
        context: downsample factors (whole numbers > 1) of the context crops around the patch,
            finest first; empty for a plain patch.
        context_labels: also give the label of every context crop (training targets of
            branches that see the context, e.g. MSN's meta-branch).
    """

    context: tuple[int, ...] = ()
    context_labels: bool = False

    def __post_init__(self) -> None:
        factors = tuple(self.context)
        if any(int(f) != f or f < 2 for f in factors):
            raise ValueError(f"context factors must be whole numbers >= 2, got {list(factors)}")
        object.__setattr__(self, "context", tuple(int(f) for f in factors))
        if self.context_labels and not self.context:
            raise ValueError("context_labels needs at least one context factor")

    @property
    def keys(self) -> tuple[str, ...]:
        """The input tensors of this view, in the order exports take them."""
        return ("image", "context") if self.context else ("image",)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (written into training folders and ``arch.json``)."""
        return {"context": list(self.context), "context_labels": self.context_labels}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "DataView":
        """Read :meth:`to_dict`'s form; None is the plain patch."""
        if not values:
            return cls()
        return cls(tuple(values.get("context", ())), bool(values.get("context_labels", False)))


#: The default view: the patch alone.
PATCH_VIEW = DataView()


def read_box(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """The box ``[start, start + size)`` over the trailing ``len(size)`` axes of ``array``,
    zeros where it leaves the array (leading axes, e.g. channels, are kept whole)."""
    lead = array.ndim - len(size)
    shape = array.shape[lead:]
    lo = [max(0, int(s)) for s in start]
    hi = [min(n, int(s) + int(z)) for n, s, z in zip(shape, start, size)]
    inner = tuple(slice(a, b) for a, b in zip(lo, hi))
    if all(a == s and b == s + z for a, b, s, z in zip(lo, hi, start, size)):
        return array[(Ellipsis, *inner)]
    out = np.zeros(array.shape[:lead] + tuple(int(z) for z in size), dtype=array.dtype)
    if all(b > a for a, b in zip(lo, hi)):
        target = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
        out[(Ellipsis, *target)] = array[(Ellipsis, *inner)]
    return out


def context_start(patch_start: Sequence[int], patch: Sequence[int], factor: int) -> list[int]:
    """Where the context box of ``factor`` starts so that it is concentric with the patch."""
    return [int(s) + p // 2 - (p * factor) // 2 for s, p in zip(patch_start, patch)]


def context_crop(array: np.ndarray, patch_start: Sequence[int], patch: Sequence[int],
                 factor: int, label: bool = False) -> np.ndarray:
    """The context crop of ``factor`` around the patch at ``patch_start``, at the patch's size
    (``factor`` 1: the patch itself, as stored).

    Images (``(C, *spatial)``) are block-averaged (float32); labels (``(*spatial)``) keep the
    sample at offset ``factor // 2`` of each block (their dtype kept).
    """
    patch = [int(p) for p in patch]
    box = read_box(array, context_start(patch_start, patch, factor), [p * factor for p in patch])
    if factor == 1:
        return box
    if label:
        return np.ascontiguousarray(box[tuple(slice(factor // 2, None, factor) for _ in patch)])
    lead = box.ndim - len(patch)
    shape = list(box.shape[:lead])
    for p in patch:
        shape += [p, factor]
    blocks = box.reshape(shape)
    axes = tuple(lead + 2 * i + 1 for i in range(len(patch)))
    return blocks.mean(axis=axes, dtype=np.float64).astype(np.float32)


def patch_presence(label: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 ``(num_classes - 1,)``: which foreground classes occur in ``label``."""
    found = np.zeros(num_classes - 1, dtype=np.float32)
    values = np.unique(label)
    values = values[(values > 0) & (values < num_classes)].astype(np.int64)
    found[values - 1] = 1.0
    return found

