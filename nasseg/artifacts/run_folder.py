"""The run folder: where a search or a training run keeps everything it writes.

Layout (stable; scripts rely on it):

``run.json``          what was run: space, space arguments, knobs, data, engine settings
``split.json``        the fixed train/validation split (case indices)
``checkpoint.pt``     the last completed epoch, written atomically
``arch_params.json``  op and connection scores (probabilities and gates, or the selection's)
``selection.json``    what the selection measured (search runs that select by removal)
``arch.json``         the derived architecture (search runs)
``model.pt``          the trained derived network (train runs)
``metrics.json``      validation metrics (train runs)
``cost.json``         the cost card: wall time per phase, steps per second, peak memory, device
``tensorboard/``      TensorBoard event files
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunFolder", "RunFolderError", "fresh_run_dir"]


class RunFolderError(ValueError):
    """A run folder is missing, incomplete, or would overwrite an earlier run."""


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run folder."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "run.json"

    @property
    def split(self) -> Path:
        return self.path / "split.json"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def arch_params(self) -> Path:
        return self.path / "arch_params.json"

    @property
    def selection(self) -> Path:
        return self.path / "selection.json"

    @property
    def arch(self) -> Path:
        return self.path / "arch.json"

    @property
    def model(self) -> Path:
        return self.path / "model.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def cost(self) -> Path:
        return self.path / "cost.json"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    def require(self, *files: Path) -> None:
        """Raise :class:`RunFolderError` if any of ``files`` is missing."""
        for f in files:
            if not f.exists():
                raise RunFolderError(f"{f}: missing; is {self.path} a finished nasseg run?")

    def ensure_new(self) -> None:
        """Create the folder; refuse one that already holds a run (nothing earlier is lost)."""
        if self.config.exists():
            raise RunFolderError(f"{self.path} already holds a run; pass --resume to continue it "
                                 "or choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)


def fresh_run_dir(base: Path, name: str) -> Path:
    """``base/name``, or ``base/name-2``, ``-3``... : the first that holds no run yet."""
    candidate, n = base / name, 1
    while (candidate / "run.json").exists():
        n += 1
        candidate = base / f"{name}-{n}"
    return candidate
