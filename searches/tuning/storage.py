"""Where a study lives: a journal file in the run folder, or a database server.

* Default: ``OUT/study.journal``, Optuna's ``JournalStorage`` on a ``JournalFileBackend``. Several
  worker processes on one machine (or on a shared file system with working locks) share it
  safely. There are no heartbeats; instead each trial records its worker process (see
  :mod:`nasseg.searches.tuning.workers`), and a worker on the same host that finds that process
  gone fails the trial and re-queues it.
* A plain path (``--storage my.journal``): a journal file there.
* A database URL (``postgresql://user@host/db``, ``sqlite:///file.db``...): Optuna's
  ``RDBStorage`` with heartbeats. A worker that stops beating for the grace period has its trial
  failed by another worker and re-queued. Many machines can share a PostgreSQL study; SQLite
  is for one process at a time.

Both kinds re-queue a dead worker's trial the same way, through ``StudyStorage.requeue``
(Optuna's ``RetryHeartbeatStaleTrialCallback``, called ``RetryFailedTrialCallback`` before
Optuna 4.9): a waiting copy with the same knob values, its system attributes naming the failed
trial (``failed_trial``) and the chain of failures (``retry_history``), up to ``max_retry`` times.

Besides the storage, each kind gives a *claim lock*: workers take it while they count the study's
trials and create the next one, so ``--trials N`` means exactly N trials across all workers.
Journal and SQLite files use an ``flock`` file beside them; PostgreSQL uses an advisory lock.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import optuna
from optuna.trial import FrozenTrial

__all__ = ["StudyStorage", "open_storage", "retry_callback", "DEFAULT_JOURNAL",
           "is_database_url"]

logger = logging.getLogger("nasseg")

#: The journal file a study keeps in its run folder unless ``--storage`` says otherwise.
DEFAULT_JOURNAL = "study.journal"


@dataclass
class StudyStorage:
    """An opened study storage and how workers coordinate on it.

    Attributes:
        storage: the Optuna storage object.
        kind: ``"journal"`` or ``"rdb"``.
        display: the storage as shown to a person (a path, or a URL without its password).
        dashboard: the command that opens the storage in optuna-dashboard.
        heartbeat_interval: seconds between heartbeats (None: no heartbeats).
        lock: a factory of the claim lock for ``study_name``.
        requeue: ``requeue(study, failed_trial)`` queues a failed trial again (bounded retries).
    """

    storage: optuna.storages.BaseStorage
    kind: str
    display: str
    dashboard: str
    heartbeat_interval: int | None = None
    lock: Callable[[str], ContextManager[None]] = field(
        default=lambda _name: contextlib.nullcontext())
    requeue: Callable[[optuna.Study, FrozenTrial], None] = field(
        default_factory=lambda: retry_callback(3))

    @property
    def heartbeat(self) -> bool:
        """True when trials send heartbeats and stale ones are retried."""
        return self.heartbeat_interval is not None


def is_database_url(spec: str) -> bool:
    """True for ``dialect://...`` URLs (RDB storage), False for file paths (journal)."""
    return "://" in spec


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing), released when the block ends."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        logger.warning("no file locking on this platform: parallel workers may overshoot --trials")
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _advisory_key(study_name: str) -> int:
    """A signed 64-bit key naming ``study_name``'s claim lock in PostgreSQL."""
    digest = hashlib.sha1(f"nasseg-tune:{study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _pg_lock(engine: Any) -> Callable[[str], ContextManager[None]]:
    from sqlalchemy import text

    @contextlib.contextmanager
    def lock(study_name: str) -> Iterator[None]:
        key = _advisory_key(study_name)
        # A session-level lock on its own connection: a worker that dies loses its connection,
        # and with it the lock.
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()

    return lock


def _journal_storage(path: Path) -> optuna.storages.BaseStorage:
    try:
        from optuna.storages.journal import JournalFileBackend as backend_cls
    except ImportError:  # Optuna < 4.0
        backend_cls = optuna.storages.JournalFileStorage
    return optuna.storages.JournalStorage(backend_cls(str(path)))


def retry_callback(max_retry: int | None) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Optuna's callback that re-queues a failed trial, at most ``max_retry`` times (None:
    always), in this Optuna's name."""
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # Optuna >= 4.9
    with warnings.catch_warnings():  # marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return (cls or optuna.storages.RetryFailedTrialCallback)(max_retry=max_retry)


