"""structlog set-up: key-value events, JSON lines when not on a terminal (journald), readable otherwise."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: int = logging.INFO, stream=None) -> None:
    """Route structlog (and the stdlib loggers of our libraries) to ``stream``."""
    stream = stream or sys.stderr
    renderer = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if stream.isatty()
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    # pydbus and watchdog log through the standard library; keep them in the same stream.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # pydbus logs every exception a method raises with its traceback; pgod's dbus_errors
    # boundary already logs them, expected ones briefly, so silence the duplicate.
    logging.getLogger("pydbus.registration").setLevel(logging.CRITICAL)
