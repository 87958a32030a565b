"""What a per-output reducer provides to :class:`~edge_daq.processing.source.ReducedSource`.

A reducer turns the raw records an output reads from the buffer into the records it delivers. Positions are
the source's count of raw records read since it started; each record a reducer emits carries the position up
to which the buffer may be committed once that record is delivered, so nothing the reducer still needs (an
open window) is ever committed, and nothing it emitted is read again unless it was not delivered.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from edge_daq.record import Record
from edge_daq.sinks.routing import EVENT_MEASUREMENT, STATUS_MEASUREMENT

PASSING = frozenset((EVENT_MEASUREMENT, STATUS_MEASUREMENT))
"""Measurements every reducer passes as they are: reliability events and instrument status."""


@dataclass(slots=True)
class Emitted:
    record: Record
    commit: int
    """The raw position the buffer may be committed up to once this record is delivered."""
    floor: int | None = None
    """Aggregation: windows starting before this (ns) are emitted once this record is delivered."""


class Reducer(ABC):
    floor: int | None = None
    late: int = 0
    """Records that came after the window they belong to was emitted (aggregation), not counted in it."""

    @abstractmethod
    def feed(self, records: Sequence[Record], start: int, out: list[Emitted]) -> None:
        """Take ``records``, the first at raw position ``start``; append what is ready to ``out``."""

    def close_due(self, now_ns: int, position: int, out: list[Emitted]) -> None:  # noqa: B027 - optional hook
        """Everything buffered was read up to ``position`` and the clock reads ``now_ns``: emit what is due."""

    def deadline_ns(self) -> int | None:
        """When :meth:`close_due` has something to do (wall-clock ns), or None."""
        return None

    def hold(self) -> int | None:
        """The first raw position still needed, or None if nothing read is held back."""
        return None

    @abstractmethod
    def reset(self, floor: int | None) -> None:
        """Forget everything read: the source reads again from its last commit, after which ``floor`` held."""
