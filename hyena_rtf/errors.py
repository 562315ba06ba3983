"""User-facing errors: one line on stderr and a non-zero exit instead of a traceback."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

__all__ = ["UserError", "OutputExists", "run_cli", "EXIT_USER_ERROR"]

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's input (paths, data, config values) that the message says how to fix."""


class OutputExists(UserError, FileExistsError):
    """An output path holds something that writing would replace: a user error (one line at the
    command line) and, for library callers, a ``FileExistsError``."""


# Errors that come from bad input to our own code paths; anything else is a bug and keeps its traceback.
_USER_ERRORS = (
    UserError, ValueError, FileNotFoundError, FileExistsError, NotImplementedError, UnicodeDecodeError,
    FloatingPointError,  # nonfinite=stop: the run ends with its reason, checkpoints stay intact
)


def _to_log_files(line: str) -> None:
    """Append the error to the run's log file(s) (Hydra's ``<run dir>/<task>.log``), not to the
    console, which already shows it once."""
    import logging

    record = logging.LogRecord("hyena_rtf", logging.ERROR, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
            handler.flush()


def run_cli(task: Callable[..., Any], *args, **kwargs) -> Any:
    """Run ``task``; turn input errors into ``error: <message>`` and exit code 2.

    Set ``HYENA_RTF_DEBUG=1`` to get the full traceback instead.
    """
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    user_errors = (*_USER_ERRORS, MisconfigurationException)
    try:
        return task(*args, **kwargs)
    except (*user_errors, InstantiationException) as e:
        if os.environ.get("HYENA_RTF_DEBUG"):
            raise
        # hydra.utils.instantiate wraps constructor errors; report the constructor's own message.
        while isinstance(e, InstantiationException) and e.__cause__ is not None:
            e = e.__cause__
        if not isinstance(e, user_errors):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr, flush=True)
        _to_log_files(f"error: {msg}")
        sys.exit(EXIT_USER_ERROR)
