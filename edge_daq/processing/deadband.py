"""Report by exception: a field is sent when it changed past its deadband, or when its heartbeat is due.

The state is the value last sent and when, per series and field, judged in record time (the acquisition time),
so what is sent follows from the records alone: a replay after a restart sends the first value of each field
again, then the same rule. Non-finite numbers are never sent (no output can write them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fnmatch import fnmatchcase
from operator import le, sub

from edge_daq.processing.base import PASSING, Emitted, Reducer
from edge_daq.processing.config import DeadbandConfig, Threshold
from edge_daq.record import FieldValue, Record

_STATE_LIMIT = 100_000  # series remembered; beyond it the state starts over (a first value is always sent)
_EVERY_CHANGE = (0.0, 0.0)


class _State:
    """One series: the fields' names, and per field the value last sent, when, and the band around it."""

    __slots__ = ("at", "keys", "last", "limits", "newest", "oldest", "sent")

    def __init__(self) -> None:
        self.keys: tuple[str, ...] = ()
        self.last: list[FieldValue | None] = []
        self.at: list[int] = []
        self.limits: list[float] = []
        self.oldest = self.newest = 0
        self.sent: tuple[FieldValue | None, ...] = ()  # ``last`` as a tuple


class Deadband(Reducer):
    def __init__(self, config: DeadbandConfig) -> None:
        self.config = config
        self.heartbeat_ns = round(config.heartbeat * 1e9)
        self._default = _threshold(config)
        self._state: dict[str, _State] = {}  # by line prefix (measurement and tags)
        self._thresholds: dict[tuple[str, str], tuple[float, float]] = {}

    def reset(self, floor: int | None) -> None:
        self._state.clear()

    def threshold(self, measurement: str, field: str) -> tuple[float, float]:
        """``(abs, rel)`` for a field: the first matching glob of ``fields``, then of ``measurements``."""
        key = (measurement, field)
        found = self._thresholds.get(key)
        if found is None:
            found = self._default
            for pattern, chosen in self.config.fields.items():
                if fnmatchcase(field, pattern):
                    found = _threshold(chosen)
                    break
            else:
                for pattern, chosen in self.config.measurements.items():
                    if fnmatchcase(measurement, pattern):
                        found = _threshold(chosen)
                        break
            if len(self._thresholds) < _STATE_LIMIT:
                self._thresholds[key] = found
        return found

    def feed(self, records: Sequence[Record], start: int, out: list[Emitted]) -> None:
        heartbeat = self.heartbeat_ns
        states = self._state
        for offset, record in enumerate(records, start=start + 1):
            series = record.series
            if series.measurement in PASSING:
                out.append(Emitted(record, offset))
                continue
            state = states.get(series.line_prefix)
            if state is None:
                if len(states) >= _STATE_LIMIT:
                    states.clear()
                state = states[series.line_prefix] = _State()
            now, fields = record.time_ns, record.fields
            values = tuple(fields.values())
            if state.keys == tuple(fields):
                # Fast path (bench/pipeline.py): nothing moved past its band and no heartbeat is due, checked
                # field by field in C. A string makes the subtraction fail; a NaN fails the comparison: either
                # goes the slow way, as does anything that must be sent.
                if 0 <= now - state.oldest < heartbeat and now >= state.newest:
                    if values == state.sent:
                        continue  # unchanged since the last send: one tuple comparison
                    try:
                        if all(map(le, map(abs, map(sub, values, state.last)), state.limits)):
                            continue
                    except TypeError:
                        pass
            else:
                self._rekey(state, tuple(fields))
            sent = self._judge(series.measurement, state, values, now)
            if sent is not None:
                out.append(Emitted(Record(series, sent, now), offset))

    def _rekey(self, state: _State, keys: tuple[str, ...]) -> None:
        """A record with other fields than the last one (a point that failed): the state follows its fields."""
        known = {
            key: (value, at, limit)
            for key, value, at, limit in zip(state.keys, state.last, state.at, state.limits, strict=True)
        }
        state.keys = keys
        state.last, state.at, state.limits = [], [], []
        for key in keys:
            value, at, limit = known.get(key, (None, 0, 0.0))
            state.last.append(value)
            state.at.append(at)
            state.limits.append(limit)
        state.sent = tuple(state.last)

    def _judge(
        self, measurement: str, state: _State, values: tuple[FieldValue, ...], now: int
    ) -> dict[str, FieldValue] | None:
        heartbeat = self.heartbeat_ns
        sent: dict[str, FieldValue] | None = None
        last, at, limits = state.last, state.at, state.limits
        for index, (key, value) in enumerate(zip(state.keys, values, strict=True)):
            previous = last[index]
            kind = type(value)
            numeric = kind is float or kind is int
            if numeric and not math.isfinite(value):  # type: ignore[arg-type]
                continue
            if previous is not None and 0 <= now - at[index] < heartbeat:
                if not numeric or type(previous) is not kind:
                    if value == previous and type(previous) is kind:
                        continue  # a boolean, a string: every change
                elif abs(value - previous) <= limits[index]:  # type: ignore[operator]
                    continue  # within the band (with no threshold: unchanged)
            last[index], at[index] = value, now
            if numeric:
                band, relative = self._thresholds.get((measurement, key)) or self.threshold(measurement, key)
                limits[index] = band + relative * abs(value)  # type: ignore[arg-type]
            else:
                limits[index] = 0.0
            if sent is None:
                sent = {}
            sent[key] = value
        if sent is not None:
            state.oldest, state.newest, state.sent = min(at), max(at), tuple(last)
        return sent


def _threshold(chosen: Threshold) -> tuple[float, float]:
    if chosen.abs is None and chosen.rel is None:
        return _EVERY_CHANGE
    return (chosen.abs or 0.0, chosen.rel or 0.0)
