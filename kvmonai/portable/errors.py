"""kvmonai's user-facing errors, and their one-line report at the end of a bundle run.

Every error kvmonai raises for something a user can fix (a setting, an input path, a weights file...) derives from
:class:`KVMonaiError`, and its message names the culprit and says what to do. Inside ``python -m monai.bundle run``
such an error reaches the user wrapped twice or more: MONAI re-raises it as ``RuntimeError: Failed to evaluate
ConfigExpression`` or ``Component to instantiate must represent a valid class``, and ignite's engine and MONAI's
``StatsHandler`` log it, with its traceback, before it leaves the run. :func:`report_errors`, the first item of every
bundle config's ``initialize`` list (the first item of ``run`` in an exported bundle, see ``kvmonai export``), makes
such a run end with the message alone::

    error: /nonexistent.nii.gz: no such file or folder. (KVMONAI_TRACEBACK=1 shows the traceback)

``KVMONAI_TRACEBACK=1`` shows the tracebacks and log lines as before, with the message still the last line. Other
errors (a bug, an error of MONAI or torch) print their traceback as always.

This module is part of :mod:`kvmonai.portable`: an exported bundle carries it as ``scripts/errors.py``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = [
    "TRACEBACK_ENV",
    "InputFormatError",
    "InputNotFoundError",
    "KVMonaiError",
    "kvmonai_error",
    "report_errors",
]

#: the environment variable that brings the tracebacks back (``KVMONAI_TRACEBACK=1``)
TRACEBACK_ENV = "KVMONAI_TRACEBACK"
#: the logger of MONAI's ``StatsHandler``, which logs an engine's exception with its traceback (and does not
#: propagate to the root logger, so the root's handlers never see that record)
_STATS_LOGGER = "monai.handlers.StatsHandler"


class KVMonaiError(Exception):
    """Base class of kvmonai's errors that a user can act on; the message says what went wrong and what to do."""


class InputNotFoundError(KVMonaiError, FileNotFoundError):
    """An input file or folder (a volume to segment, an exported network) does not exist."""


class InputFormatError(KVMonaiError, ValueError):
    """An input exists but is not a volume kvmonai can read (unknown kind, unreadable file)."""


def kvmonai_error(error: BaseException | None) -> KVMonaiError | None:
    """The :class:`KVMonaiError` behind ``error``: itself, or the first one along its ``__cause__``/``__context__``
    chain (MONAI's config parser and transforms wrap the errors they catch); ``None`` when there is none."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KVMonaiError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _traceback_wanted() -> bool:
    return os.environ.get(TRACEBACK_ENV) == "1"


class _KVMonaiErrorLogFilter(logging.Filter):
    """Drop ERROR records about a :class:`KVMonaiError` (ignite's "run is terminating due to exception", the
    ``StatsHandler`` traceback): the record's own exception or, for records without one, the exception being
    handled when it is logged; :func:`report_errors`' hook prints the message once, at the end."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or _traceback_wanted():
            return True
        error = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return kvmonai_error(error) is None


_FILTER = _KVMonaiErrorLogFilter()


def _excepthook(previous: Callable[..., Any]) -> Callable[..., Any]:
    """``sys.excepthook`` that prints a :class:`KVMonaiError`'s message and passes other errors to ``previous``."""

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        error = kvmonai_error(value)
        if error is None:
            previous(kind, value, tb)
        elif _traceback_wanted():
            previous(kind, value, tb)
            print(f"error: {error}", file=sys.stderr)
        else:
            print(f"error: {error} ({TRACEBACK_ENV}=1 shows the traceback)", file=sys.stderr)

    hook.kvmonai = True  # type: ignore[attr-defined]
    return hook


def report_errors() -> bool:
    """End a bundle run that fails with a :class:`KVMonaiError` with its one-line message instead of tracebacks.

    Installs, once per process: a ``sys.excepthook`` that prints ``error: <message>`` to stderr for an uncaught
    error with a :class:`KVMonaiError` in its chain (other errors: Python's traceback), and a log filter on the root
    logger's handlers and on MONAI's ``StatsHandler`` logger that drops the ERROR records logged about such an error
    (the logging config is applied before ``initialize``, so these handlers exist). With ``KVMONAI_TRACEBACK=1``
    nothing is dropped and the traceback precedes the message. A process that runs bundles itself (the study, the
    MONAI Label app) still receives the exception; only the engines' ERROR lines about it are left out.

    Returns:
        ``True``, so that the call can be an item of a config's ``initialize`` or ``run`` list.
    """
    if not getattr(sys.excepthook, "kvmonai", False):
        sys.excepthook = _excepthook(sys.excepthook)
    from monai.apps.utils import get_logger  # the way StatsHandler creates its logger (with a stdout handler)

    for target in (*logging.getLogger().handlers, get_logger(_STATS_LOGGER)):
        if _FILTER not in target.filters:
            target.addFilter(_FILTER)
    return True
