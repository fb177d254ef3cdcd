"""What a run shows and records: progress bars on a terminal, TensorBoard events, log lines."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Iterable, Iterator, Mapping, TypeVar

__all__ = ["RunLog", "logger"]

logger = logging.getLogger("nasseg")
T = TypeVar("T")


class RunLog:
    """TensorBoard writer plus progress bars; bars only when stderr is a terminal.

    A disabled log (the processes other than rank 0 of a distributed run) writes nothing.
    """

    def __init__(self, tensorboard_dir: Path, show_progress: bool | None = None,
                 enabled: bool = True) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(tensorboard_dir))
        show = sys.stderr.isatty() if show_progress is None else show_progress
        self.show_progress = show and enabled

    def progress(self, items: Iterable[T], total: int, desc: str) -> Iterator[T]:
        """Wrap ``items`` in a progress bar when attached to a terminal."""
        if not self.show_progress:
            return iter(items)
        from tqdm import tqdm

        return iter(tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Write ``tag -> value`` at ``step``."""
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
