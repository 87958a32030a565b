"""Records, the unit of data: one per instrument poll, like one line of line protocol.

A record does not carry its tags itself: it points at a :class:`Series` (measurement plus tag set) that is
built once per instrument, so a poll allocates one small object and one dict of fields, and the escaped
line-protocol prefix of the series is computed once, not once per record (pipeline benchmark).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

FieldValue = float | int | bool | str


def _escape(text: str, specials: str) -> str:
    text = text.replace("\\", "\\\\")
    for char in specials:
        text = text.replace(char, "\\" + char)
    return text.replace("\n", "\\n")


def escape_measurement(name: str) -> str:
    return _escape(name, ", ")


def escape_key(key: str) -> str:
    """Escape a tag key, a tag value or a field key."""
    return _escape(key, ",= ")


def encode_string_field(value: str) -> str:
    # Inside a quoted string field only quotes and backslashes are escaped; InfluxDB keeps a newline as is
    # but would store an escaped one as a backslash and an "n".
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class Series:
    """A measurement and its tags: what an instrument's records share."""

    measurement: str
    tags: Mapping[str, str]
    line_prefix: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Tags sorted by key, as InfluxDB recommends for write performance; empty tag values are not allowed.
        parts = [escape_measurement(self.measurement)]
        parts.extend(f"{escape_key(k)}={escape_key(v)}" for k, v in sorted(self.tags.items()) if v != "")
        object.__setattr__(self, "line_prefix", ",".join(parts))

    def with_tags(self, extra: Mapping[str, str]) -> Series:
        return Series(self.measurement, {**self.tags, **extra})


@dataclass(slots=True)
class Record:
    """One instrument poll: all the points read in that poll, with the acquisition time in ns."""

    series: Series
    fields: dict[str, FieldValue]
    time_ns: int

    @property
    def measurement(self) -> str:
        return self.series.measurement

    @property
    def tags(self) -> Mapping[str, str]:
        return self.series.tags


_FIELD_PREFIXES: dict[str, str] = {}
_FIELD_PREFIX_LIMIT = 100_000


def _field_prefix(key: str) -> str:
    """``key=`` escaped. Field names come from configs and repeat on every record, so escaping each once saves
    a fifth of the pipeline's CPU (bench/pipeline.py); the cache is bounded all the same."""
    prefix = _FIELD_PREFIXES.get(key)
    if prefix is None:
        prefix = escape_key(key) + "="
        if len(_FIELD_PREFIXES) < _FIELD_PREFIX_LIMIT:
            _FIELD_PREFIXES[key] = prefix
    return prefix


_FLOAT_TEMPLATES: dict[tuple[str, ...], str] = {}
_FLOAT_TEMPLATE_LIMIT = 10_000


def _float_template(keys: tuple[str, ...]) -> str:
    """``k1=%r,k2=%r,...`` for a record of finite floats with these field names, in this order."""
    template = ",".join(_field_prefix(key).replace("%", "%%") + "%r" for key in keys)
    if len(_FLOAT_TEMPLATES) < _FLOAT_TEMPLATE_LIMIT:
        _FLOAT_TEMPLATES[keys] = template
    return template


def encode_fields(fields: Mapping[str, FieldValue]) -> str:
    """The field set of a line; non-finite floats are left out (line protocol cannot carry them)."""
    values = fields.values()
    # Fast path (bench/pipeline.py: encoding is two fifths of the pipeline's CPU): a record of finite floats, the
    # usual scaled readings, is one C-level %-formatting of a template made once per set of field names (an
    # instrument's points), with no Python-level work per field; 26 % less time than joining field by field. A
    # sum of finite floats is finite unless it overflows, and then the general loop below decides value by value.
    if set(map(type, values)) == {float} and math.isfinite(sum(values)):  # type: ignore[arg-type]
        keys = tuple(fields)
        template = _FLOAT_TEMPLATES.get(keys) or _float_template(keys)
        return template % tuple(values)
    parts: list[str] = []
    append = parts.append
    prefixes = _FIELD_PREFIXES
    for key, value in fields.items():
        prefix = prefixes.get(key) or _field_prefix(key)
        # Exact type checks first (the common cases); bool is a subclass of int, so it needs its own branch.
        if type(value) is float:
            if math.isfinite(value):
                append(prefix + repr(value))
        elif type(value) is int:
            append(f"{prefix}{value}i")
        elif type(value) is bool:
            append(prefix + ("true" if value else "false"))
        elif isinstance(value, str):
            append(prefix + encode_string_field(value))
        else:  # an int or float subclass such as numpy's: normalise rather than fail
            number = float(value)
            if math.isfinite(number):
                append(prefix + repr(number))
    return ",".join(parts)


def to_line(record: Record) -> str | None:
    """One line of line protocol (no newline), or None if the record has no field that can be written."""
    encoded = encode_fields(record.fields)
    if not encoded:
        return None
    return f"{record.series.line_prefix} {encoded} {record.time_ns}"


def encode_lines(records: Iterable[Record]) -> list[bytes]:
    """One newline-terminated line per record that has a writable field (outputs split batches by line)."""
    return [(line + "\n").encode() for line in map(to_line, records) if line is not None]


ENCODE_SLICE_FIELDS = 4000
"""Field values :func:`encode_lines_yielding` encodes between two turns of the event loop (1-2 ms here)."""


async def encode_lines_yielding(records: Sequence[Record]) -> list[bytes]:
    """:func:`encode_lines` on the event loop, giving the loop a turn every :data:`ENCODE_SLICE_FIELDS` fields.

    Not in a worker thread: encoding is pure Python and holds the GIL, and the loop thread, which releases it
    at every ``select``, then waits up to a whole switch interval (5 ms) to take it back after each reply. With
    a batch encoding in a thread, bench/pipeline.py saw every link poll only every 5 ms while neither the daemon
    (33 % of a core), influxd nor the simulators were busy. In slices, a poll waits at most one slice.
    """
    lines: list[bytes] = []
    start, total = 0, len(records)
    while start < total:
        end, budget = start, ENCODE_SLICE_FIELDS
        while end < total and budget > 0:
            budget -= len(records[end].fields)
            end += 1
        lines += encode_lines(records[start:end])
        start = end
        if start < total:
            await asyncio.sleep(0)
    return lines


def to_line_protocol(records: Iterable[Record]) -> bytes:
    """A batch as a line-protocol body, one line per record, newline-terminated."""
    lines = [line for line in map(to_line, records) if line is not None]
    if not lines:
        return b""
    return ("\n".join(lines) + "\n").encode()
