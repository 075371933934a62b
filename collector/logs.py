"""Structured logging: one event per line (console or JSON) on stderr, secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = re.compile(r"(secret|password|token|sign|access_?key|authorization)", re.IGNORECASE)
REDACTED = "**redacted**"


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Blank every value whose key names a secret, wherever a caller put one by mistake."""
    for key in list(event):
        if key != "event" and _SECRET_KEYS.search(key) and event[key] not in (None, ""):
            event[key] = REDACTED
    return event


class _StderrLogger:
    """Writes each rendered event to whatever sys.stderr is at that moment (it may be replaced)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _stderr_logger(*_args: Any) -> _StderrLogger:
    return _StderrLogger()


def configure(level: str = "info", fmt: str = "console") -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            # JSON keeps a traceback inside its one line; the console renderer formats its own
            *([structlog.processors.dict_tracebacks] if fmt == "json" else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
