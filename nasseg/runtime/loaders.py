"""Data loaders whose order and augmentation depend only on (seed, epoch)."""
from __future__ import annotations

import itertools
from typing import Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from nasseg.data import CaseSet, PatchDataset
from nasseg.data.views import PATCH_VIEW, DataView
from nasseg.runtime.seeding import epoch_seed

__all__ = ["EpochLoader", "pass_steps"]


def pass_steps(data: CaseSet, parts: Iterable[Sequence[int]], batch_size: int) -> int:
    """Steps of one pass over the patches of every part of the cases (the fewest among the
    parts, so every rank takes as many): cases times the set's ``patches_per_case``."""
    per = int(getattr(data, "patches_per_case", 1))
    return min(len(p) * per // min(batch_size, len(p) * per) for p in parts)


class EpochLoader:
    """A ``DataLoader`` over some cases that is re-seeded at every epoch.

    Shuffling and augmentation of epoch ``e`` are a function of ``(seed, e)`` alone, so a search
    resumed at epoch ``e`` sees exactly the batches an unbroken one would. Items are patches of
    ``view`` (see :class:`~nasseg.data.patches.PatchDataset`).
    """

    def __init__(self, data: CaseSet, indices: Sequence[int], batch_size: int,
                 train: bool, seed: int, num_workers: int = 0,
                 patch_size: Sequence[int] | None = None, view: DataView = PATCH_VIEW) -> None:
        self.dataset = PatchDataset(data, indices, augment=train, seed=seed,
                                    patch_size=patch_size, view=view)
        self.seed = seed
        self.generator = torch.Generator()
        self.loader = DataLoader(self.dataset, batch_size=min(batch_size, len(self.dataset)),
                                 shuffle=train, drop_last=train, num_workers=num_workers,
                                 generator=self.generator)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """Iterate the batches of ``epoch``."""
        self.dataset.set_epoch(epoch)
        self.generator.manual_seed(epoch_seed(self.seed, epoch))
        return iter(self.loader)

    def steps(self, epoch: int, steps: int) -> Iterator[dict[str, torch.Tensor]]:
        """``steps`` batches of ``epoch``: its pass over the cases, continued by further seeded
        passes when the epoch is longer than the data (a budget in steps, not in passes)."""
        passes = itertools.chain([epoch], (epoch * 1000 + r for r in itertools.count(1)))
        return itertools.islice(itertools.chain.from_iterable(map(self.epoch, passes)), steps)

