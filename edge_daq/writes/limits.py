"""The ``write:`` key of a point: what may be written to it, and the checks a write passes before the wire.

Sample (rig file)::

    points:
      - {name: temp_sp, table: holding, address: 300, type: int16, scale: 0.1,
         write: {min: -70, max: 180, step: 0.5, max_rate: 6}}

- ``min``/``max``: the engineering values (after ``scale``/``offset``) a write may set, inclusive.
- ``step``: a written value must be ``min`` plus a whole number of steps (0.5 degC, 1 for an enable).
- ``max_rate``: at most this many writes per minute to the point (a sliding minute); a script stuck in a loop
  is refused instead of hammering the instrument.
- ``tolerance``: how far the read-back may differ from the written value and still confirm it (default:
  half the point's resolution, ``scale / 2``, or a relative 1e-6 for floating points).
- ``multiple``: send FC15/FC16 (write multiple) even for one coil or register, for devices without FC05/FC06.

This module is config only (pydantic and edge_daq.config.types), so ``edge-daq check`` loads it cheaply.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

from pydantic import Field, model_validator

from edge_daq.config.types import StrictModel

RATE_WINDOW_S = 60.0


class WriteLimits(StrictModel):
    min: float
    max: float
    step: float | None = Field(default=None, gt=0)
    max_rate: float | None = Field(default=None, gt=0, description="writes per minute")
    tolerance: float | None = Field(default=None, ge=0)
    multiple: bool = False

    @model_validator(mode="after")
    def _check_order(self) -> WriteLimits:
        if self.min > self.max:
            raise ValueError(f"write.min {self.min:g} is above write.max {self.max:g}")
        return self

    def refusal(self, value: float) -> str | None:
        """Why ``value`` may not be written (None: it may), from the limits alone."""
        if not math.isfinite(value):
            return f"{value} is not a finite number"
        if not self.min <= value <= self.max:
            return f"{value:g} is outside the write limits {self.min:g}..{self.max:g}"
        if self.step is not None:
            steps = (value - self.min) / self.step
            if abs(steps - round(steps)) > 1e-6:
                return f"{value:g} is not {self.min:g} plus a multiple of the step {self.step:g}"
        return None


class RateWindow:
    """The times of a point's recent writes, to enforce ``max_rate`` per sliding minute."""

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def refusal(self, limits: WriteLimits, now: float) -> str | None:
        if limits.max_rate is None:
            return None
        while self._times and now - self._times[0] >= RATE_WINDOW_S:
            self._times.popleft()
        if len(self._times) + 1 > limits.max_rate:
            return f"more than {limits.max_rate:g} writes per minute to this point (write.max_rate)"
        return None

    def record(self, now: float) -> None:
        self._times.append(now)


def range_issue(limits: WriteLimits, low: float, high: float, what: str) -> str | None:
    """Why ``limits`` reach outside the engineering range ``low..high`` of a point's type (None: they fit)."""
    for key, value in (("min", limits.min), ("max", limits.max)):
        if not low <= value <= high:
            return f"write.{key} {value:g} is outside the range of {what} ({low:g}..{high:g})"
    return None


def engineering_range(raw: Sequence[float], scale: float | None, offset: float | None) -> tuple[float, float]:
    """The engineering values of the raw range ``raw`` (low, high) through ``value = raw * scale + offset``."""
    a, b = (r * (1.0 if scale is None else scale) + (offset or 0.0) for r in raw)
    return (min(a, b), max(a, b))
