"""Atomic file writes: a result either appears whole or not at all.

Each writer writes a temporary file beside the target, flushes it to disk, then renames it over
the target, so an interrupted run never leaves a truncated checkpoint or JSON that looks finished.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

import torch

__all__ = ["atomic_path", "write_json", "read_json", "save_torch", "FileFormatError",
           "error_line"]


class FileFormatError(ValueError):
    """A file nasseg reads is missing, unreadable or not in the expected format."""


def error_line(exc: BaseException, limit: int = 300) -> str:
    """One line of ``exc``'s message, for an error that must stay one line: its first, or for
    torch's state-dict errors ("Error(s) in loading state_dict ...") the first mismatch."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    pick = 1 if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else 0
    return lines[pick][:limit]


@contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _strict(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by None, so the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def write_json(target: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted, strict JSON (NaN -> null), atomically."""
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(_strict(obj), fh, indent=2, sort_keys=True, allow_nan=False)
            fh.write("\n")


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Read JSON, raising :class:`FileFormatError` that names the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: no such {what}")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{path}: not a readable {what} ({exc})") from None


def save_torch(target: str | os.PathLike[str], obj: Any) -> None:
    """``torch.save`` atomically."""
    with atomic_path(target, suffix=".pt") as tmp:
        fh: IO[bytes]
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
