"""Data loaders whose order and augmentation depend only on (seed, epoch)."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from nasseg.data import CaseSet, PatchDataset
from nasseg.runtime.seeding import epoch_seed

__all__ = ["EpochLoader", "move_batch"]


class EpochLoader:
    """A ``DataLoader`` over some cases that is re-seeded at every epoch.

    Shuffling and augmentation of epoch ``e`` are a function of ``(seed, e)`` alone, so a search
    resumed at epoch ``e`` sees exactly the batches an unbroken one would.
    """

    def __init__(self, data: CaseSet, indices: Sequence[int], batch_size: int,
                 train: bool, seed: int, num_workers: int = 0,
                 patch_size: Sequence[int] | None = None) -> None:
        self.dataset = PatchDataset(data, indices, augment=train, seed=seed,
                                    patch_size=patch_size)
        self.seed = seed
        self.generator = torch.Generator()
        self.loader = DataLoader(self.dataset, batch_size=min(batch_size, len(indices)),
                                 shuffle=train, drop_last=train, num_workers=num_workers,
                                 generator=self.generator)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """Iterate the batches of ``epoch``."""
        self.dataset.set_epoch(epoch)
        self.generator.manual_seed(epoch_seed(self.seed, epoch))
        return iter(self.loader)


def move_batch(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch with every tensor on ``device``."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}
