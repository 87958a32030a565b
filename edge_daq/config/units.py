"""Durations and sizes as technicians write them: ``250ms``, ``2s``, ``1m``, ``12h``; ``512KiB``, ``2GiB``."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

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


def parse_duration(value: object) -> float:
    """Seconds as a float, from a bare number of seconds or a number with a unit (ms, s, m, h, d)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 250ms, 2s, 1m or 12h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match[1]) * _DURATION_UNITS[match[2]]
    else:
        raise ValueError(f"expected a duration such as 250ms, 2s, 1m or 12h, got {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: object) -> int:
    """Bytes, from a bare number of bytes or a number with a unit (KiB, MiB, GiB, TiB, kB, MB, GB, TB)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512KiB, 64MiB or 2GiB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        size = int(float(match[1]) * _SIZE_UNITS[match[2]])
    else:
        raise ValueError(f"expected a size such as 512KiB, 64MiB or 2GiB, got {value!r}")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A duration in seconds."""

Size = Annotated[int, BeforeValidator(parse_size)]
"""A size in bytes."""
