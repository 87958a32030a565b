"""The segment writer: appends framed records to the current segment, rotates, seals, deletes dropped files.

Every method runs in a worker thread, one at a time (a lock guards against a write abandoned by a cancelled
task still running when :meth:`SegmentWriter.close` is called).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from edge_daq.buffer import segment as fmt
from edge_daq.record import Record

log = structlog.get_logger("edge_daq.spool")


@dataclass(slots=True)
class ActiveFile:
    """The segment being written."""

    id: int
    path: Path
    fd: int
    size: int
    base: int
    records: int = 0
    first_time_ns: int = 0
    last_time_ns: int = 0


@dataclass(slots=True)
class SegmentEvent:
    """A change to apply to the in-memory metadata once a write is on disk."""

    id: int
    path: Path
    size: int
    records: int
    first_time_ns: int
    last_time_ns: int
    sealed: bool
    base: int


@dataclass(slots=True)
class WriteOutcome:
    events: list[SegmentEvent] = field(default_factory=list)
    written: int = 0
    """Records of the batch now in segment files or refused as unencodable (all, unless ``error``)."""
    unencodable: int = 0
    error: OSError | None = None


class SegmentWriter:
    def __init__(self, directory: Path, segment_bytes: int, wall_ns: Callable[[], int], next_base: int) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.wall_ns = wall_ns
        self.encoder = fmt.SeriesEncoder()
        self.active: ActiveFile | None = None
        self.next_base = next_base
        """Spool-wide number of the next record: the base of the next segment opened."""
        # Never reuse an id, not even one of a segment set aside as corrupt or dropped a moment ago.
        names = (p.name[:16] for p in directory.iterdir() if fmt.SEGMENT_SUFFIX in p.name)
        self.last_id = max((int(name) for name in names if name.isdigit()), default=0)
        self._lock = threading.Lock()

    def open_segment(self) -> SegmentEvent:
        self.last_id += 1
        segment_id = self.last_id
        path = self.directory / fmt.segment_name(segment_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
        try:
            fmt.write_all(fd, [fmt.encode_header(segment_id, self.wall_ns(), self.next_base)])
            os.fsync(fd)
            fmt.fsync_directory(self.directory)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self.active = ActiveFile(segment_id, path, fd, fmt.HEADER_SIZE, self.next_base)
        self.encoder.new_segment()
        return self._event(self.active, sealed=False)

    def release(self, paths: Iterable[Path], *, abandon_active: bool) -> None:
        """Delete segments a cap dropped (closing the current one first if it is among them)."""
        with self._lock:
            if abandon_active and self.active is not None:
                with contextlib.suppress(OSError):
                    os.close(self.active.fd)
                self.next_base = self.active.base + self.active.records
                self.active = None
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            with contextlib.suppress(OSError):
                fmt.fsync_directory(self.directory)

    def write(self, records: Sequence[Record]) -> WriteOutcome:
        """Append ``records`` (rotating as needed) and fsync."""
        outcome = WriteOutcome()
        with self._lock:
            try:
                if self.active is None:
                    outcome.events.append(self.open_segment())
                self._append(records, outcome)
            except OSError as error:
                outcome.error = error
                if self.active is not None:
                    # Whatever state the failed write left (and the series it defined), start afresh next time.
                    outcome.events.append(self._retire(self.active))
        return outcome

    def _append(self, records: Sequence[Record], outcome: WriteOutcome) -> None:
        active = self.active
        assert active is not None
        frames: list[bytes] = []
        size, count, first, last = active.size, active.records, active.first_time_ns, active.last_time_ns
        unencodable = 0
        for done, record in enumerate(records):
            if size >= self.segment_bytes and count:
                self._flush(active, frames, size, count, first, last)
                frames = []
                outcome.events.append(self._seal(active))
                outcome.written, outcome.unencodable = done, unencodable
                outcome.events.append(self.open_segment())
                active = self.active
                assert active is not None
                size, count, first, last = active.size, 0, 0, 0
            before = len(frames)
            try:
                self.encoder.encode(record, count, frames)
            except ValueError as error:
                del frames[before:]
                if not unencodable:
                    log.error("spool_record_not_encodable", measurement=record.measurement, error=str(error))
                unencodable += 1
                continue
            size += sum(len(frame) for frame in frames[before:])
            if count == 0:
                first = record.time_ns
            last = record.time_ns
            count += 1
        self._flush(active, frames, size, count, first, last)
        outcome.written, outcome.unencodable = len(records), unencodable
        # In the file now: a failing fsync still publishes them (at-least-once).
        os.fsync(active.fd)
        outcome.events.append(self._event(active, sealed=False))

    def _flush(self, active: ActiveFile, frames: list[bytes], size: int, count: int, first: int, last: int) -> None:
        try:
            fmt.write_all(active.fd, frames)
        except OSError:
            # A partial write must not leave half a batch behind: cut back to the last whole state.
            with contextlib.suppress(OSError):
                os.ftruncate(active.fd, active.size)
            raise
        active.size, active.records, active.first_time_ns, active.last_time_ns = size, count, first, last

    def _seal(self, active: ActiveFile) -> SegmentEvent:
        seal = fmt.encode_seal(active.records, active.first_time_ns, active.last_time_ns, active.base)
        self.active = None
        self.next_base = active.base + active.records
        try:
            fmt.write_all(active.fd, [seal])
            os.fsync(active.fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(active.fd, active.size)  # no half seal: the next start scans the segment
            raise
        finally:
            os.close(active.fd)
        active.size += len(seal)
        return self._event(active, sealed=True)

    def _retire(self, active: ActiveFile) -> SegmentEvent:
        """Close the segment after a failed write: cut it back to its last whole frame and seal it if possible.

        Without room for the seal it is left unsealed on disk (the next start scans it) but is finished for
        the readers either way.
        """
        # If cutting back fails, the seal's own failure path cuts back again, or the next start scans the segment.
        with contextlib.suppress(OSError):
            os.ftruncate(active.fd, active.size)
        with contextlib.suppress(OSError):
            self._seal(active)
        self.active = None
        self.next_base = active.base + active.records
        return self._event(active, sealed=True)

    def close(self) -> None:
        """Seal the current segment, so that the next start reads its trailer instead of scanning it."""
        with self._lock:
            active = self.active
            if active is not None:
                try:
                    self._seal(active)
                except OSError as error:
                    log.error("spool_seal_failed", segment=active.path.name, error=str(error))

    @staticmethod
    def _event(active: ActiveFile, *, sealed: bool) -> SegmentEvent:
        return SegmentEvent(
            active.id,
            active.path,
            active.size,
            active.records,
            active.first_time_ns,
            active.last_time_ns,
            sealed,
            active.base,
        )
