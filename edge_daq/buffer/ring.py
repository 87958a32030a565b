"""The ring queue: a bounded in-memory log of records with one cursor per reader.

Acquisition appends without ever waiting. Each reader (an output, or later the spool writer) reads batches
at its own pace and commits its cursor only after its destination acknowledged the batch; records every
reader has committed are released at once. When the queue holds ``capacity`` unconsumed records, the oldest
is dropped to make room: counted on the queue, and on each reader that had not delivered it yet.

With a durable spool (``buffer.spool_dir``), the spool writer is the ring's only reader and offers the outputs
the same :class:`BatchSource` interface from disk (``edge_daq.buffer.spool``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

from edge_daq.record import Record


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
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._records: deque[Record] = deque()
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
        if len(self._records) >= self.capacity:
            self._records.popleft()
            self._first_seq += 1
            self.dropped += 1
        self._records.append(record)
        self.appended += 1
        # Wake a reader only once the batch it waits for is complete: one wake-up per batch, not per record.
        next_seq = self._first_seq + len(self._records)
        for reader in self._readers:
            if next_seq - reader._next >= reader.wanted:
                reader.data_ready.set()

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
            self._first_seq += 1


class RingReader:
    def __init__(self, ring: RingBuffer, name: str, cursor: int) -> None:
        self._ring = ring
        self.name = name
        self.cursor = cursor
        """The first record not committed."""
        self._next = cursor
        """The first record not handed out by :meth:`read` (at or after the cursor)."""
        self.data_ready = asyncio.Event()
        self.wanted = 1
        self._woken = False
        self._lost = 0

    def _catch_up(self) -> None:
        # Records this reader never read were dropped by the ring while full.
        first = self._ring._first_seq
        if self.cursor < first:
            self._lost += first - max(self.cursor, min(self._next, first))  # records read before are not lost
            self.cursor = first
            self._next = max(self._next, first)

    @property
    def pending(self) -> int:
        return self._ring.next_seq - max(self.cursor, self._ring._first_seq)

    @property
    def unread(self) -> int:
        return self._ring.next_seq - max(self._next, self._ring._first_seq)

    @property
    def lost(self) -> int:
        self._catch_up()
        return self._lost

    async def wait(self, min_records: int = 1, max_wait: float | None = None) -> bool:
        deadline = None if max_wait is None else asyncio.get_running_loop().time() + max_wait
        self.wanted = min_records
        try:
            async with asyncio.timeout_at(deadline):
                while self.unread < min_records and not self._woken:
                    self.data_ready.clear()
                    await self.data_ready.wait()
        except TimeoutError:
            pass
        finally:
            self.wanted = 1
        return self.unread >= min_records

    def wake(self) -> None:
        self._woken = True
        self.data_ready.set()

    def oldest_time_ns(self) -> int | None:
        """Acquisition time of the oldest record this reader has not committed, if any."""
        self._catch_up()
        if self.pending == 0:
            return None
        return self._ring._records[self.cursor - self._ring._first_seq].time_ns

    def read(self, max_records: int) -> Batch:
        self._catch_up()
        records = self._ring._slice(self._next, max_records)
        self._next += len(records)
        return Batch(records, self._next)

    def commit(self, batch: Batch) -> None:
        if batch.end > self.cursor:
            self.cursor = batch.end
            self._ring._release()

    def rewind(self) -> None:
        """Hand out again, from the cursor, the records read and not committed (a write that failed part-way)."""
        self._next = self.cursor
