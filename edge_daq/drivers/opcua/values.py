"""OPC UA values as record fields: status codes, variants and timestamps (imports asyncua)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from asyncua import ua

from edge_daq.drivers.opcua.config import OpcUaPoint
from edge_daq.record import FieldValue

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_CONTROL_CHARACTERS = dict.fromkeys([*range(0x20), 0x7F])
"""Removed from str values (a terminal, a log line or a CSV would act on them)."""


def status_text(code: ua.StatusCode) -> str:
    """``BadSensorFailure (0x808B0000)``: the name people search for, and the number in case it has none."""
    try:
        name = code.name
    except Exception:  # an unknown code: asyncua has no name for it
        name = "unknown status"
    return f"{name} (0x{code.value:08X})"


def timestamp_ns(stamp: datetime | None, picoseconds: int | None = None) -> int | None:
    """A DataValue's timestamp in ns since the epoch; None when the server gave none (or OPC UA's minimum, 1601)."""
    if stamp is None:
        return None
    if stamp.tzinfo is None:  # OPC UA times are UTC
        stamp = stamp.replace(tzinfo=UTC)
    delta = stamp - _EPOCH
    if delta.days < 0:
        return None
    # Integer arithmetic: a float of seconds since 1970 has only about 0.2 us of resolution left.
    ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    if picoseconds:
        ns += min(picoseconds, 999_999) // 1_000
    return ns


def field_value(point: OpcUaPoint, variant: ua.Variant | None) -> FieldValue:
    """The value of a node with Good status as the point's field type; ValueError (the reason) if it does not fit."""
    value = variant.Value if variant is not None else None
    if value is None:
        raise ValueError("the server sent no value")
    kind = variant.VariantType.name if variant is not None else "?"
    if isinstance(value, list | tuple) or (variant is not None and variant.is_array):
        raise ValueError(f"an array of {kind} (a point reads one value)")
    if point.type == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(f"{kind}, not a Boolean (type: bool)")
    if point.type == "str":
        if isinstance(value, ua.LocalizedText):
            value = value.Text or ""
        if not isinstance(value, str):
            raise ValueError(f"{kind}, not a String (type: str)")
        text = value.translate(_CONTROL_CHARACTERS).strip()
        if len(text) > point.max_length:
            raise ValueError(f"{len(text)} characters, over max_length ({point.max_length})")
        return text
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{kind}, not a number (type: {point.type})")
    if point.type == "int" and not isinstance(value, int):
        raise ValueError(f"{kind}, not an integer (type: int; type: float takes it)")
    if point.is_scaled or point.type == "float":
        number = float(value) * (1.0 if point.scale is None else point.scale) + (point.offset or 0.0)
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not a finite number")
        return number
    assert isinstance(value, int)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError("not an integer of 64 bits (the integer fields of line protocol)")
    return value
