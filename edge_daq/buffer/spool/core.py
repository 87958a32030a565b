"""The spool: the writer loop from the ring to disk, caps, cursors and the deletion of consumed segments."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import structlog

from edge_daq.buffer import segment as fmt
from edge_daq.buffer.ring import Batch, RingBuffer, RingReader
from edge_daq.buffer.settings import (
    DEFAULT_FSYNC_INTERVAL,
    SpoolSettings,
    default_min_free,
    default_segment_bytes,
)
from edge_daq.buffer.spool import cursors
from edge_daq.buffer.spool.caps import Caps, segments_to_drop
from edge_daq.buffer.spool.model import Position, Segment
from edge_daq.buffer.spool.reader import SpoolReader
from edge_daq.buffer.spool.recovery import recover_segments
from edge_daq.buffer.spool.writer import SegmentEvent, SegmentWriter
from edge_daq.record import Series
from edge_daq.stats import DISK_FULL, MISSING_SEGMENT, RING_FULL, UNENCODABLE, OutputStats, SpoolStats

log = structlog.get_logger("edge_daq.spool")

WRITE_BATCH_RECORDS = 20_000
RETRY_INITIAL = 0.5
RETRY_MAXIMUM = 30.0
NO_ROOM_RETRY = 0.5
"""How often a spool without room looks at the free space again: writing resumes by itself once there is room."""


class Spool:
    """Segment files in ``directory``, fed from ``ring`` by :meth:`run`, read back by :meth:`reader` s."""

    def __init__(
        self,
        directory: Path,
        ring: RingBuffer,
        *,
        max_bytes: int,
        max_age: float | None = None,
        min_free: int | None = None,
        fsync_interval: float = DEFAULT_FSYNC_INTERVAL,
        segment_bytes: int | None = None,
        stats: SpoolStats | None = None,
        wall_ns: Callable[[], int] | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.fsync_interval = fsync_interval
        self.stats = stats if stats is not None else SpoolStats()
        self.stats.max_bytes = max_bytes  # /metrics: the spool's use against its cap
        # Clocks are injectable for tests; the wall clock only dates things, caps and timing use the monotonic one.
        self.wall_ns = wall_ns or time.time_ns
        self._monotonic = monotonic or time.monotonic
        self._ring = ring
        self._ring_reader: RingReader = ring.reader("spool")
        self._ring_lost_seen = 0
        self._segments: deque[Segment] = deque()
        self._by_id: dict[int, Segment] = {}
        self._readers: list[SpoolReader] = []
        self._series: dict[tuple[str, tuple[tuple[str, str], ...]], Series] = {}
        self._to_unlink: list[Path] = []
        self._abandon_active = False
        self._closing = False
        self._flushed = asyncio.Event()
        self._closing_requested = asyncio.Event()
        self._cursor_error_logged = False
        self._cursor_save_lock = threading.Lock()
        self._dropping = False
        self._failing_since: float | None = None
        self.end_seq = 0

        directory.mkdir(parents=True, exist_ok=True)
        (directory / cursors.CURSOR_DIR).mkdir(exist_ok=True)
        vfs = os.statvfs(directory)
        fs_bytes = vfs.f_blocks * vfs.f_frsize
        self.min_free = default_min_free(fs_bytes) if min_free is None else min_free
        self.segment_bytes = segment_bytes or default_segment_bytes(max_bytes, fs_bytes, self.min_free)
        for segment in recover_segments(directory, self.stats, self.wall_ns(), self._monotonic()):
            self._segments.append(segment)
            self._by_id[segment.id] = segment
            self.end_seq = segment.end_seq
        next_base = max((s.end_base for s in self._segments if s.end_base is not None), default=0)
        self._writer = SegmentWriter(directory, self.segment_bytes, self.wall_ns, next_base)
        self._apply([self._writer.open_segment()])
        self._first_id_of_run = self._segments[-1].id
        """Cursors are validated against the segments found at start: none can name a newer one."""
        self._update_stats()

    # -- readers

    def reader(self, name: str, stats: OutputStats | None = None) -> SpoolReader:
        """The reader of output ``name``, resuming from its validated cursor (or the oldest record held)."""
        found = [segment for segment in self._segments if segment.id < self._first_id_of_run]
        resume = cursors.load_cursor(self._cursor_path(name), found, self._segments[0], name)
        reader = SpoolReader(self, name, resume.position, stats)
        reader.add_lost(resume.missing, MISSING_SEGMENT)
        self._readers.append(reader)
        reader.refresh_stats()
        return reader

    def _cursor_path(self, name: str) -> Path:
        return cursors.cursor_path(self.directory, name)

    def intern(self, measurement: str, tags: dict[str, str]) -> Series:
        key = (measurement, tuple(tags.items()))
        series = self._series.get(key)
        if series is None:
            series = self._series.setdefault(key, Series(measurement, tags))
        return series

    def segment(self, segment_id: int) -> Segment | None:
        return self._by_id.get(segment_id)

    def segment_after(self, segment_id: int) -> Segment | None:
        for segment in self._segments:
            if segment.id > segment_id:
                return segment
        return None

    def bytes_from(self, position: Position) -> int:
        total = 0
        for segment in self._segments:
            if segment.id > position.segment:
                total += segment.size - segment.data_start
            elif segment.id == position.segment:
                total += max(0, segment.size - position.offset)
        return total

    @property
    def total_bytes(self) -> int:
        return sum(segment.size for segment in self._segments)

    # -- running

    async def run(self) -> None:
        """Move records from the ring to disk, persist cursors and delete consumed segments, until cancelled."""
        self._ring_reader.rewind()  # a previous run that failed may have read records it did not write
        async with asyncio.TaskGroup() as group:
            group.create_task(self._write_loop(), name="spool writer")
            group.create_task(self._cursor_loop(), name="spool cursors")

    async def flush(self, within: float | None = None) -> bool:
        """Write everything the ring still holds (the daemon calls this once acquisition stopped).

        The writer then stops; returns whether it got everything onto disk in time.
        """
        self._closing = True
        self._closing_requested.set()
        self._ring_reader.wake()
        try:
            async with asyncio.timeout(within):
                await self._flushed.wait()
        except TimeoutError:
            log.error("spool_flush_timeout", records_in_ring=self._ring_reader.pending)
            return False
        return True

    async def close(self) -> None:
        """Persist the cursors and release the files (after :meth:`run` was cancelled)."""
        await self._save_cursors()
        await self._delete_consumed()
        await asyncio.to_thread(self._writer.close)
        self._update_stats()

    async def _write_loop(self) -> None:
        ring_reader = self._ring_reader
        delay = RETRY_INITIAL
        while True:
            if not self._closing:
                await ring_reader.wait(1)
                if not self._closing:
                    # Gather for at most one fsync window: this bounds what a crash can lose.
                    await ring_reader.wait(self._batch_records(), max_wait=self.fsync_interval)
            self._account_ring_losses()
            if ring_reader.pending == 0:
                if self._closing:
                    self._flushed.set()
                    return
                continue
            outcome = await self._write_once()
            if outcome is None:
                delay = RETRY_INITIAL
                continue
            if outcome == "dropped":
                continue  # room was made by dropping the oldest (and really given back): retry at once
            if self._closing:
                self._flushed.set()
                return
            # No room: look again soon, so that writing resumes by itself once space is back. Other errors back off.
            wait = NO_ROOM_RETRY if outcome == "no_room" else delay
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._closing_requested.wait()  # a flush ends the backoff
            if outcome != "no_room":
                delay = min(delay * 2, RETRY_MAXIMUM)

    async def _free_bytes(self) -> int | None:
        if self.min_free <= 0:
            return None
        vfs = await asyncio.to_thread(os.statvfs, self.directory)
        return vfs.f_bavail * vfs.f_frsize

    async def _write_once(self) -> str | None:
        """One write cycle: make room under the caps, append and fsync, then publish.

        None if it succeeded, else ``"dropped"`` (room was made, retry now), ``"no_room"`` or ``"error"``.
        """
        per_record = self._bytes_per_record()
        wanted = min(self._ring_reader.pending, self._batch_records(per_record))
        estimate = wanted * per_record
        free = await self._free_bytes()
        caps = Caps(self.max_bytes, self.max_age, self.min_free)
        drops = segments_to_drop(self._segments, caps, estimate, free, self._monotonic())
        if drops:
            self._note_dropping([reason for _, reason in drops])
            for _, reason in drops:
                self._drop_oldest(reason)
        if self._to_unlink:
            await self._release_dropped()
            free = await self._free_bytes()  # what the file system really has now, not what was hoped for
        room = self.max_bytes - self.total_bytes
        if free is not None:
            room = min(room, free - self.min_free)
        count = min(wanted, max(0, room) // per_record)
        if count == 0:
            self._write_failed(OSError(errno.ENOSPC, "no room under the spool's caps"))
            return "no_room"
        batch = self._ring_reader.read(count)
        started = self._monotonic()
        outcome = await asyncio.to_thread(self._writer.write, batch.records)
        self.stats.last_write_seconds = self._monotonic() - started
        first_seq = self.end_seq
        self._apply(outcome.events)
        if outcome.written and not outcome.unencodable and self.end_seq - first_seq == outcome.written:
            # (With unencodable records left out, which records got which numbers is unknown: they count in full.)
            written = batch.records[: outcome.written]
            for reader in self._readers:
                reader.note_written(first_seq, written)
        if outcome.unencodable:
            self.stats.unencodable_records += outcome.unencodable
            for reader in self._readers:
                reader.add_lost(outcome.unencodable, UNENCODABLE)
        if outcome.written:
            # What reached a segment file leaves the ring (after a failure, a prefix of the batch).
            unwritten = len(batch.records) - outcome.written
            self._ring_reader.commit(Batch(batch.records[: outcome.written], batch.end - unwritten))
            self.stats.records_written += outcome.written - outcome.unencodable
        if outcome.error is not None:
            self._ring_reader.rewind()  # the unwritten rest is read again by the retry
            self._write_failed(outcome.error)
            if outcome.error.errno in (errno.ENOSPC, errno.EDQUOT) and self._has_records_to_drop():
                self._note_dropping([DISK_FULL])
                self._drop_oldest(DISK_FULL)
                await self._release_dropped()
                return "dropped"
            return "no_room" if outcome.error.errno in (errno.ENOSPC, errno.EDQUOT) else "error"
        self.stats.fsyncs += 1
        if self._failing_since is not None:
            log.info("spool_write_recovered", outage_seconds=round(self._monotonic() - self._failing_since, 1))
            self._failing_since = None
        self._update_stats()
        return None

    async def _release_dropped(self) -> None:
        """Give the space of dropped segments back to the file system now, before the next write is decided."""
        unlink, self._to_unlink = self._to_unlink, []
        abandon, self._abandon_active = self._abandon_active, False
        await asyncio.to_thread(self._writer.release, unlink, abandon_active=abandon)
        self._update_stats()

    def _write_failed(self, error: OSError) -> None:
        self.stats.write_errors += 1
        self.stats.last_error = str(error)
        if self._failing_since is None:
            self._failing_since = self._monotonic()
            log.error("spool_write_failed", error=str(error), records_in_ring=self._ring_reader.pending)

    def _batch_records(self, per_record: int | None = None) -> int:
        """Records per write: at most a segment's worth, so that making room for a write drops about a segment."""
        per_record = per_record or self._bytes_per_record()
        return max(1, min(WRITE_BATCH_RECORDS, self.segment_bytes // per_record))

    def _bytes_per_record(self) -> int:
        written = sum(s.size - s.data_start for s in self._segments)
        records = sum(s.records for s in self._segments)
        return max(64, written // records) if records else 256

    def _account_ring_losses(self) -> None:
        lost = self._ring_reader.lost
        if lost > self._ring_lost_seen:
            for reader in self._readers:
                reader.add_lost(lost - self._ring_lost_seen, RING_FULL)
            self.stats.dropped_in_ring += lost - self._ring_lost_seen
            self._ring_lost_seen = lost

    def _has_records_to_drop(self) -> bool:
        return any(segment.records for segment in self._segments)

    def _note_dropping(self, reasons: list[str]) -> None:
        if not self._dropping:  # once per episode; the counters tell the rest
            log.error(
                "spool_dropping_oldest",
                reasons=sorted(set(reasons)),
                max_bytes=self.max_bytes,
                max_age=self.max_age,
                min_free=self.min_free,
            )
        self._dropping = True

    def _drop_oldest(self, reason: str) -> None:
        """Drop the oldest segment, counting its records as lost for every reader that had not read them."""
        if not self._segments:
            return
        oldest = self._segments.popleft()
        del self._by_id[oldest.id]
        self.stats.dropped_records += oldest.records
        self.stats.dropped_segments += 1
        if not oldest.sealed:
            self._abandon_active = True
        self._to_unlink.append(oldest.path)
        following = self._segments[0] if self._segments else None
        for reader in self._readers:
            reader.segment_dropped(oldest, following, reason)

    def _apply(self, events: Sequence[SegmentEvent]) -> None:
        """Make written (fsynced) data visible: update the metadata and wake the readers."""
        now = self._monotonic()
        for event in events:
            segment = self._by_id.get(event.id)
            if segment is None:
                segment = Segment(
                    id=event.id,
                    path=event.path,
                    size=event.size,
                    records=0,
                    first_seq=self.end_seq,
                    sealed=False,
                    newest_monotonic=now,
                    data_start=fmt.HEADER_SIZE,
                    base=event.base,
                    checked_upto=fmt.HEADER_SIZE,
                )
                self._segments.append(segment)
                self._by_id[event.id] = segment
            if event.records > segment.records:
                segment.newest_monotonic = now
            self.end_seq += event.records - segment.records
            segment.size, segment.records, segment.sealed = event.size, event.records, event.sealed
            segment.first_time_ns, segment.last_time_ns = event.first_time_ns, event.last_time_ns
        for reader in self._readers:
            reader.data_arrived()

    # -- cursors and deletion

    async def _cursor_loop(self) -> None:
        interval = max(self.fsync_interval, 0.05)
        while True:
            await asyncio.sleep(interval)
            await self._save_cursors()
            await self._delete_consumed()
            self._update_stats()

    async def _save_cursors(self) -> None:
        """Persist the cursors that moved: coalesced, since a cursor that lags only means a replay."""
        dirty = [(reader, reader.committed) for reader in self._readers if reader.committed != reader.saved]
        if not dirty:
            return
        documents = []
        for reader, position in dirty:
            segment = self._by_id.get(position.segment)
            base = segment.base if segment is not None else None
            documents.append((reader.name, cursors.encode_cursor(position, base)))
        saved = await asyncio.to_thread(self._save_cursors_blocking, documents)
        for (reader, position), ok in zip(dirty, saved, strict=True):
            if ok:
                reader.saved = position

    def _save_cursors_blocking(self, documents: list[tuple[str, bytes]]) -> list[bool]:
        # One save at a time: a save abandoned by a cancelled task still runs in its thread when close() saves
        # again, and both write the same temporary file.
        with self._cursor_save_lock:
            return self._save_cursors_locked(documents)

    def _save_cursors_locked(self, documents: list[tuple[str, bytes]]) -> list[bool]:
        saved = []
        for name, data in documents:
            try:
                cursors.save_cursor(self._cursor_path(name), data)
            except OSError as error:
                if not self._cursor_error_logged:  # once: the disk is full or failing, the spool says so already
                    log.error("spool_cursor_not_saved", output=name, error=str(error))
                    self._cursor_error_logged = True
                saved.append(False)
                continue
            self._cursor_error_logged = False
            saved.append(True)
        with contextlib.suppress(OSError):
            fmt.fsync_directory(self.directory / cursors.CURSOR_DIR)
        return saved

    async def _delete_consumed(self) -> None:
        """Delete the sealed segments that every reader's persisted (validated) cursor has passed."""
        if not self._readers:
            return
        doomed: list[Path] = []
        while len(self._segments) > 1 and self._segments[0].sealed:
            oldest = self._segments[0]
            if not all(reader.saved_passed(oldest) for reader in self._readers):
                break
            self._segments.popleft()
            del self._by_id[oldest.id]
            doomed.append(oldest.path)
        if doomed:
            await asyncio.to_thread(_unlink_all, doomed, self.directory)

    def _update_stats(self) -> None:
        stats = self.stats
        stats.segments = len(self._segments)
        stats.bytes = self.total_bytes
        stats.records = self.end_seq - (self._segments[0].first_seq if self._segments else self.end_seq)
        for reader in self._readers:
            reader.refresh_stats()
        if self._dropping and all(reader.pending == 0 for reader in self._readers):
            self._dropping = False  # the episode is over once every output caught up: log the next one again


def _unlink_all(paths: Iterable[Path], directory: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    with contextlib.suppress(OSError):
        fmt.fsync_directory(directory)


def open_spool(settings: SpoolSettings | None, ring: RingBuffer, stats: SpoolStats) -> Spool | None:
    """The spool ``settings`` ask for, or None for a memory-only gateway (``settings`` None).

    A spool folder that cannot be used (permissions, a read-only file system) is logged as an error and the
    gateway runs memory-only rather than not at all: acquisition matters more than the disk.
    """
    if settings is None:
        return None
    try:
        return Spool(
            settings.directory,
            ring,
            max_bytes=settings.max_bytes,
            max_age=settings.max_age,
            min_free=settings.min_free,
            fsync_interval=settings.fsync_interval,
            segment_bytes=settings.segment_bytes,
            stats=stats,
        )
    except OSError as error:
        log.error("spool_unavailable", spool_dir=str(settings.directory), error=str(error), buffer="memory only")
        return None
