"""Downsampling: statistics of each numeric field over wall-clock aligned windows, from the buffer.

A window is emitted once it is closed (see :class:`~edge_daq.processing.config.AggregateConfig`), as one record
per series at the window's start. The buffer is committed only up to the first record of the oldest window still
open, and the end of the newest window emitted (the *floor*) is saved beside the output's cursor before the
cursor moves (:mod:`edge_daq.processing.source`). After a crash or a restart the output reads again from its
cursor: windows before the floor are not emitted again, and the window the cursor is in is computed again from
the same records, to the same record (a rewrite of the same point in InfluxDB). So an outage or a SIGKILL
neither creates, doubles nor loses a window.

Per record the cost is one tuple of its values appended to a list; every ``FOLD_ROWS`` rows (and at the close)
the rows are folded into the statistics column by column with the C built-ins (``min``, ``max``, ``sum``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from edge_daq.processing.base import PASSING, Emitted, Reducer
from edge_daq.processing.config import AggregateConfig
from edge_daq.record import FieldValue, Record, Series

FOLD_ROWS = 256


@dataclass(slots=True)
class _Stats:
    """Of one field in one window: count, sum, min, max, first, last, and the sum of squared deviations."""

    count: int
    total: float
    low: float
    high: float
    first: float
    last: float
    m2: float

    def merge(self, other: _Stats) -> None:
        if other.count == 0:
            return
        n, m = self.count, other.count
        delta = other.total / m - self.total / n
        self.m2 += other.m2 + delta * delta * n * m / (n + m)
        self.count, self.total = n + m, self.total + other.total
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)
        self.last = other.last


@dataclass(slots=True)
class _SeriesWindow:
    series: Series
    keys: tuple[str, ...] = ()
    """The field names of the rows (a record with other fields folds the rows first: first/last keep order)."""
    rows: list[tuple[FieldValue, ...]] = field(default_factory=list)
    stats: dict[str, _Stats] = field(default_factory=dict)

    def fold(self, with_m2: bool) -> None:
        if not self.rows:
            return
        for key, column in zip(self.keys, zip(*self.rows, strict=True), strict=True):
            folded = _fold(column, with_m2)
            if folded is None:
                continue
            known = self.stats.get(key)
            if known is None:
                self.stats[key] = folded
            else:
                known.merge(folded)
        self.rows.clear()


def _fold(column: tuple[FieldValue, ...], with_m2: bool) -> _Stats | None:
    values: Sequence[float]
    if set(map(type, column)) == {float}:
        values = cast("tuple[float, ...]", column)
    else:  # ints count as numbers; booleans and strings are not aggregated
        values = [float(v) for v in column if (type(v) is float or type(v) is int) and math.isfinite(v)]
    total = sum(values)
    if not math.isfinite(total):  # a NaN, an infinity (or an overflow): value by value
        values = [v for v in values if math.isfinite(v)]
        total = math.fsum(values)
    if not values:
        return None
    count = len(values)
    m2 = 0.0
    if with_m2 and count > 1:
        mean = total / count
        deviations = [v - mean for v in values]
        m2 = math.fsum(map(operator.mul, deviations, deviations))
    return _Stats(count, total, min(values), max(values), values[0], values[-1], m2)


@dataclass(slots=True)
class _Window:
    first_position: int
    series: dict[str, _SeriesWindow] = field(default_factory=dict)


class Aggregate(Reducer):
    def __init__(self, config: AggregateConfig, floor: int | None = None) -> None:
        self.config = config
        self.every_ns = round(config.every * 1e9)
        self.grace_ns = round(config.grace * 1e9)
        self.floor = floor
        self.stats = tuple(config.stats)
        self._with_m2 = "stdev" in self.stats
        self._windows: dict[int, _Window] = {}
        self._next_close: int | None = None  # the end (plus grace) of the oldest open window
        self._names: dict[str, tuple[str, ...]] = {}
        self._renamed: dict[str, Series] = {}

    def reset(self, floor: int | None) -> None:
        self.floor = floor
        self._windows.clear()
        self._next_close = None

    def hold(self) -> int | None:
        return min((window.first_position for window in self._windows.values()), default=None)

    def deadline_ns(self) -> int | None:
        return self._next_close

    def feed(self, records: Sequence[Record], start: int, out: list[Emitted]) -> None:
        every, windows = self.every_ns, self._windows
        for position, record in enumerate(records, start=start):
            series = record.series
            if series.measurement in PASSING:
                out.append(Emitted(record, self._commit_point(position + 1), self.floor))
                continue
            now = record.time_ns
            if self._next_close is not None and now >= self._next_close:
                self._close(now, position, out)
            window_start = now - now % every
            floor = self.floor
            if floor is not None and window_start < floor:
                self.late += 1
                continue
            window = windows.get(window_start)
            if window is None:
                window = windows[window_start] = _Window(position)
                close = window_start + every + self.grace_ns
                if self._next_close is None or close < self._next_close:
                    self._next_close = close
            one = window.series.get(series.line_prefix)
            if one is None:
                one = window.series[series.line_prefix] = _SeriesWindow(series)
            fields = record.fields
            keys = tuple(fields)
            if keys != one.keys:
                one.fold(self._with_m2)
                one.keys = keys
            rows = one.rows
            rows.append(tuple(fields.values()))
            if len(rows) >= FOLD_ROWS:
                one.fold(self._with_m2)

    def close_due(self, now_ns: int, position: int, out: list[Emitted]) -> None:
        if self._next_close is not None and now_ns >= self._next_close:
            self._close(now_ns, position, out)

    def _commit_point(self, position: int) -> int:
        held = self.hold()
        return position if held is None else min(held, position)

    def _close(self, now: int, position: int, out: list[Emitted]) -> None:
        """Emit every window whose end plus grace is at or before ``now``; ``position`` is the first record
        not taken into any window yet."""
        every, grace = self.every_ns, self.grace_ns
        due = sorted(start for start in self._windows if start + every + grace <= now)
        for start in due:
            # Until its last record is delivered, a window is still needed: its other records commit nothing
            # past its first record and leave the floor before it (a batch may end inside a window).
            partial_commit, partial_floor = self._commit_point(position), self.floor
            window = self._windows.pop(start)
            records = [record for one in window.series.values() if (record := self._record(one, start)) is not None]
            self.floor = start + every
            commit = self._commit_point(position)
            for record in records[:-1]:
                out.append(Emitted(record, partial_commit, partial_floor))
            if records:
                out.append(Emitted(records[-1], commit, self.floor))
        self._next_close = min((start + every + grace for start in self._windows), default=None)

    def _record(self, one: _SeriesWindow, start: int) -> Record | None:
        one.fold(self._with_m2)
        fields: dict[str, FieldValue] = {}
        for key, stats in one.stats.items():
            names = self._names.get(key)
            if names is None:
                names = self._names[key] = tuple(f"{key}_{stat}" for stat in self.stats)
            for name, stat in zip(names, self.stats, strict=True):
                fields[name] = _value(stats, stat)
        if not fields:
            return None
        return Record(self._series(one.series), fields, start)

    def _series(self, series: Series) -> Series:
        suffix = self.config.measurement_suffix
        if suffix is None:
            return series
        renamed = self._renamed.get(series.line_prefix)
        if renamed is None:
            renamed = self._renamed[series.line_prefix] = Series(series.measurement + suffix, series.tags)
        return renamed


def _value(stats: _Stats, stat: str) -> FieldValue:
    if stat == "mean":
        return stats.total / stats.count
    if stat == "min":
        return stats.low
    if stat == "max":
        return stats.high
    if stat == "count":
        return stats.count
    if stat == "sum":
        return stats.total
    if stat == "first":
        return stats.first
    if stat == "last":
        return stats.last
    # stdev: the sample standard deviation (n - 1), 0 for a single value
    return math.sqrt(stats.m2 / (stats.count - 1)) if stats.count > 1 else 0.0
