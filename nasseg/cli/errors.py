"""How the CLI reports a user's mistake: one line, a non-zero exit, no traceback."""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, TypeVar

import click

from nasseg.artifacts.files import FileFormatError
from nasseg.artifacts.run_folder import RunFolderError
from nasseg.data import DataError
from nasseg.evaluation.folders import EvaluationError
from nasseg.runtime.guards import NonFiniteLossError
from nasseg.space import KnobError, SampleError, UnknownSpaceError

__all__ = ["user_errors", "USER_ERRORS"]

USER_ERRORS = (DataError, EvaluationError, FileFormatError, RunFolderError, KnobError, SampleError,
               UnknownSpaceError, NonFiniteLossError, ValueError)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn the errors a user can fix into ``nasseg: error: ...`` and exit status 1.

    Set ``NASSEG_DEBUG=1`` to see the traceback instead.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            if os.environ.get("NASSEG_DEBUG"):
                raise
            click.echo(f"nasseg: error: {exc}", err=True)
            raise SystemExit(1) from None

    return wrapper  # type: ignore[return-value]
