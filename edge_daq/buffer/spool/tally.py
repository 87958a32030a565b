"""What a routed output skips among the records the spool wrote, so that its backlog counts only what it takes.

A routed reader learns whether it takes a record only when it reads it back from disk, and an output that is
down reads nothing: without this, an events-only output would show every data record written during its
outage as its backlog. The spool tells each routed reader about every batch it writes (on the event loop,
one cached route decision per record); the reader subtracts the skipped records it has not read yet.

Memory: nothing for a batch the output takes whole, a few integers for one it skips whole, and one byte per
record for a mixed batch (a rig-filtered output), until the output commits past it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_daq.record import Record
    from edge_daq.sinks.routing import Route

_COMPACT_AFTER = 1_024  # entries passed before the lists are compacted


class SkipTally:
    """Skipped records per written batch, for records written since the route was set.

    Records spooled before that (by an earlier run) are not known here: they count in the backlog until read.
    """

    __slots__ = ("_cumulative", "_ends", "_flags", "_head", "_starts", "route")

    def __init__(self, route: Route) -> None:
        self.route = route
        # Parallel lists, one entry per written batch with a skipped record, in spool order:
        self._starts: list[int] = []  # first record's sequence number
        self._ends: list[int] = []  # after the last record
        self._cumulative: list[int] = []  # skipped records in this entry and every one before it
        self._flags: list[bytes | None] = []  # 1 taken / 0 skipped per record; None: all skipped
        self._head = 0  # entries before it were committed past and are no longer consulted

    def note_written(self, first_seq: int, records: Sequence[Record]) -> None:
        if not records:
            return
        flags = bytes(map(self.route.takes, records))
        skipped = len(records) - flags.count(1)
        if skipped == 0:
            return  # taken whole: nothing to subtract
        before = self._cumulative[-1] if self._cumulative else 0
        self._starts.append(first_seq)
        self._ends.append(first_seq + len(records))
        self._cumulative.append(before + skipped)
        self._flags.append(None if skipped == len(records) else flags)

    def skipped_from(self, seq: int) -> int:
        """Skipped records among those numbered ``seq`` and after."""
        ends, head = self._ends, self._head
        first = bisect_right(ends, seq, lo=head)  # the first entry ending after seq
        if first == len(ends):
            return 0
        start = self._starts[first]
        if start >= seq:
            return self._cumulative[-1] - (self._cumulative[first - 1] if first > 0 else 0)
        flags = self._flags[first]
        partial = ends[first] - seq if flags is None else flags[seq - start :].count(0)
        return self._cumulative[-1] - self._cumulative[first] + partial

    def committed(self, seq: int) -> None:
        """The output committed everything before ``seq``: a rewind never goes back past it."""
        ends = self._ends
        head = self._head
        while head < len(ends) and ends[head] <= seq:
            head += 1
        self._head = head
        if head >= _COMPACT_AFTER and head * 2 >= len(ends):
            # Cumulative counts stay absolute; the entry before the new head keeps `skipped_from` exact.
            keep = head - 1
            for column in (self._starts, self._ends, self._cumulative, self._flags):
                del column[:keep]
            self._head = 1

    @property
    def entries(self) -> int:
        return len(self._ends) - self._head
