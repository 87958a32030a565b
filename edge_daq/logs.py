"""structlog set-up: JSON lines for journald and files, readable colour on a terminal.

Libraries log through the standard library (aiohttp, asyncio, paho); their records go through the same
renderer, so every line the daemon writes is JSON, and a library's exception becomes one ``error`` field
(type, message, innermost frame) instead of a multi-line traceback.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from edge_daq.sinks.secrets import scrub_credentials

SECRET_KEYS = frozenset({"token", "password", "secret", "authorization", "api_key"})
_ERROR_CHARS = 300


def redact_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: a value logged under a secret-looking key is never written out."""
    for key in event:
        if key.lower() in SECRET_KEYS:
            event[key] = "***"
    return event


def scrub_credential_values(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Anything that looks like a credential (``Bearer x``, ``Authorization: x``, ``p=x``) in a logged text."""
    for key, value in event.items():
        if isinstance(value, str):  # the event too: a library's message may quote a URL or a header
            event[key] = scrub_credentials(value)
    return event


def summarize_exc_info(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A library record's exception as one short ``error`` field: no traceback in the log."""
    exc_info = event.pop("exc_info", None)
    if isinstance(exc_info, tuple) and len(exc_info) == 3 and isinstance(exc_info[1], BaseException):
        error = exc_info[1]
        frames = traceback.extract_tb(error.__traceback__)
        where = f" ({frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
        event.setdefault("error", f"{type(error).__name__}: {error}"[:_ERROR_CHARS] + where)
    return event


class _LibraryHandler(logging.StreamHandler[TextIO]):
    """The root handler :func:`configure_logging` installs (and replaces when called again)."""


def configure_logging(level: str = "info", *, stream: TextIO | None = None, json: bool | None = None) -> None:
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=True)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            scrub_credential_values,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries' records: kept out of the daemon's output unless debugging, and in the same JSON when they show.
    handler = _LibraryHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                summarize_exc_info,
                redact_secrets,
                scrub_credential_values,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for previous in root.handlers[:]:
        if isinstance(previous, _LibraryHandler):  # ours from an earlier call; others' (pytest's) stay
            root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if level == "debug" else logging.ERROR)
