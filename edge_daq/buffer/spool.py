"""The durable spool: store-and-forward on disk between the ring queue and the outputs.

::

    ring queue ──▶ spool writer ──▶ segment files (append-only, checksummed) ──▶ one SpoolReader per output

- **Accepted means on disk.** The spool writer is the ring's only reader. It collects records for at most
  ``fsync_interval`` (or until a full write batch is there), appends them to the current segment, fsyncs,
  and only then commits the ring cursor and shows the records to the outputs. A SIGKILL or a power loss
  therefore loses at most the records of one fsync window (plus the write in progress).
- **A cursor per output.** Each :class:`SpoolReader` offers the ring's :class:`BatchSource` interface, reads
  back in batches from disk (off the event loop), and keeps its own cursor: segment id, offset and record
  index, advanced only when its output acknowledged a batch, and persisted atomically (temporary file,
  fsync, rename) at most one ``fsync_interval`` later. After a restart a reader resumes from its persisted
  cursor: at-least-once, so a batch delivered just before a crash is sent again (and overwrites itself in
  InfluxDB, since timestamps are fixed at acquisition). A new output starts at the oldest record held.
- **Segments** rotate at ``segment_bytes`` and are deleted once every output's persisted cursor passed them.
- **Caps, never a full disk.** Before each write the oldest segments are dropped while the spool would exceed
  ``max_bytes``, while its oldest segment's newest record is older than ``max_age`` (measured on the monotonic
  clock, so a step of the wall clock drops nothing), or while the file system would keep less than
  ``min_free`` bytes. Dropped records are counted as lost for each output that had not delivered them and
  logged once per episode. If a write still fails (ENOSPC with nothing left to drop, a read-only or failing
  disk), the records stay in the ring and the write is retried with backoff: acquisition goes on, and the
  ring drops (and counts) its oldest records once full.
- **Crash safety.** On start every segment's header is checked (a damaged one is renamed ``*.corrupt`` and
  counted) and its seal read; a segment without a valid seal (the one being written at the crash) is scanned:
  its torn tail is cut, damaged records are skipped and counted, then it is sealed. Readers skip damaged
  records they meet later (bit rot) and count them. Nothing here refuses to start or retries forever.
- **Memory** holds per-segment metadata, the series table of the segment each reader is in (Series objects
  are interned, one per distinct series), and one read-ahead batch per reader: not the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import structlog

from edge_daq.buffer import segment as fmt
from edge_daq.buffer.ring import Batch, RingBuffer, RingReader
from edge_daq.config.models import BufferConfig
from edge_daq.record import Record, Series
from edge_daq.stats import OutputStats, SpoolStats

log = structlog.get_logger("edge_daq.spool")

DEFAULT_FSYNC_INTERVAL = 0.1
MIN_FREE_FRACTION = 0.05
MIN_FREE_CEILING = 1 << 30
WRITE_BATCH_RECORDS = 20_000
READ_CHUNK_BYTES = 1 << 20
READ_AHEAD_RECORDS = 1_000
RETRY_INITIAL = 0.5
RETRY_MAXIMUM = 30.0
CURSOR_DIR = "cursors"
_OFFSET_BITS = 40  # Batch.end packs (segment id, offset) into one ordered int


def default_segment_bytes(max_bytes: int) -> int:
    """Segments small enough that dropping one frees a sixteenth of the cap, between 64 KiB and 64 MiB."""
    return max(64 << 10, min(64 << 20, max_bytes // 16))


def default_min_free(total_bytes: int) -> int:
    """Free space the spool always leaves on its file system: 5 % of it, at most 1 GiB."""
    return min(int(total_bytes * MIN_FREE_FRACTION), MIN_FREE_CEILING)


class Position(NamedTuple):
    """A place in the spool: the segment, the byte offset in it, and the record's number in this run."""

    segment: int
    offset: int
    in_segment: int
    """Records before this position in its segment."""
    seq: int
    """Records before this position in the whole spool (numbered afresh at each start)."""

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
    first_seq: int
    sealed: bool
    newest_monotonic: float
    """Monotonic time of its newest record (for the age cap)."""
    first_time_ns: int = 0
    last_time_ns: int = 0
    checked_upto: int = 0
    """Damage before this offset was already counted in the spool's totals."""

    @property
    def start(self) -> Position:
        return Position(self.id, fmt.HEADER_SIZE, 0, self.first_seq)

    @property
    def end_seq(self) -> int:
        return self.first_seq + self.records


