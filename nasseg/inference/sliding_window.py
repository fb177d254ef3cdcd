"""Sliding-window inference: predict a whole case with a network trained on smaller patches.

Cases are often larger than the patch a network was trained on.  The case is tiled with
overlapping windows; each window's softmax output is weighted by a Gaussian importance map
(as nnU-Net does), because predictions near a window's border see less context and are less
reliable than those at its centre.  Optional mirroring averages over all flips of the spatial
axes (test-time augmentation).

Every window becomes a batch of the network's data view (:mod:`nasseg.data.views`): a space
that reads context gets, for each window, the context crops cut from the whole image around it
(reaching beyond the window, zeros outside the image), exactly as its training patches had.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Sequence

import torch

from nasseg.data.views import PATCH_VIEW, DataView, context_start

__all__ = ["sliding_window_predict", "gaussian_importance_map", "window_starts",
           "network_predict_fn", "window_batch"]

Batch = dict[str, torch.Tensor]
PredictFn = Callable[[Batch], torch.Tensor]

#: Smallest weight of the importance map, relative to its maximum of 1: every voxel a window
#: covers keeps a positive weight, so normalising never divides by zero (or by an underflow).
MIN_WEIGHT = 1e-4


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8,
                            min_value: float = MIN_WEIGHT, device: torch.device | str | None = None,
                            ) -> torch.Tensor:
    """A separable Gaussian of shape ``patch_size``, maximum 1, centred on the patch.

    ``sigma = sigma_scale * patch`` per axis (nnU-Net's 1/8).  The centre is ``(p - 1) / 2`` so
    the map is symmetric under flips; values are clamped below at ``min_value``.
    """
    weights = torch.ones((), dtype=torch.float64, device=device)
    for p in patch_size:
        x = torch.arange(p, dtype=torch.float64, device=device) - (p - 1) / 2.0
        sigma = max(sigma_scale * p, 1e-6)
        weights = weights.unsqueeze(-1) * torch.exp(-0.5 * (x / sigma) ** 2)
    weights = weights / weights.max()
    return weights.clamp_min(min_value).float()


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start offsets of windows of length ``patch`` covering ``size`` (>= patch).

    Windows advance by about ``patch * (1 - overlap)``; the steps are spread evenly so the first
    window starts at 0 and the last ends exactly at the border (nnU-Net's scheme).
    """
    if size < patch:
        raise ValueError(f"size {size} is smaller than the patch {patch}; pad first")
    target_step = max(patch * (1.0 - overlap), 1.0)
    num = math.ceil((size - patch) / target_step) + 1
    if num == 1:
        return [0]
    step = (size - patch) / (num - 1)
    return [int(round(step * i)) for i in range(num)]


def network_predict_fn(net: Callable[..., Any]) -> PredictFn:
    """A ``predict_fn``: segmentation logits of a batch dict of the network's view.

    Uses ``net.forward_batch`` and ``net.segmentation`` when the network has them (nasseg spaces,
    any view, several outputs), else calls ``net(batch["image"])``.  Put the network in
    ``eval()`` mode first.
    """
    if hasattr(net, "forward_batch") and hasattr(net, "segmentation"):
        return lambda batch: net.segmentation(net.forward_batch(batch))
    return lambda batch: net(batch["image"])


def _context_window(image: torch.Tensor, start: Sequence[int], patch: Sequence[int],
                    factor: int) -> torch.Tensor:
    """The context crop of ``factor`` around the window at ``start`` (as
    :func:`nasseg.data.views.context_crop` cuts training patches), on the image's device."""
    box_start = context_start(start, patch, factor)
    size = [p * factor for p in patch]
    box = image.new_zeros((image.shape[0], *size))
    lo = [max(0, b) for b in box_start]
    hi = [min(n, b + z) for n, b, z in zip(image.shape[1:], box_start, size)]
    if all(h > lo_ for lo_, h in zip(lo, hi)):
        box[(slice(None), *(slice(a - b, c - b) for a, b, c in zip(lo, box_start, hi)))] = \
            image[(slice(None), *(slice(a, c) for a, c in zip(lo, hi)))]
    shape = [image.shape[0]]
    for p in patch:
        shape += [p, factor]
    return box.reshape(shape).mean(dim=tuple(2 + 2 * i for i in range(len(patch))))


def window_batch(image: torch.Tensor, starts: Sequence[Sequence[int]], patch: Sequence[int],
                 view: DataView = PATCH_VIEW) -> Batch:
    """The batch of ``view`` for windows of ``patch`` starting at ``starts`` in ``image``."""
    batch = {"image": torch.stack([image[(slice(None), *(slice(o, o + p) for o, p in
                                                         zip(start, patch)))]
                                   for start in starts])}
    if view.context:
        batch["context"] = torch.stack([torch.stack([_context_window(image, start, patch, f)
                                                     for f in view.context])
                                        for start in starts])
    return batch


def _check(image: torch.Tensor, patch_size: Sequence[int] | int, overlap: float,
           batch_size: int) -> tuple[int, ...]:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim not in (3, 4):
        raise ValueError(f"image must be (C, H, W) or (C, D, H, W), got shape {tuple(image.shape)}")
    dims = image.ndim - 1
    patch = (int(patch_size),) * dims if isinstance(patch_size, int) else tuple(int(p) for p in patch_size)
    if len(patch) != dims or any(p < 1 for p in patch):
        raise ValueError(f"patch_size {patch_size} must be {dims} positive sizes for image shape "
                         f"{tuple(image.shape)}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return patch


def _flip(batch: Batch, axes: tuple[int, ...], dims: int) -> Batch:
    """Every tensor of ``batch`` flipped along spatial ``axes`` (counted from the last
    ``dims`` axes); concentric context crops flip about the same centre as the window."""
    if not axes:
        return batch
    return {k: v.flip(tuple(v.ndim - dims + a for a in axes)) for k, v in batch.items()}


def _predict_probs(predict_fn: PredictFn, batch: Batch, mirror: bool) -> torch.Tensor:
    """Softmax probabilities of ``batch``; averaged over all spatial flips when ``mirror``."""
    images = batch["image"]
    dims = images.ndim - 2
    flip_sets: list[tuple[int, ...]] = [()]
    if mirror:
        flip_sets = [axes for r in range(dims + 1) for axes in itertools.combinations(range(dims), r)]
    total = None
    for axes in flip_sets:
        logits = predict_fn(_flip(batch, axes, dims))
        if not isinstance(logits, torch.Tensor) or logits.ndim != images.ndim \
                or logits.shape[0] != images.shape[0] or logits.shape[2:] != images.shape[2:]:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"predict_fn must return logits (B, K, *patch) for a batch of shape "
                             f"{tuple(images.shape)}, got {got}")
        probs = torch.softmax(logits.float(), dim=1)
        probs = probs.flip(tuple(2 + a for a in axes)) if axes else probs
        total = probs if total is None else total + probs
    return total / len(flip_sets)


@torch.no_grad()
def sliding_window_predict(predict_fn: PredictFn, image: torch.Tensor,
                           patch_size: Sequence[int] | int, overlap: float = 0.5,
                           gaussian: bool = True, mirror: bool = False,
                           batch_size: int = 1, view: DataView = PATCH_VIEW) -> torch.Tensor:
    """Class probabilities ``(K, *spatial)`` (float32, on the image's device) of a whole image.

    Args:
        predict_fn: maps a batch dict of ``view`` (``"image"``: ``(B, C, *patch)``) to logits
            ``(B, K, *patch)`` (see :func:`network_predict_fn`).
        image: ``(C, H, W)`` or ``(C, D, H, W)``; windows are cut on its device.
        patch_size: the window size per spatial axis (or one int for all).
        overlap: fraction of a window shared with its neighbour, in ``[0, 1)``.
        gaussian: weight windows with a Gaussian importance map (else uniformly).
        mirror: average over all ``2**dims`` flips of the spatial axes (test-time augmentation).
        batch_size: windows per ``predict_fn`` call.
        view: the network's data view; context crops are cut around every window.

    An axis shorter than the patch is zero-padded symmetrically and the padding cropped away.
    """
    patch = _check(image, patch_size, overlap, batch_size)
    spatial = tuple(image.shape[1:])
    padded_shape = tuple(max(s, p) for s, p in zip(spatial, patch))
    before = tuple((ps - s) // 2 for ps, s in zip(padded_shape, spatial))
    inner = tuple(slice(b, b + s) for b, s in zip(before, spatial))
    if padded_shape != spatial:
        padded = image.new_zeros((image.shape[0],) + padded_shape)
        padded[(slice(None),) + inner] = image
    else:
        padded = image

    if gaussian:
        weight_map = gaussian_importance_map(patch, device=image.device)
    else:
        weight_map = torch.ones(patch, dtype=torch.float32, device=image.device)
    starts = itertools.product(*(window_starts(s, p, overlap) for s, p in zip(padded_shape, patch)))
    origins = list(starts)
    windows = [tuple(slice(o, o + p) for o, p in zip(origin, patch)) for origin in origins]

    probs_sum: torch.Tensor | None = None
    weight_sum = torch.zeros(padded_shape, dtype=torch.float32, device=image.device)
    for first in range(0, len(windows), batch_size):
        chunk = windows[first:first + batch_size]
        batch = window_batch(padded, origins[first:first + batch_size], patch, view)
        probs = _predict_probs(predict_fn, batch, mirror).to(image.device)
        if probs_sum is None:
            probs_sum = torch.zeros((probs.shape[1],) + padded_shape, dtype=torch.float32,
                                    device=image.device)
        for w, p in zip(chunk, probs):
            probs_sum[(slice(None),) + w] += p * weight_map
            weight_sum[w] += weight_map
    assert probs_sum is not None  # at least one window always exists
    return (probs_sum / weight_sum)[(slice(None),) + inner].contiguous()
