"""Which process runs a trial, and whether it still lives.

A worker records itself on every trial it claims (host, pid, process start time). Any worker on
the same host can then tell a trial whose process is gone (killed, out of memory) from one that
still runs, on every storage, heartbeats or not. The start time (``/proc/PID/stat``, where there
is one) keeps a reused pid from passing for the dead worker; a zombie counts as dead.
"""
from __future__ import annotations

import os
import socket
from typing import Any, Mapping

__all__ = ["WORKER_ATTR", "this_worker", "on_this_host", "worker_alive"]

#: The trial user attribute that holds the worker record.
WORKER_ATTR = "worker"


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """A process's state letter and start time (clock ticks after boot), or None without
    ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def this_worker() -> dict[str, Any]:
    """This process's record: ``host``, ``pid`` and ``start`` (None where unknown)."""
    stat = _proc_stat(os.getpid())
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "start": None if stat is None else stat[1]}


def on_this_host(record: Mapping[str, Any] | None) -> bool:
    """True when ``record`` names a process on this host (only those can be checked)."""
    return record is not None and record.get("host") == socket.gethostname()


def worker_alive(record: Mapping[str, Any]) -> bool:
    """Whether the process of ``record`` (on this host) still runs."""
    pid = int(record["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, start = stat
    return state != "Z" and (record.get("start") is None or start == record["start"])
