"""Structured logging: one event per line (console or JSON) on stderr, secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

import structlog

# whole words of a key name (secret_key, mqtt_password, sign), not parts of others (signal, tokens_used)
_SECRET_KEYS = re.compile(
    r"(^|_)(secret|password|passwd|token|sign|signature|access_?key|authorization|credentials?)(_|$)",
    re.IGNORECASE,
)
REDACTED = "**redacted**"
# stdlib loggers that log per run or per request at INFO: WARNING and above unless at debug
QUIET_LIBRARY_LOGGERS = ("apscheduler",)


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


_json_traceback = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stdlib handler writing to whatever sys.stderr is at the moment of each record."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        return


def configure(level: str = "info", fmt: str = "console") -> None:
    """structlog for our events, and the same renderer for the stdlib loggers of the libraries we
    use (APScheduler, paho, urllib3) and for uncaught exceptions in threads: one event per line."""
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
        # JSON keeps a traceback inside its one line (without frame locals: they may hold secrets);
        # the console renderer formats its own
        *([_json_traceback] if fmt == "json" else []),
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    handler = StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    # ours replaces the one an earlier call installed; a host's handlers (pytest's capture) stay
    root.handlers = [h for h in root.handlers if not isinstance(h, StderrHandler)] + [handler]
    root.setLevel(max(numeric_level, logging.INFO))  # libraries' debug chatter stays out
    # APScheduler says "Running job ..." and "... executed successfully" at INFO on every run of
    # every job: only at debug. Its warnings (a run missed, skipped) and errors (a job raised) stay.
    for name in QUIET_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if numeric_level <= logging.DEBUG else logging.WARNING)
    threading.excepthook = _log_thread_exception


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    thread = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    structlog.get_logger("collector").error("thread.crashed", thread=thread, exc_info=exc_info)
