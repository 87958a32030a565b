"""What the spool's parts share: positions, the in-memory view of a segment, loss reasons."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from edge_daq.record import Series
from edge_daq.stats import SpoolStats

_OFFSET_BITS = 40  # Batch.end packs (segment id, offset) into one ordered int


class Position(NamedTuple):
    """A place in the spool: the segment, the byte offset in it, and the record's number."""

    segment: int
    offset: int
    in_segment: int
    """Records before this position in its segment."""
    seq: int
    """Records held before this position (numbered afresh at each start, without gaps)."""

    @property
    def packed(self) -> int:
        return (self.segment << _OFFSET_BITS) | self.offset


@dataclass(slots=True)
class Segment:
    """What the spool keeps in memory about one segment file."""

    id: int
    path: Path
    size: int
    records: int
    """Records the segment held when written (damaged ones included: they are counted when passed)."""
    first_seq: int
    sealed: bool
    newest_monotonic: float
    """Monotonic time of its newest record (for the age cap)."""
    data_start: int
    """Offset of its first frame."""
    base: int | None = None
    """Spool-wide number of its first record, kept on disk (None for a segment of format version 1)."""
    version: int = 2
    first_time_ns: int = 0
    last_time_ns: int = 0
    checked_upto: int = 0
    """Damage before this offset was already counted in the spool's totals."""
    missing_before: int = 0
    """Records of segments missing between the previous segment held and this one (found at start)."""

    @property
    def start(self) -> Position:
        return Position(self.id, self.data_start, 0, self.first_seq)

    @property
    def end_seq(self) -> int:
        return self.first_seq + self.records

    @property
    def end_base(self) -> int | None:
        return None if self.base is None else self.base + self.records


class SegmentIndex(Protocol):
    """What a reader needs from the spool."""

    stats: SpoolStats

    @property
    def end_seq(self) -> int: ...

    def segment(self, segment_id: int) -> Segment | None: ...

    def segment_after(self, segment_id: int) -> Segment | None: ...

    def bytes_from(self, position: Position) -> int: ...

    def intern(self, measurement: str, tags: dict[str, str]) -> Series: ...

    def wall_ns(self) -> int: ...