@dataclass(slots=True)
class _ActiveFile:
    """The segment being written: owned by the writer and touched only from its worker thread."""

    id: int
    path: Path
    fd: int
    size: int
    records: int = 0
    first_time_ns: int = 0
    last_time_ns: int = 0


@dataclass(slots=True)
class _SegmentEvent:
    """A change to apply to the in-memory metadata once a write is on disk."""

    id: int
    path: Path
    size: int
    records: int
    first_time_ns: int
    last_time_ns: int
    sealed: bool


@dataclass(slots=True)
class _WriteOutcome:
    events: list[_SegmentEvent] = field(default_factory=list)
    written: int = 0
    """Records of the batch now in segment files (all of them, unless ``error``)."""
    error: OSError | None = None


class _SegmentWriter:
    """Appends framed records to the current segment; every method runs in a worker thread, one at a time."""

    def __init__(self, directory: Path, segment_bytes: int, wall_ns: Callable[[], int]) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.wall_ns = wall_ns
        self.encoder = fmt.SeriesEncoder()
        self.active: _ActiveFile | None = None
        # Never reuse an id, not even one of a segment set aside as corrupt or dropped a moment ago.
        names = (p.name[:16] for p in directory.iterdir() if fmt.SEGMENT_SUFFIX in p.name)
        self.last_id = max((int(name) for name in names if name.isdigit()), default=0)
        # A write abandoned by a cancelled task may still run in its thread when close() is called.
        self._lock = threading.Lock()

    def open_segment(self) -> _SegmentEvent:
        self.last_id += 1
        segment_id = self.last_id
        path = self.directory / fmt.segment_name(segment_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
        try:
            fmt.write_all(fd, [fmt.encode_header(segment_id, self.wall_ns())])
            os.fsync(fd)
            fmt.fsync_directory(self.directory)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self.active = _ActiveFile(segment_id, path, fd, fmt.HEADER_SIZE)
        self.encoder.new_segment()
        return self._event(self.active, sealed=False)

    def write(self, records: Sequence[Record], *, unlink: Iterable[Path], abandon_active: bool) -> _WriteOutcome:
        """Delete dropped segments, then append ``records`` (rotating as needed) and fsync."""
        outcome = _WriteOutcome()
        with self._lock:
            try:
                if abandon_active and self.active is not None:
                    os.close(self.active.fd)  # dropped by a cap: its file is in ``unlink``
                    self.active = None
                for path in unlink:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                if self.active is None:
                    outcome.events.append(self.open_segment())
                self._append(records, outcome)
            except OSError as error:
                outcome.error = error
                if self.active is not None:
                    # Whatever state the failed write left (and the series it defined), start afresh next time.
                    outcome.events.append(self._retire(self.active))
        return outcome

    def _append(self, records: Sequence[Record], outcome: _WriteOutcome) -> None:
        active = self.active
        assert active is not None
        frames: list[bytes] = []
        size, count, first, last = active.size, active.records, active.first_time_ns, active.last_time_ns
        for done, record in enumerate(records):
            if size >= self.segment_bytes and count:
                self._flush(active, frames, size, count, first, last)
                frames = []
                outcome.events.append(self._seal(active))
                outcome.written = done
                outcome.events.append(self.open_segment())
                active = self.active
                assert active is not None
                size, count, first, last = active.size, 0, 0, 0
            before = len(frames)
            self.encoder.encode(record, frames)
            size += sum(len(frame) for frame in frames[before:])
            if count == 0:
                first = record.time_ns
            last = record.time_ns
            count += 1
        self._flush(active, frames, size, count, first, last)
        outcome.written = len(records)  # in the file now: a failing fsync still publishes them (at-least-once)
        os.fsync(active.fd)
        outcome.events.append(self._event(active, sealed=False))

    def _flush(self, active: _ActiveFile, frames: list[bytes], size: int, count: int, first: int, last: int) -> None:
        try:
            fmt.write_all(active.fd, frames)
        except OSError:
            # A partial write must not leave half a batch behind: cut back to the last whole state.
            with contextlib.suppress(OSError):
                os.ftruncate(active.fd, active.size)
            raise
        active.size, active.records, active.first_time_ns, active.last_time_ns = size, count, first, last

    def _seal(self, active: _ActiveFile) -> _SegmentEvent:
        seal = fmt.encode_seal(active.records, active.first_time_ns, active.last_time_ns)
        fmt.write_all(active.fd, [seal])
        active.size += len(seal)
        os.fsync(active.fd)
        os.close(active.fd)
        self.active = None
        return self._event(active, sealed=True)

    def _retire(self, active: _ActiveFile) -> _SegmentEvent:
        """Close the segment after a failed write: cut it back to its last whole frame and seal it if possible.

        Without room for the seal it is left unsealed on disk (the next start scans it) but is finished for
        the readers either way.
        """
        self.active = None
        try:
            os.ftruncate(active.fd, active.size)
            self._seal(active)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(active.fd, active.size)
            with contextlib.suppress(OSError):
                os.close(active.fd)
        return self._event(active, sealed=True)

    def close(self) -> None:
        """Seal the current segment, so that the next start reads its trailer instead of scanning it."""
        with self._lock:
            if self.active is not None:
                try:
                    self._seal(self.active)
                except OSError as error:
                    log.error("spool_seal_failed", segment=self.active.path.name, error=str(error))
                    os.close(self.active.fd)
                self.active = None

    @staticmethod
    def _event(active: _ActiveFile, *, sealed: bool) -> _SegmentEvent:
        return _SegmentEvent(
            active.id, active.path, active.size, active.records, active.first_time_ns, active.last_time_ns, sealed
        )


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
        self.segment_bytes = segment_bytes or default_segment_bytes(max_bytes)
        self.stats = stats if stats is not None else SpoolStats()
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
        self._dropping = False
        self._failing_since: float | None = None
        self.end_seq = 0

        directory.mkdir(parents=True, exist_ok=True)
        (directory / CURSOR_DIR).mkdir(exist_ok=True)
        if min_free is None:
            vfs = os.statvfs(directory)
            min_free = default_min_free(vfs.f_blocks * vfs.f_frsize)
        self.min_free = min_free
        self._recover()
        self._writer = _SegmentWriter(directory, self.segment_bytes, self.wall_ns)
        self._apply([self._writer.open_segment()])
        self._update_stats()

    # -- start-up

    def _recover(self) -> None:
        """Index the segments left by the previous run, repairing what a crash or damage left behind."""
        paths = sorted(p for p in self.directory.iterdir() if p.name.endswith(fmt.SEGMENT_SUFFIX))
        now_wall, now_mono = self.wall_ns(), self._monotonic()
        for path in paths:
            try:
                segment = self._recover_segment(path, now_wall, now_mono)
            except OSError as error:
                log.error("spool_segment_unreadable", segment=path.name, error=str(error))
                self._set_aside(path)
                continue
            if segment is not None:
                self._segments.append(segment)
                self._by_id[segment.id] = segment
                self.end_seq = segment.end_seq
        if self._segments:
            log.info(
                "spool_recovered",
                segments=len(self._segments),
                records=self.end_seq,
                bytes=sum(s.size for s in self._segments),
                corrupt_records=self.stats.corrupt_records,
                corrupt_segments=self.stats.corrupt_segments,
                torn_bytes=self.stats.torn_bytes,
            )

    def _recover_segment(self, path: Path, now_wall: int, now_mono: float) -> Segment | None:
        with path.open("rb") as file:
            header = fmt.decode_header(file.read(fmt.HEADER_SIZE))
            size = os.fstat(file.fileno()).st_size
            seal = None
            if header is not None and size >= fmt.HEADER_SIZE + fmt.SEAL_FRAME_SIZE:
                file.seek(size - fmt.SEAL_FRAME_SIZE)
                seal = fmt.decode_seal(file.read(fmt.SEAL_FRAME_SIZE))
        if header is None or header[0] != _id_of(path):
            if size == 0:
                path.unlink()  # created, never written: nothing to keep
                return None
            log.error("spool_segment_corrupt", segment=path.name, reason="bad header", set_aside=True)
            self._set_aside(path)
            return None
        if seal is not None:
            records, first_ns, last_ns = seal
        else:
            scan = fmt.scan_segment(path)
            records, first_ns, last_ns = scan.records, scan.first_time_ns, scan.last_time_ns
            if scan.corrupt_regions:
                self.stats.corrupt_records += scan.corrupt_regions
                log.error("spool_records_corrupt", segment=path.name, records=scan.corrupt_regions)
            if scan.valid_end < size:
                self.stats.torn_bytes += size - scan.valid_end
                log.warning("spool_torn_tail_truncated", segment=path.name, bytes=size - scan.valid_end)
            with path.open("r+b") as file:
                file.truncate(scan.valid_end)
                file.seek(scan.valid_end)
                file.write(fmt.encode_seal(records, first_ns, last_ns))
                file.flush()
                os.fsync(file.fileno())
            size = scan.valid_end + fmt.SEAL_FRAME_SIZE
        # Re-anchor the age on the monotonic clock once; a wall-clock step later cannot age it any further.
        age = max(0.0, (now_wall - last_ns) / 1e9) if records else 0.0
        return Segment(
            id=header[0],
            path=path,
            size=size,
            records=records,
            first_seq=self.end_seq,
            sealed=True,
            newest_monotonic=now_mono - age,
            first_time_ns=first_ns,
            last_time_ns=last_ns,
            checked_upto=size if seal is None else fmt.HEADER_SIZE,
        )

    def _set_aside(self, path: Path) -> None:
        self.stats.corrupt_segments += 1
        with contextlib.suppress(OSError):
            path.rename(path.with_name(path.name + fmt.CORRUPT_SUFFIX))

    # -- readers

    def reader(self, name: str, stats: OutputStats | None = None) -> SpoolReader:
        """The reader of output ``name``, resuming from its persisted cursor (or the oldest record held)."""
        reader = SpoolReader(self, name, self._load_cursor(name), stats)
        self._readers.append(reader)
        reader.refresh_stats()
        return reader

    def _cursor_path(self, name: str) -> Path:
        return self.directory / CURSOR_DIR / f"{name}.json"

    def _load_cursor(self, name: str) -> Position:
        oldest = self._segments[0]
        try:
            saved = json.loads(self._cursor_path(name).read_text())
            segment_id, offset, index = int(saved["segment"]), int(saved["offset"]), int(saved["index"])
        except FileNotFoundError:
            return oldest.start
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.error("spool_cursor_unreadable", output=name, error=str(error), resume="oldest record held")
            return oldest.start
        segment = self._by_id.get(segment_id)
        if segment is None:
            # Its segment is gone (delivered, or dropped by a cap): resume at the next one held.
            later = [s for s in self._segments if s.id > segment_id]
            return later[0].start if later else self._segments[-1].start
        if offset >= segment.size or index >= segment.records:
            follows = [s for s in self._segments if s.id > segment.id]
            return follows[0].start if follows else segment.start
        return Position(segment.id, max(offset, fmt.HEADER_SIZE), index, segment.first_seq + index)

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
                total += segment.size - fmt.HEADER_SIZE
            elif segment.id == position.segment:
                total += max(0, segment.size - position.offset)
        return total

    @property
    def total_bytes(self) -> int:
        return sum(segment.size for segment in self._segments)

    # -- running

    async def run(self) -> None:
        """Move records from the ring to disk, persist cursors and delete consumed segments, until cancelled."""
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
                    await ring_reader.wait(WRITE_BATCH_RECORDS, max_wait=self.fsync_interval)
            self._account_ring_losses()
            if ring_reader.pending == 0:
                if self._closing:
                    self._flushed.set()
                    return
                continue
            if await self._write_once():
                delay = RETRY_INITIAL
            elif self._to_unlink:
                continue  # the disk was full and an old segment was dropped for room: retry at once
            else:
                if self._closing:
                    self._flushed.set()
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._closing_requested.wait()  # a flush ends the backoff
                delay = min(delay * 2, RETRY_MAXIMUM)

    async def _write_once(self) -> bool:
        """One write cycle: make room under the caps, append and fsync, then publish. False if it failed."""
        wanted = min(self._ring_reader.pending, WRITE_BATCH_RECORDS)
        estimate = wanted * self._bytes_per_record()
        free = None
        if self.min_free > 0:
            vfs = await asyncio.to_thread(os.statvfs, self.directory)
            free = vfs.f_bavail * vfs.f_frsize
        self._enforce_caps(estimate, free)
        room = self.max_bytes - self.total_bytes
        if free is not None:
            room = min(room, free - self.min_free)
        count = min(wanted, max(0, room) // max(1, self._bytes_per_record()))
        if count == 0:
            self._write_failed(OSError(errno.ENOSPC, "no room under the spool's caps"))
            return False
        batch = self._ring_reader.read(count)
        unlink, self._to_unlink = self._to_unlink, []
        abandon, self._abandon_active = self._abandon_active, False
        started = self._monotonic()
        outcome = await asyncio.to_thread(self._writer.write, batch.records, unlink=unlink, abandon_active=abandon)
        self.stats.last_write_seconds = self._monotonic() - started
        self._apply(outcome.events)
        if outcome.written:
            # What reached a segment file leaves the ring (after a failure, a prefix of the batch).
            unwritten = len(batch.records) - outcome.written
            self._ring_reader.commit(Batch(batch.records[: outcome.written], batch.end - unwritten))
            self.stats.records_written += outcome.written
        if outcome.error is not None:
            self._ring_reader.rewind()  # the unwritten rest is read again by the retry
            self._write_failed(outcome.error)
            if outcome.error.errno in (errno.ENOSPC, errno.EDQUOT) and self._has_records_to_drop():
                self._note_dropping(["disk_full"])
                self._drop_oldest()  # room for the retry; without anything to drop, back off instead
            return False
        self.stats.fsyncs += 1
        if self._failing_since is not None:
            log.info("spool_write_recovered", outage_seconds=round(self._monotonic() - self._failing_since, 1))
            self._failing_since = None
        self._update_stats()
        return True

    def _write_failed(self, error: OSError) -> None:
        self.stats.write_errors += 1
        self.stats.last_error = str(error)
        if self._failing_since is None:
            self._failing_since = self._monotonic()
            log.error("spool_write_failed", error=str(error), records_in_ring=self._ring_reader.pending)

    def _bytes_per_record(self) -> int:
        written = sum(s.size - fmt.HEADER_SIZE for s in self._segments)
        records = sum(s.records for s in self._segments)
        return max(64, written // records) if records else 256

    def _account_ring_losses(self) -> None:
        lost = self._ring_reader.lost
        if lost > self._ring_lost_seen:
            for reader in self._readers:
                reader.add_lost(lost - self._ring_lost_seen)
            self.stats.dropped_in_ring += lost - self._ring_lost_seen
            self._ring_lost_seen = lost

    def _enforce_caps(self, incoming: int, free: int | None) -> None:
        reasons: list[str] = []
        while self._segments:
            oldest = self._segments[0]
            if not oldest.sealed and not oldest.records:
                break  # only the fresh segment is left
            if self.total_bytes + incoming > self.max_bytes:
                reason = "max_bytes"
            elif self.max_age is not None and self._monotonic() - oldest.newest_monotonic > self.max_age:
                reason = "max_age"
            elif free is not None and free - incoming < self.min_free:
                reason = "min_free"
                free += oldest.size
            else:
                break
            reasons.append(reason)
            self._drop_oldest()
        if reasons:
            self._note_dropping(reasons)

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

    def _drop_oldest(self) -> None:
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
            reader.segment_dropped(oldest, following)

    def _apply(self, events: Sequence[_SegmentEvent]) -> None:
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
        saved = await asyncio.to_thread(self._save_cursors_blocking, [(r.name, p) for r, p in dirty])
        for (reader, position), ok in zip(dirty, saved, strict=True):
            if ok:
                reader.saved = position

    def _save_cursors_blocking(self, cursors: list[tuple[str, Position]]) -> list[bool]:
        saved = []
        for name, position in cursors:
            path = self._cursor_path(name)
            temporary = path.with_suffix(".tmp")
            document = {"segment": position.segment, "offset": position.offset, "index": position.in_segment}
            try:
                with temporary.open("w") as file:
                    json.dump(document, file)
                    file.flush()
                    os.fsync(file.fileno())
                temporary.replace(path)  # atomic: a crash leaves the old cursor or the new one
            except OSError as error:
                if not self._cursor_error_logged:  # once: the disk is full or failing, the spool says so already
                    log.error("spool_cursor_not_saved", output=name, error=str(error))
                    self._cursor_error_logged = True
                saved.append(False)
                continue
            self._cursor_error_logged = False
            saved.append(True)
        with contextlib.suppress(OSError):
            fmt.fsync_directory(self.directory / CURSOR_DIR)
        return saved

    async def _delete_consumed(self) -> None:
        """Delete the sealed segments that every reader's persisted cursor has passed."""
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


def _id_of(path: Path) -> int | None:
    stem = path.name.removesuffix(fmt.SEGMENT_SUFFIX)
    return int(stem) if stem.isdigit() else None


@dataclass(slots=True)
class _Ahead:
    record: Record
    end: Position


class SpoolReader:
    """One output's view of the spool: the :class:`~edge_daq.buffer.ring.BatchSource` interface over disk.

    ``committed`` is what the output acknowledged, ``saved`` what is persisted; reading runs ahead of both,
    at most one batch (read from disk in a worker thread while :meth:`wait` waits).
    """

    def __init__(self, spool: Spool, name: str, start: Position, stats: OutputStats | None) -> None:
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
        self._in_flight: dict[int, Position] = {}
        self._in_flight_oldest_ns: int | None = None
        self._series: dict[int, Series] = {}
        self._series_segment = start.segment
        self._lost = 0
        self._ready = asyncio.Event()
        self._wanted = 1
        self._fill_hint = READ_AHEAD_RECORDS
        self._woken = False
        self._generation = 0  # bumped when a drop moves the reader, so that a read in flight is discarded

    # -- BatchSource

    @property
    def pending(self) -> int:
        return max(0, self._spool.end_seq - self.committed.seq)

    @property
    def unread(self) -> int:
        return max(0, self._spool.end_seq - self._handed_out.seq)

    @property
    def lost(self) -> int:
        return self._lost

    async def wait(self, min_records: int = 1, max_wait: float | None = None) -> bool:
        deadline = None if max_wait is None else asyncio.get_running_loop().time() + max_wait
        self._wanted = min_records
        try:
            async with asyncio.timeout_at(deadline):
                while self.unread < min_records and not self._woken:
                    self._ready.clear()
                    await self._ready.wait()
        except TimeoutError:
            pass
        finally:
            self._wanted = 1
        await self._fill(max(min_records, self._fill_hint))
        return self.unread >= min_records

    def wake(self) -> None:
        self._woken = True
        self._ready.set()

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
        self._handed_out = end
        if records and not self._in_flight:
            self._in_flight_oldest_ns = records[0].time_ns
        self._in_flight[end.packed] = end
        return Batch(records, end.packed)

    def commit(self, batch: Batch) -> None:
        position = self._in_flight.pop(batch.end, None)
        if position is None:
            return
        for packed in [p for p in self._in_flight if p < batch.end]:
            del self._in_flight[packed]
        if self._spool.segment(position.segment) is None and not self._in_flight:
            position = self._handed_out  # its segment was dropped meanwhile: continue where reading is
        if position.seq > self.committed.seq or position.packed > self.committed.packed:
            self.committed = position
        if not self._in_flight:
            self._in_flight_oldest_ns = None
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
                intern=self._spool.intern,
            )
        except FileNotFoundError:
            return None  # dropped by a cap meanwhile: the drop already moved this reader on
        except OSError as error:
            log.error("spool_read_failed", output=self.name, segment=segment.path.name, error=str(error))
            return fmt.DecodedChunk(end=stop, corrupt_regions=1)

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
        if chunk is None or generation != self._generation or start != self._disk:
            return False
        index, seq = start.in_segment, start.seq
        for record, end in zip(chunk.records, chunk.ends, strict=True):
            index += 1
            seq += 1
            self._ahead.append(_Ahead(record, Position(segment.id, end, index, seq)))
        damaged = chunk.corrupt_regions + chunk.undecodable
        if damaged:
            self._lost += damaged
            if start.offset >= segment.checked_upto:
                self._spool.stats.corrupt_records += damaged
                log.error("spool_records_corrupt", output=self.name, segment=segment.path.name, records=damaged)
            segment.checked_upto = max(segment.checked_upto, chunk.end)
        if chunk.end >= segment.size and segment.sealed:
            # Records the seal counts but that could not be read back were skipped with the damage.
            index, seq = segment.records, max(seq, segment.end_seq)
        self._disk = Position(segment.id, chunk.end, index, seq)
        return chunk.end > start.offset

    def _move_disk(self, position: Position) -> None:
        self._disk = position
        if position.segment != self._series_segment:
            self._series = {}
            self._series_segment = position.segment

    # -- called by the spool

    def data_arrived(self) -> None:
        if self.unread >= self._wanted:
            self._ready.set()

    def segment_dropped(self, dropped: Segment, following: Segment | None) -> None:
        """A cap dropped ``dropped``: count what this reader had not handed out yet, and move past it."""
        if self._handed_out.segment > dropped.id:
            return
        already_out = self._handed_out.in_segment if self._handed_out.segment == dropped.id else 0
        self._lost += max(0, dropped.records - already_out)
        self._ahead = deque(item for item in self._ahead if item.end.segment != dropped.id)
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
        self.refresh_stats()

    def add_lost(self, count: int) -> None:
        self._lost += count

    def saved_passed(self, segment: Segment) -> bool:
        saved = self.saved
        if saved.segment != segment.id:
            return saved.segment > segment.id
        return segment.sealed and (saved.offset >= segment.size or saved.in_segment >= segment.records)

    def refresh_stats(self) -> None:
        stats = self.stats
        if stats is None:
            return
        stats.lost = self._lost
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


def open_spool(config: BufferConfig, ring: RingBuffer, stats: SpoolStats) -> Spool | None:
    """The spool the buffer config asks for, or None for a memory-only gateway.

    A spool folder that cannot be used (permissions, a read-only file system) is logged as an error and the
    gateway runs memory-only rather than not at all: acquisition matters more than the disk.
    """
    if config.spool_dir is None:
        return None
    try:
        return Spool(
            config.spool_dir,
            ring,
            max_bytes=config.spool_max_bytes,
            max_age=config.spool_max_age,
            min_free=config.spool_min_free,
            fsync_interval=config.fsync_interval,
            segment_bytes=config.spool_segment_bytes,
            stats=stats,
        )
    except OSError as error:
        log.error("spool_unavailable", spool_dir=str(config.spool_dir), error=str(error), buffer="memory only")
        return None
