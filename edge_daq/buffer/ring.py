"""The ring queue: a bounded in-memory log of records with one cursor per reader.

Acquisition appends without ever waiting. Each reader (an output, or later the spool writer) reads batches
at its own pace and commits its cursor only after its destination acknowledged the batch; records every
reader has committed are released at once. When the queue holds ``capacity`` unconsumed records, the oldest
is dropped to make room: counted on the queue, and on each reader that had not delivered it yet.

With a durable spool (``buffer.spool_dir``), the spool writer is the ring's only reader and offers the outputs
the same :class:`BatchSource` interface from disk (``edge_daq.buffer.spool``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Protocol

from edge_daq.buffer.waiter import Waiter
from edge_daq.record import Record

if TYPE_CHECKING:
    from edge_daq.sinks.routing import Route

RECORD_OVERHEAD = 200
"""Bytes of a record and its fields dict before any field (CPython 3.11, measured with tracemalloc)."""
FIELD_OVERHEAD = 60
"""Bytes per field: the dict slot and a number object (a string's characters are added to it)."""


def estimate_bytes(record: Record) -> int:
    """A record's memory, roughly and cheaply: computed once per record, when it enters the ring."""
    fields = record.fields
    size = RECORD_OVERHEAD + FIELD_OVERHEAD * len(fields)
    for value in fields.values():
        if value.__class__ is str:
            size += len(value)
    return size


@dataclass(frozen=True, slots=True)
class Batch:
    records: list[Record]
    end: int
    """The cursor to commit once ``records`` are delivered."""


class BatchSource(Protocol):
    """What an output's delivery runner reads from."""

    name: str

    @property
    def pending(self) -> int:
        """Records available to this reader and not yet committed (read or not)."""
        ...

    @property
    def unread(self) -> int:
        """Records not yet handed out by :meth:`read`: fewer than :attr:`pending` while batches are in flight."""
        ...

    @property
    def lost(self) -> int:
        """Records dropped before this reader could deliver them."""
        ...

    async def wait(self, min_records: int = 1, max_wait: float | None = None) -> bool:
        """Wait until ``min_records`` are unread, ``max_wait`` seconds pass or :meth:`wake` is called.

        Returns whether ``min_records`` are unread.
        """
        ...

    def wake(self) -> None:
        """End the current and every later :meth:`wait` at once (used when draining)."""
        ...

    def read(self, max_records: int) -> Batch:
        """The next records after those already handed out; several batches may be in flight at once."""
        ...

    def commit(self, batch: Batch) -> None:
        """``batch`` and every batch read before it are delivered (batches are committed in the order read)."""
        ...


class RingBuffer:
    def __init__(self, capacity: int, max_bytes: int | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        """Estimated memory of the records held (:func:`estimate_bytes`)."""
        self._records: deque[Record] = deque()
        self._sizes: deque[int] = deque()
        self._first_seq = 0  # sequence number of self._records[0]
        self._readers: list[RingReader] = []
        self.appended = 0
        self.dropped = 0

    @property
    def next_seq(self) -> int:
        return self._first_seq + len(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def reader(self, name: str) -> RingReader:
        """A new reader that starts at the oldest record held."""
        reader = RingReader(self, name, self._first_seq)
        self._readers.append(reader)
        return reader

    def remove_reader(self, reader: RingReader) -> None:
        self._readers.remove(reader)
        self._release()

    def append(self, record: Record) -> None:
        size = estimate_bytes(record)
        if len(self._records) >= self.capacity:
            self._drop_oldest()
        if self.max_bytes is not None:
            while self._records and self.bytes + size > self.max_bytes:
                self._drop_oldest()
        self._records.append(record)
        self._sizes.append(size)
        self.bytes += size
        self.appended += 1
        next_seq = self._first_seq + len(self._records)
        for reader in self._readers:
            route = reader.route
            if route is None:
                reader.waiter.notify(next_seq - reader._next)
            elif route.takes(record):
                taken = reader._taken
                taken.append((next_seq - 1, record))
                if taken[0][0] < self._first_seq:
                    reader._catch_up_routed()  # let go of what the ring dropped: memory stays within its bounds
                reader.waiter.notify(len(taken) - reader._taken_out)
            elif not reader._taken:
                reader.cursor = reader._next = next_seq  # nothing this reader holds back: the ring may release it

    def _drop_oldest(self) -> None:
        self._records.popleft()
        self.bytes -= self._sizes.popleft()
        self._first_seq += 1
        self.dropped += 1

    def extend(self, records: Iterable[Record]) -> None:
        for record in records:
            self.append(record)

    def _slice(self, start_seq: int, count: int) -> list[Record]:
        offset = start_seq - self._first_seq
        return list(islice(self._records, offset, offset + count))

    def _release(self) -> None:
        """Free the records that every reader has committed."""
        if not self._readers:
            return
        oldest_needed = min(reader.cursor for reader in self._readers)
        while self._first_seq < oldest_needed and self._records:
            self._records.popleft()
            self.bytes -= self._sizes.popleft()
            self._first_seq += 1


class RingReader:
    def __init__(self, ring: RingBuffer, name: str, cursor: int) -> None:
        self._ring = ring
        self.name = name
        self.cursor = cursor
        """The first record not committed."""
        self._next = cursor
        """The first record not handed out by :meth:`read` (at or after the cursor)."""
        self.waiter = Waiter()
        self._lost = 0
        self.route: Route | None = None
        """What the output takes (None: everything). A routed reader keeps the records it takes in ``_taken``
        (sequence number, record), so that its counts, reads and cursor see only those."""
        self._taken: deque[tuple[int, Record]] = deque()
        self._taken_out = 0  # of _taken, how many read() handed out

    def set_route(self, route: Route | None) -> None:
        """Take only what ``route`` takes from now on, starting over from the cursor (as :meth:`rewind` does)."""
        self._catch_up()
        self.route = route
        self._taken.clear()
        self._taken_out = 0
        self._next = self.cursor
        if route is not None:
            ring = self._ring
            for seq in range(self.cursor, ring.next_seq):
                record = ring._records[seq - ring._first_seq]
                if route.takes(record):
                    self._taken.append((seq, record))
            self._advance_cursor()

    def _advance_cursor(self) -> None:
        # A routed reader's cursor: its first record taken and not committed; what it skips is as good as committed.
        self.cursor = self._taken[0][0] if self._taken else self._ring.next_seq
        if not self._taken_out:
            self._next = self.cursor

    def _catch_up(self) -> None:
        if self.route is not None:
            self._catch_up_routed()
            return
        # Records this reader never read were dropped by the ring while full.
        first = self._ring._first_seq
        if self.cursor < first:
            self._lost += first - max(self.cursor, min(self._next, first))  # records read before are not lost
            self.cursor = first
            self._next = max(self._next, first)

    def _catch_up_routed(self) -> None:
        taken, first = self._taken, self._ring._first_seq
        if not taken or taken[0][0] >= first:
            return
        while taken and taken[0][0] < first:
            taken.popleft()
            if self._taken_out:
                self._taken_out -= 1  # read before the drop: not lost
            else:
                self._lost += 1
        self._advance_cursor()

    @property
    def pending(self) -> int:
        if self.route is not None:
            self._catch_up_routed()
            return len(self._taken)
        return self._ring.next_seq - max(self.cursor, self._ring._first_seq)

    @property
    def unread(self) -> int:
        if self.route is not None:
            self._catch_up_routed()
            return len(self._taken) - self._taken_out
        return self._ring.next_seq - max(self._next, self._ring._first_seq)

    @property
    def lost(self) -> int:
        self._catch_up()
        return self._lost

    async def wait(self, min_records: int = 1, max_wait: float | None = None) -> bool:
        return await self.waiter.wait(lambda: self.unread, min_records, max_wait)

    def wake(self) -> None:
        self.waiter.wake()

    def oldest_time_ns(self) -> int | None:
        """Acquisition time of the oldest record this reader has not committed, if any."""
        self._catch_up()
        if self.pending == 0:
            return None
        if self.route is not None:
            return self._taken[0][1].time_ns
        return self._ring._records[self.cursor - self._ring._first_seq].time_ns

    def read(self, max_records: int) -> Batch:
        self._catch_up()
        if self.route is not None:
            start = self._taken_out
            chosen = list(islice(self._taken, start, start + max_records))
            self._taken_out += len(chosen)
            if chosen:
                self._next = chosen[-1][0] + 1
            return Batch([record for _, record in chosen], self._next)
        records = self._ring._slice(self._next, max_records)
        self._next += len(records)
        return Batch(records, self._next)

    def commit(self, batch: Batch) -> None:
        if self.route is not None:
            self._catch_up_routed()
            taken = self._taken
            while taken and taken[0][0] < batch.end and self._taken_out:
                taken.popleft()
                self._taken_out -= 1
            self._advance_cursor()
            self._ring._release()
            return
        if batch.end > self.cursor:
            self.cursor = batch.end
            self._ring._release()

    def rewind(self) -> None:
        """Hand out again, from the cursor, the records read and not committed (a write that failed part-way)."""
        self._next = self.cursor
        self._taken_out = 0
