"""Durations and sizes as technicians write them: ``250ms``, ``2s``, ``1m``, ``12h``; ``512KiB``, ``2GiB``.

Every duration and size is finite and bounded, so that no value that loads can crash or hang the daemon:
a duration is at most 100 years (nanosecond timestamps stay within 64 bits), a size at most 1 PiB. Keys
that a zero or a huge value would break use the narrower types below (:data:`Interval`, :data:`Timeout`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(B|KiB|MiB|GiB|TiB|kB|KB|MB|GB|TB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
}

MAX_DURATION = 100 * 365 * 86400.0
"""Seconds: 100 years."""
MAX_SIZE = 1 << 50
"""Bytes: 1 PiB."""

MIN_INTERVAL, MAX_INTERVAL = 0.001, 86400.0
"""An instrument's poll interval: from 1 ms to 1 day."""
MIN_TIMEOUT, MAX_TIMEOUT = 0.001, 3600.0
"""A timeout (an instrument's reply, an output's request): from 1 ms to 1 hour."""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else repr(f"{str(value)[:36]}...")


def parse_duration(value: object) -> float:
    """Seconds as a float, from a bare number of seconds or a number with a unit (ms, s, m, h, d)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 250ms, 2s, 1m or 12h")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match[1]) * _DURATION_UNITS[match[2]]
    else:
        raise ValueError(f"expected a duration such as 250ms, 2s, 1m or 12h, got {_shown(value)}")
    if math.isnan(seconds):
        raise ValueError("a duration must be a number, not NaN")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_DURATION:
        raise ValueError(f"a duration must be finite and at most 100 years, got {_shown(value)}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes, from a bare number of bytes or a number with a unit (KiB, MiB, GiB, TiB, kB, MB, GB, TB)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512KiB, 64MiB or 2GiB")
    if isinstance(value, int):
        size: float = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        size = float(match[1]) * _SIZE_UNITS[match[2]]  # inf for an absurdly long number: refused below
    else:
        raise ValueError(f"expected a size such as 512KiB, 64MiB or 2GiB, got {_shown(value)}")
    if size < 0:
        raise ValueError("a size cannot be negative")
    if size > MAX_SIZE:
        raise ValueError(f"a size must be at most 1PiB, got {_shown(value)}")
    return int(size)


def _seconds(seconds: float) -> str:
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


def _between(what: str, low: float, high: float, low_text: str, high_text: str) -> Callable[[float], float]:
    def check(seconds: float) -> float:
        if not low <= seconds <= high:
            raise ValueError(f"{what} must be from {low_text} to {high_text}, got {_seconds(seconds)}")
        return seconds

    return check


# What the JSON Schemas (edge_daq.config.schema) say a technician may write: a number, or text with a unit.
DURATION_TEXT = Annotated[str, Field(pattern=_DURATION.pattern)]
SIZE_TEXT = Annotated[str, Field(pattern=_SIZE.pattern)]

Duration = Annotated[
    float, BeforeValidator(parse_duration, json_schema_input_type=Annotated[float, Field(ge=0)] | DURATION_TEXT)
]
"""A duration in seconds: finite, from 0 to 100 years."""

Size = Annotated[int, BeforeValidator(parse_size, json_schema_input_type=Annotated[int, Field(ge=0)] | SIZE_TEXT)]
"""A size in bytes: from 0 to 1 PiB."""

Interval = Annotated[Duration, AfterValidator(_between("an interval", MIN_INTERVAL, MAX_INTERVAL, "1ms", "1d"))]
"""A poll interval: from 1 ms to 1 day, so that every instrument can be scheduled."""

Timeout = Annotated[Duration, AfterValidator(_between("a timeout", MIN_TIMEOUT, MAX_TIMEOUT, "1ms", "1h"))]
"""A timeout: from 1 ms to 1 hour (zero would mean no timeout to some clients, so it is refused)."""
