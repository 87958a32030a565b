"""Which records an output takes: its ``records:`` kinds and its ``include:`` / ``exclude:`` filters.

A decision depends only on a record's :class:`~edge_daq.record.Series` (measurement and tags), and series are
shared by every record of an instrument, so a :class:`Route` decides once per series object and then answers
with one dict lookup per record. Readers (``edge_daq.buffer``) call it; outputs never see what they do not take.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from edge_daq.config.types import StrictModel
from edge_daq.record import Record, Series

EVENT_MEASUREMENT = "edge_daq_event"
STATUS_MEASUREMENT = "edge_daq_status"  # the scheduler's status records (edge_daq.scheduling)
RecordKind = Literal["data", "status", "events"]
ALL_KIND_LIST: tuple[RecordKind, ...] = ("data", "events", "status")
ALL_KINDS: frozenset[str] = frozenset(ALL_KIND_LIST)
_CACHE_LIMIT = 65_536  # series objects remembered; beyond it the cache starts over (series are few and shared)


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


_Glob = Annotated[str, Field(min_length=1, max_length=256)]
Globs = Annotated[list[_Glob], BeforeValidator(_one_or_many, json_schema_input_type=_Glob | list[_Glob])]
"""Glob patterns (``*``, ``?``, ``[...]``, matched case-sensitively); a single one may go without brackets."""


class RecordFilter(StrictModel):
    """A record matches when every key given matches (any of a key's patterns will do)."""

    rig: Globs | None = None
    measurement: Globs | None = None
    tags: dict[str, Globs] = Field(default_factory=dict)

    def matches(self, series: Series) -> bool:
        tags = series.tags
        if self.rig is not None and not _any(tags.get("rig"), self.rig):
            return False
        if self.measurement is not None and not _any(series.measurement, self.measurement):
            return False
        return all(_any(tags.get(key), patterns) for key, patterns in self.tags.items())


def _any(value: str | None, patterns: list[str]) -> bool:
    # A record without the tag matches no pattern (not even "*"): it is not from that rig or lot.
    return value is not None and any(fnmatchcase(value, pattern) for pattern in patterns)


def record_kind(series: Series) -> str:
    measurement = series.measurement
    if measurement == EVENT_MEASUREMENT:
        return "events"
    if measurement == STATUS_MEASUREMENT:
        return "status"
    return "data"


class Route:
    """The routing of one output; ``takes`` is the per-record call, a dict lookup once a series was seen."""

    __slots__ = ("_cache", "exclude", "include", "kinds")

    def __init__(
        self,
        *,
        kinds: frozenset[str] = ALL_KINDS,
        include: RecordFilter | None = None,
        exclude: RecordFilter | None = None,
    ) -> None:
        self.kinds = kinds
        self.include = include
        self.exclude = exclude
        # id(series) -> (series, decision): the series is kept so that its id cannot be reused meanwhile.
        self._cache: dict[int, tuple[Series, bool]] = {}

    def decide(self, series: Series) -> bool:
        if record_kind(series) not in self.kinds:
            return False
        if self.include is not None and not self.include.matches(series):
            return False
        return self.exclude is None or not self.exclude.matches(series)

    def takes(self, record: Record) -> bool:
        series = record.series
        cached = self._cache.get(id(series))
        if cached is not None:
            return cached[1]
        decision = self.decide(series)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[id(series)] = (series, decision)
        return decision


def route_of(records: frozenset[str], include: RecordFilter | None, exclude: RecordFilter | None) -> Route | None:
    """The route of an output's settings, or None when it takes every record (readers then skip no work)."""
    if records >= ALL_KINDS and include is None and exclude is None:
        return None
    return Route(kinds=records, include=include, exclude=exclude)


def describe(route: Route | None) -> Mapping[str, object]:
    """For /status: what the output takes."""
    if route is None:
        return {"records": sorted(ALL_KINDS)}
    shown: dict[str, object] = {"records": sorted(route.kinds)}
    for key, chosen in (("include", route.include), ("exclude", route.exclude)):
        if chosen is not None:
            shown[key] = chosen.model_dump(exclude_defaults=True)
    return shown