def _retry_keyword() -> str:
    """``RDBStorage``'s keyword for the stale-trial callback, in this Optuna's name."""
    params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    return ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params
            else "failed_trial_callback")


def _with_installed_driver(url: Any) -> Any:
    """A plain ``postgresql://`` URL with the driver that is installed: SQLAlchemy 2.1 means
    psycopg 3 by it, 2.0 psycopg2; nasseg's ``postgres`` extra installs psycopg2."""
    if url.drivername != "postgresql":
        return url
    import importlib.util

    for module, driver in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return url.set(drivername=driver)
    return url


def open_storage(spec: str | None, out: str | Path, *, heartbeat_interval: int = 60,
                 grace_period: int | None = None, max_retry: int | None = 3) -> StudyStorage:
    """Open the storage ``spec`` names (None: ``out/study.journal``).

    Args:
        spec: None, a journal file path, or a database URL.
        out: the study's run folder (holds the default journal and the claim lock file).
        heartbeat_interval: database storages: seconds between a running trial's heartbeats.
        grace_period: database storages: seconds without a heartbeat after which a running trial
            is failed and re-queued (default: twice the interval).
        max_retry: how often one trial is re-queued after its worker died (None: always).
    """
    out = Path(out)
    requeue = retry_callback(max_retry)
    if spec is None or not is_database_url(spec):
        path = (out / DEFAULT_JOURNAL if spec is None else Path(spec)).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = path.with_name(f".{path.name}.lock")
        return StudyStorage(_journal_storage(path), "journal", str(path),
                            f"optuna-dashboard {path}", None,
                            lambda _name: _file_lock(lock_path), requeue)

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        display = make_url(spec).render_as_string(hide_password=True)
    except ArgumentError as exc:
        raise ValueError(f"--storage {spec!r} is not a database URL ({exc})") from None
    url = _with_installed_driver(make_url(spec))
    if heartbeat_interval < 1:
        raise ValueError(f"the heartbeat interval must be >= 1 s, got {heartbeat_interval}")
    if grace_period is not None and grace_period <= heartbeat_interval:
        raise ValueError(f"the grace period ({grace_period} s) must exceed the heartbeat "
                         f"interval ({heartbeat_interval} s)")
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url.render_as_string(hide_password=False),
                    heartbeat_interval=int(heartbeat_interval),
                    grace_period=None if grace_period is None else int(grace_period),
                    engine_kwargs=({"pool_pre_ping": True} if url.get_backend_name() != "sqlite"
                                   else None),
                    **{_retry_keyword(): requeue})
            break
        except ImportError as exc:
            raise ValueError(f"cannot open {display}: {exc} (for PostgreSQL: "
                             "pip install 'nasseg[postgres]')") from None
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            # Workers starting together on a fresh database race to create its tables.
            if attempt == 2:
                raise ValueError(f"cannot open {display}: {exc}") from None
            time.sleep(1.0 + attempt)
    backend = url.get_backend_name()
    if backend == "postgresql":
        lock = _pg_lock(storage.engine)
    elif backend == "sqlite" and url.database not in (None, "", ":memory:"):
        db = Path(url.database).resolve()
        lock_path = db.with_name(f".{db.name}.lock")
        lock = lambda _name: _file_lock(lock_path)  # noqa: E731
    else:
        logger.warning("%s: no claim lock for %s databases; parallel workers may run a few trials "
                       "more than --trials", display, backend)
        lock = lambda _name: contextlib.nullcontext()  # noqa: E731
    return StudyStorage(storage, "rdb", display, f"optuna-dashboard {display}",
                        int(heartbeat_interval), lock, requeue)
