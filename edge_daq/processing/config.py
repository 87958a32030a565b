"""The per-output reduction keys of ``outputs:``: ``deadband:`` (report by exception) and ``aggregate:``.

Sample (gateway file)::

    outputs:
      lab: {type: influxdb, url: http://127.0.0.1:8086, api: v1, database: raw}   # every poll
      cloud:
        type: influxdb
        url: https://cloud.example/ ...
        aggregate: {every: 1m, stats: [mean, min, max, count, last]}            # temp_pv_mean, ...
      site-mqtt:
        type: mqtt
        deadband:
          abs: 0.05                      # any numeric field: sent once it moved more than 0.05 from the last sent
          heartbeat: 5m                  # and at least every 5 minutes, changed or not
          fields: {"temp_*": {abs: 0.2}, i: {rel: 0.01}}
          measurements: {"chamber*": {abs: 0.5}}
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from edge_daq.config.types import StrictModel
from edge_daq.config.units import Duration

Stat = Literal["mean", "min", "max", "count", "sum", "first", "last", "stdev"]
DEFAULT_STATS: tuple[Stat, ...] = ("mean", "min", "max", "count", "last")
Glob = str


class Threshold(StrictModel):
    """A change is reported once it exceeds ``abs`` (in the field's unit) or ``rel`` (a fraction of the last
    value sent); neither: every change is reported."""

    abs: float | None = Field(default=None, ge=0)
    rel: float | None = Field(default=None, ge=0, le=1000)

    @model_validator(mode="after")
    def _one(self) -> Self:
        if self.abs is not None and self.rel is not None:
            raise ValueError("give abs or rel, not both")
        return self


class DeadbandConfig(Threshold):
    """Report by exception: a numeric field is sent when it moved past its threshold since the value last
    sent, a boolean or string field on every change, and every field at least once per ``heartbeat``.

    The threshold of a field: the first glob of ``fields`` that matches its name, else the first of
    ``measurements`` that matches its record's measurement, else ``abs``/``rel`` here, else every change.
    Event and status records always pass.
    """

    heartbeat: Duration = Field(default=300.0, gt=0)
    fields: dict[Glob, Threshold] = Field(default_factory=dict, max_length=1000)
    measurements: dict[Glob, Threshold] = Field(default_factory=dict, max_length=1000)


class AggregateConfig(StrictModel):
    """Downsampling: statistics of every numeric field over wall-clock aligned windows of ``every``.

    A window ``[start, start + every)`` is emitted once a record at least ``grace`` past its end was read from
    the buffer, or once the clock is ``grace`` past its end and every record buffered so far was read: one record
    per series, at the window's start, with fields ``<field>_<stat>`` (in the measurement plus
    ``measurement_suffix``, if given). Records that arrive after their window was emitted are counted as late.
    Event and status records pass as they are.
    """

    every: Duration = Field(ge=0.1, le=86400.0)
    stats: list[Stat] = Field(default_factory=lambda: list(DEFAULT_STATS), min_length=1, max_length=8)
    grace: Duration = Field(default=2.0, ge=0.0, le=3600.0)
    measurement_suffix: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        if len(set(self.stats)) != len(self.stats):
            raise ValueError("a statistic is listed twice")
        if (self.every * 1000) % 1 > 1e-6:
            raise ValueError("every is a whole number of milliseconds")
        return self
