"""One output's reader of the spool: the ring's :class:`~edge_daq.buffer.ring.BatchSource` interface over disk."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from edge_daq.buffer import segment as fmt
from edge_daq.buffer.ring import Batch
from edge_daq.buffer.spool.model import Position, Segment, SegmentIndex
from edge_daq.buffer.spool.tally import SkipTally
from edge_daq.buffer.waiter import Waiter
from edge_daq.record import Record, Series
from edge_daq.stats import CORRUPT, MISSING_SEGMENT, OutputStats

if TYPE_CHECKING:
    from edge_daq.sinks.routing import Route

log = structlog.get_logger("edge_daq.spool")

READ_CHUNK_BYTES = 1 << 20
READ_AHEAD_RECORDS = 1_000


@dataclass(slots=True)
class _Ahead:
    record: Record
    end: Position
    skipped: int = 0
    """Records after this one that the output does not take: ``end`` is past them."""


class SpoolReader:
    """``committed`` is what the output acknowledged, ``saved`` what is persisted; reading runs ahead of both,
    at most one batch (read from disk in a worker thread while :meth:`wait` waits).

    Every record it cannot give back is counted in ``lost_by_reason``: damaged (``corrupt``), in a segment
    that went missing (``missing_segment``), dropped by a cap or a full disk, or by the full ring before it
    reached the disk.
    """

    def __init__(self, spool: SegmentIndex, name: str, start: Position, stats: OutputStats | None) -> None:
        self._spool = spool
        self.name = name
        self.stats = stats
        self.committed = start
        self.saved = start
        self._handed_out = start
        """After the last record :meth:`read` returned."""
        self._disk = start
        """Where the next read from disk starts."""
        self._ahead: deque[_Ahead] = deque()
        self._in_flight: dict[int, tuple[Position, int]] = {}
        """Batches handed out and not committed: their end and number of records."""
        self._in_flight_records = 0
        self._in_flight_oldest_ns: int | None = None
        self._series: dict[int, Series] = {}
        self._keys: dict[int, tuple[str, ...]] = {}
        self._series_segment = start.segment
        self.lost_by_reason: dict[str, int] = {}
        self._waiter = Waiter()
        self._fill_hint = READ_AHEAD_RECORDS
        self._generation = 0  # bumped when a drop moves the reader, so that a read in flight is discarded
        self.route: Route | None = None
        """What the output takes (None: everything); the rest is skipped as it is read from disk."""
        self._ahead_skipped = 0  # the records read ahead and skipped, after the first one still ahead
        self._tally: SkipTally | None = None
        """For a routed output: what it skips among records written and not read yet (kept out of its backlog)."""

    def set_route(self, route: Route | None) -> None:
        self.route = route
        self._tally = None if route is None else SkipTally(route)
        self.rewind()

    # -- BatchSource

    @property
    def pending(self) -> int:
        """The backlog: records in flight or not read yet that the output takes."""
        skipped_unread = 0 if self._tally is None else self._tally.skipped_from(self._disk.seq)
        return max(0, self._in_flight_records + self.unread - skipped_unread)

    @property
    def unread(self) -> int:
        # Records not read from disk yet count in full here: reading them is what moves a routed reader past
        # the ones it skips (its cursor, and so the deletion of segments, depends on it). `pending` subtracts them.
        return max(0, self._spool.end_seq - self._handed_out.seq - self._ahead_skipped)

    @property
    def lost(self) -> int:
        return sum(self.lost_by_reason.values())

    async def wait(self, min_records: int = 1, max_wait: float | None = None) -> bool:
        loop = asyncio.get_running_loop()
        deadline = None if max_wait is None else loop.time() + max_wait
        while True:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            await self._waiter.wait(lambda: self.unread, min_records, remaining)
            disk = self._disk
            await self._fill(max(min_records, self._fill_hint))
            if self.unread >= min_records or self.route is None or self._waiter.woken or self._disk == disk:
                return self.unread >= min_records  # (no progress from disk: do not spin on it)
            # Routed: what looked unread was skipped once read; wait for more, within the same deadline.
            if deadline is not None and loop.time() >= deadline:
                return False

    def wake(self) -> None:
        self._waiter.wake()

    def read(self, max_records: int) -> Batch:
        self._fill_hint = max_records
        if not self._ahead and (plan := self._read_plan(max_records)) is not None:
            # Only when draining (the runner reads without waiting first): a blocking read is acceptable there.
            self._apply_chunk(*plan, self._read_blocking(*plan), self._generation)
        records: list[Record] = []
        end = self._handed_out
        while self._ahead and len(records) < max_records:
            item = self._ahead.popleft()
            records.append(item.record)
            end = item.end
            self._ahead_skipped -= item.skipped
        self._handed_out = end
        if records and not self._in_flight:
            self._in_flight_oldest_ns = records[0].time_ns
        previous = self._in_flight.get(end.packed)
        self._in_flight[end.packed] = (end, len(records) + (previous[1] if previous else 0))
        self._in_flight_records += len(records)
        return Batch(records, end.packed)

    def commit(self, batch: Batch) -> None:
        entry = self._in_flight.pop(batch.end, None)
        if entry is None:
            return
        position, count = entry
        self._in_flight_records -= count
        for packed in [p for p in self._in_flight if p < batch.end]:
            self._in_flight_records -= self._in_flight.pop(packed)[1]
        if self._spool.segment(position.segment) is None and not self._in_flight:
            position = self._handed_out  # its segment was dropped meanwhile: continue where reading is
        if position.seq > self.committed.seq or position.packed > self.committed.packed:
            self.committed = position
        if not self._in_flight:
            self._in_flight_oldest_ns = None
            if self._handed_out.packed > self.committed.packed:
                self.committed = self._handed_out  # only skipped records lie between: nothing is in flight
        if self._tally is not None:
            self._tally.committed(self.committed.seq)
        self.refresh_stats()

    def rewind(self) -> None:
        """Hand out again, from the committed cursor, what was read and not committed (an output restarted)."""
        self._ahead.clear()
        self._ahead_skipped = 0
        self._in_flight.clear()
        self._in_flight_records = 0
        self._in_flight_oldest_ns = None
        self._generation += 1  # a read from disk under way is discarded
        self._handed_out = self.committed
        self._move_disk(self.committed)
        self.refresh_stats()

    # -- reading ahead

    async def _fill(self, target: int) -> None:
        """Read ahead, off the event loop, until ``target`` records are in memory or nothing durable is left."""
        while len(self._ahead) < target and (plan := self._read_plan(target - len(self._ahead))) is not None:
            generation = self._generation
            chunk = await asyncio.to_thread(self._read_blocking, *plan)
            if not self._apply_chunk(*plan, chunk, generation):
                return

    def _read_plan(self, max_records: int) -> tuple[Segment, Position, int, int] | None:
        """``(segment, start, stop offset, max records)`` of the next read from disk, or None if all is read."""
        segment = self._spool.segment(self._disk.segment)
        if segment is None or (segment.sealed and self._disk.offset >= segment.size):
            following = self._spool.segment_after(self._disk.segment)
            if following is None:
                return None
            if segment is not None and following.missing_before:
                self._count_lost(following.missing_before, MISSING_SEGMENT, following)
            self._move_disk(following.start)
            segment = following
        if self._disk.offset >= segment.size:
            return None
        return segment, self._disk, segment.size, max_records

    def _read_blocking(self, segment: Segment, start: Position, stop: int, max_records: int) -> fmt.DecodedChunk | None:
        try:
            return fmt.read_records(
                segment.path,
                start.offset,
                stop,
                max_records=max_records,
                max_bytes=READ_CHUNK_BYTES,
                series=self._series,
                keys=self._keys,
                intern=self._spool.intern,
                start_index=start.in_segment,
                data_start=segment.data_start,
            )
        except FileNotFoundError:
            return None  # dropped by a cap, or deleted by someone else: see _apply_chunk
        except OSError as error:
            log.error("spool_read_failed", output=self.name, segment=segment.path.name, error=str(error))
            return fmt.DecodedChunk(end=stop, next_index=start.in_segment)

    def _apply_chunk(
        self,
        segment: Segment,
        start: Position,
        stop: int,
        max_records: int,
        chunk: fmt.DecodedChunk | None,
        generation: int,
    ) -> bool:
        """Queue what a read returned; False if it was stale or made no progress."""
        if generation != self._generation or start != self._disk:
            return False
        if chunk is None:
            if self._spool.segment(segment.id) is not segment:
                return False  # dropped by a cap meanwhile: the drop already moved this reader on
            # Deleted behind the spool's back while still held: what this reader had not read is gone.
            self._count_lost(segment.records - start.in_segment, MISSING_SEGMENT, segment)
            self._disk = Position(segment.id, segment.size, segment.records, segment.end_seq)
            return False
        first_seq = segment.first_seq
        route = self.route
        for record, end, index in zip(chunk.records, chunk.ends, chunk.indices, strict=True):
            position = Position(segment.id, end, index + 1, first_seq + index + 1)
            if route is None or route.takes(record):
                self._ahead.append(_Ahead(record, position))
            else:
                self._skip(position)
        index = chunk.next_index
        damaged = chunk.missing
        if chunk.end >= segment.size and segment.sealed and index < segment.records:
            damaged += segment.records - index  # what the seal counts but could not be read back
            index = segment.records
        if damaged:
            self._count_lost(damaged, CORRUPT, segment)
            if start.offset >= segment.checked_upto:
                self._spool.stats.corrupt_records += damaged  # once for the spool, once per output
            segment.checked_upto = max(segment.checked_upto, chunk.end)
        self._disk = Position(segment.id, chunk.end, index, first_seq + min(index, segment.records))
        return chunk.end > start.offset

    def _skip(self, position: Position) -> None:
        """A record the output does not take, ending at ``position``: it moves the cursor as if delivered."""
        if self._ahead:
            last = self._ahead[-1]
            last.end = position
            last.skipped += 1
            self._ahead_skipped += 1
            return
        self._handed_out = position
        if not self._in_flight:
            self.committed = position

    def _count_lost(self, count: int, reason: str, segment: Segment) -> None:
        self.add_lost(count, reason)
        log.error("spool_records_lost", output=self.name, segment=segment.path.name, records=count, reason=reason)

    def _move_disk(self, position: Position) -> None:
        self._disk = position
        if position.segment != self._series_segment:
            self._series, self._keys = {}, {}
            self._series_segment = position.segment

    # -- called by the spool

    def data_arrived(self) -> None:
        self._waiter.notify(self.unread)

    def note_written(self, first_seq: int, records: list[Record]) -> None:
        """The spool wrote ``records``, numbered from ``first_seq``: a routed reader notes what it will skip."""
        if self._tally is not None:
            self._tally.note_written(first_seq, records)

    def segment_dropped(self, dropped: Segment, following: Segment | None, reason: str) -> None:
        """A cap dropped ``dropped``: count what this reader had not handed out yet, and move past it."""
        if self._handed_out.segment > dropped.id:
            return
        already_out = self._handed_out.in_segment if self._handed_out.segment == dropped.id else 0
        self.add_lost(max(0, dropped.records - already_out), reason)
        self._ahead = deque(item for item in self._ahead if item.end.segment != dropped.id)
        self._ahead_skipped = sum(item.skipped for item in self._ahead)
        self._generation += 1
        # Without a following segment, stand at the end of the dropped one: the next segment created follows it.
        restart = (
            following.start
            if following is not None
            else Position(dropped.id, dropped.size, dropped.records, dropped.end_seq)
        )
        if self._disk.segment <= dropped.id:
            self._move_disk(restart)
        self._handed_out = restart
        if not self._in_flight:
            self.committed = restart
            if self._tally is not None:
                self._tally.committed(restart.seq)
        self.refresh_stats()

    def add_lost(self, count: int, reason: str) -> None:
        if count > 0:
            self.lost_by_reason[reason] = self.lost_by_reason.get(reason, 0) + count

    def saved_passed(self, segment: Segment) -> bool:
        saved = self.saved
        if saved.segment != segment.id:
            return saved.segment > segment.id
        return segment.sealed and (saved.offset >= segment.size or saved.in_segment >= segment.records)

    def refresh_stats(self) -> None:
        stats = self.stats
        if stats is None:
            return
        stats.lost = self.lost
        stats.lost_by_reason = dict(self.lost_by_reason)
        stats.pending_records = self.pending
        stats.pending_bytes = self._spool.bytes_from(self.committed)
        oldest_ns: int | None = None
        if self.pending:
            segment = self._spool.segment(self.committed.segment) or self._spool.segment_after(self.committed.segment)
            if self._in_flight_oldest_ns is not None:
                oldest_ns = self._in_flight_oldest_ns
            elif self._ahead:
                oldest_ns = self._ahead[0].record.time_ns
            elif segment is not None and segment.records:
                oldest_ns = segment.first_time_ns  # an upper bound of the age until the reader reads it
        now_ns = self._spool.wall_ns()
        stats.oldest_pending_seconds = None if oldest_ns is None else max(0.0, (now_ns - oldest_ns) / 1e9)
