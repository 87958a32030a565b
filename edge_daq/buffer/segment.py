"""The on-disk format of the spool: append-only segment files of checksummed frames.

A segment file is a header followed by frames::

    header   "EDQSPOOL" | u16 version | u16 reserved | u64 segment id | i64 created (wall ns) | u32 crc32
    frame    "\\xedQ" | u8 kind | u32 payload length | u32 crc32(kind, length, payload) | payload

Frame kinds:

- ``SERIES``: ``u32 series id`` + marshal of ``(measurement, tags)``. Written once per series per segment,
  before its first record, so every segment decodes on its own and a deleted segment takes nothing with it.
- ``RECORD``: ``u32 series id | i64 time ns`` + marshal of the fields dict (marshal keeps bool, int, float and
  str apart and is implemented in C; the checksum, not marshal, is what guards against corruption).
- ``SEAL``: ``u64 records | i64 first time ns | i64 last time ns``: the last frame of a finished segment, so
  that opening the spool reads one small trailer per segment instead of scanning it.

The two sync bytes let a reader find the next frame after a corrupt one (a damaged length cannot derail it):
it searches forward for a sync word whose frame checksums. Everything here is synchronous file I/O: the spool
calls it from worker threads.
"""

from __future__ import annotations

import marshal
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from edge_daq.record import FieldValue, Record, Series

MAGIC = b"EDQSPOOL"
VERSION = 1
_HEADER = struct.Struct("<8sHHQq")
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size + _CRC.size

SYNC = b"\xedQ"
_FRAME = struct.Struct("<2sBI")
FRAME_OVERHEAD = _FRAME.size + _CRC.size
MAX_PAYLOAD = 16 << 20  # far above any real record; a larger length is damage

SERIES, RECORD, SEAL = 1, 2, 3
_KINDS = frozenset((SERIES, RECORD, SEAL))
_SERIES_ID = struct.Struct("<I")
_RECORD_HEAD = struct.Struct("<Iq")
_SEAL = struct.Struct("<Qqq")
SEAL_FRAME_SIZE = FRAME_OVERHEAD + _SEAL.size

SEGMENT_SUFFIX = ".seg"
CORRUPT_SUFFIX = ".corrupt"


def segment_name(segment_id: int) -> str:
    return f"{segment_id:016d}{SEGMENT_SUFFIX}"


def encode_header(segment_id: int, created_ns: int) -> bytes:
    head = _HEADER.pack(MAGIC, VERSION, 0, segment_id, created_ns)
    return head + _CRC.pack(zlib.crc32(head))


def decode_header(data: bytes) -> tuple[int, int] | None:
    """``(segment id, created ns)``, or None if the header is damaged or of another format."""
    if len(data) < HEADER_SIZE:
        return None
    head = data[: _HEADER.size]
    (crc,) = _CRC.unpack_from(data, _HEADER.size)
    if zlib.crc32(head) != crc:
        return None
    magic, version, _, segment_id, created_ns = _HEADER.unpack(head)
    if magic != MAGIC or version != VERSION:
        return None
    return segment_id, created_ns


def encode_frame(kind: int, payload: bytes) -> bytes:
    head = _FRAME.pack(SYNC, kind, len(payload))
    return head + _CRC.pack(zlib.crc32(payload, zlib.crc32(head))) + payload


def encode_seal(records: int, first_time_ns: int, last_time_ns: int) -> bytes:
    return encode_frame(SEAL, _SEAL.pack(records, first_time_ns, last_time_ns))


def decode_seal(data: bytes) -> tuple[int, int, int] | None:
    """The trailer's ``(records, first time, last time)`` from a segment's last bytes, if it is a valid seal."""
    if len(data) != SEAL_FRAME_SIZE:
        return None
    frames = FrameScan(data)
    frame = frames.next_frame()
    if frame is None or frame[0] != SEAL or frames.corrupt_regions or frames.position != len(data):
        return None
    values: tuple[int, int, int] = _SEAL.unpack(frame[1])
    return values


class SeriesEncoder:
    """Frames records, defining each series once per segment; call :meth:`new_segment` on rotation."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._defined: set[int] = set()

    def new_segment(self) -> None:
        self._defined = set()

    def encode(self, record: Record, out: list[bytes]) -> None:
        series = record.series
        series_id = self._ids.get(series.line_prefix)
        if series_id is None:
            series_id = self._ids[series.line_prefix] = len(self._ids)
        if series_id not in self._defined:
            self._defined.add(series_id)
            definition = marshal.dumps((series.measurement, dict(series.tags)))
            out.append(encode_frame(SERIES, _SERIES_ID.pack(series_id) + definition))
        payload = _RECORD_HEAD.pack(series_id, record.time_ns) + marshal.dumps(record.fields)
        out.append(encode_frame(RECORD, payload))


class FrameScan:
    """Walks the frames of a buffer that starts at a frame boundary, resynchronising after damage.

    ``next_frame`` returns ``(kind, payload)`` and leaves ``position`` after the frame, or None when the rest
    of the buffer holds no complete frame. Damaged bytes are skipped up to the next frame that checksums;
    each damaged stretch counts once in ``corrupt_regions``. In a ``final`` buffer (it ends where the data
    ends) an incomplete or damaged stretch at the very end is skipped without being counted: that is a torn
    tail, which the caller cuts off.
    """

    def __init__(self, data: bytes, position: int = 0, *, final: bool = True) -> None:
        self.data = data
        self.position = position
        self.final = final
        self.corrupt_regions = 0

    def _frame_at(self, start: int) -> tuple[int, bytes, int] | bool | None:
        """The frame at ``start`` as ``(kind, payload, end)``; None if incomplete here; False if damaged."""
        data = self.data
        if start + FRAME_OVERHEAD > len(data):
            return None
        sync, kind, length = _FRAME.unpack_from(data, start)
        if sync != SYNC or kind not in _KINDS or length > MAX_PAYLOAD:
            return False
        end = start + FRAME_OVERHEAD + length
        if end > len(data):
            return None
        (crc,) = _CRC.unpack_from(data, start + _FRAME.size)
        payload = data[start + FRAME_OVERHEAD : end]
        if zlib.crc32(payload, zlib.crc32(data[start : start + _FRAME.size])) != crc:
            return False
        return kind, payload, end

    def next_frame(self) -> tuple[int, bytes] | None:
        start = self.position
        found = self._frame_at(start)
        if found is None:
            if not self.final or start >= len(self.data):
                return None  # the caller reads on (or the data ended cleanly)
            found = False
        if found is False:
            found = self._resync(start + 1)
            if found is None:
                return None
        assert isinstance(found, tuple)
        kind, payload, end = found
        self.position = end
        return kind, payload

    def _resync(self, search: int) -> tuple[int, bytes, int] | None:
        """The first valid frame from ``search`` on, with ``position`` moved to it; None if there is none."""
        data = self.data
        while True:
            candidate = data.find(SYNC, search)
            if candidate < 0:
                if self.final:
                    self.position = len(data)  # damage up to the end: a torn tail
                    return None
                # Keep the last bytes for the next read, in case a frame header straddles the boundary.
                self.position = max(search, len(data) - FRAME_OVERHEAD)
                self.corrupt_regions += 1
                return None
            found = self._frame_at(candidate)
            if isinstance(found, tuple):
                self.corrupt_regions += 1
                self.position = candidate
                return found
            if found is None and not self.final:
                self.corrupt_regions += 1
                self.position = candidate
                return None
            search = candidate + 1


class FrameReader:
    """The frames of ``[start, stop)`` of an open segment, read in chunks: ``(kind, payload, end offset)``."""

    def __init__(self, file: BinaryIO, start: int, stop: int, *, chunk_bytes: int = 1 << 20) -> None:
        self._file = file
        self._start = start
        self._stop = stop
        self._chunk_bytes = chunk_bytes
        self._counted = 0
        self._scan: FrameScan | None = None

    @property
    def corrupt_regions(self) -> int:
        return self._counted + (self._scan.corrupt_regions if self._scan else 0)

    def __iter__(self) -> Iterator[tuple[int, bytes, int]]:
        offset, carry = self._start, b""
        self._file.seek(offset)
        while True:
            wanted = min(self._chunk_bytes, self._stop - offset - len(carry))
            chunk = self._file.read(wanted) if wanted > 0 else b""
            data = carry + chunk
            final = not chunk or offset + len(data) >= self._stop
            if self._scan is not None:
                self._counted += self._scan.corrupt_regions
            scan = self._scan = FrameScan(data, final=final)
            while (frame := scan.next_frame()) is not None:
                yield frame[0], frame[1], offset + scan.position
            if final:
                return
            # An incomplete frame stays in the carry and grows with the next chunk until it is whole.
            offset += scan.position
            carry = data[scan.position :]


@dataclass(slots=True)
class ScanResult:
    """What a full scan of a segment found (used on start for a segment without a valid seal)."""

    valid_end: int
    records: int = 0
    first_time_ns: int = 0
    last_time_ns: int = 0
    corrupt_regions: int = 0


def scan_segment(path: Path) -> ScanResult:
    """Checksum every frame of a segment; ``valid_end`` is the end of its last valid frame."""
    result = ScanResult(valid_end=HEADER_SIZE)
    with path.open("rb") as file:
        frames = FrameReader(file, HEADER_SIZE, os.fstat(file.fileno()).st_size, chunk_bytes=4 << 20)
        for kind, payload, end in frames:
            if kind == RECORD:
                time_ns = _RECORD_HEAD.unpack_from(payload)[1]
                if result.records == 0:
                    result.first_time_ns = time_ns
                result.last_time_ns = time_ns
                result.records += 1
            result.valid_end = end
        result.corrupt_regions = frames.corrupt_regions
    return result


@dataclass(slots=True)
class DecodedChunk:
    """Records decoded from one read of a segment, each with the offset just after it."""

    records: list[Record] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    end: int = 0
    """Where the next read starts."""
    corrupt_regions: int = 0
    undecodable: int = 0
    """Records that checksummed but could not be decoded (their series definition was damaged)."""


SeriesInterner = Callable[[str, dict[str, str]], Series]


def read_records(
    path: Path,
    start: int,
    stop: int,
    *,
    max_records: int,
    max_bytes: int,
    series: dict[int, Series],
    intern: SeriesInterner,
) -> DecodedChunk:
    """Decode up to ``max_records`` records from ``[start, stop)``; ``series`` is the segment's series table.

    Raises FileNotFoundError if the segment was deleted meanwhile.
    """
    chunk = DecodedChunk(end=start)
    with path.open("rb") as file:
        if start > HEADER_SIZE and not series:
            # A reader resuming in the middle of a segment needs the series defined before its position.
            for kind, payload, _ in FrameReader(file, HEADER_SIZE, start, chunk_bytes=max_bytes):
                if kind == SERIES:
                    _define_series(payload, series, intern)
        frames = FrameReader(file, start, stop, chunk_bytes=max_bytes)
        for kind, payload, end in frames:
            chunk.end = end
            if kind == SERIES:
                _define_series(payload, series, intern)
            elif kind == RECORD:
                series_id, time_ns = _RECORD_HEAD.unpack_from(payload)
                known = series.get(series_id)
                fields = _load_fields(payload)
                if known is None or fields is None:
                    chunk.undecodable += 1
                    continue
                chunk.records.append(Record(known, fields, time_ns))
                chunk.ends.append(end)
                if len(chunk.records) >= max_records:
                    break
        else:
            chunk.end = stop  # everything up to stop was read, damage at the end included
        chunk.corrupt_regions = frames.corrupt_regions
    return chunk


def _load_fields(payload: bytes) -> dict[str, FieldValue] | None:
    try:
        fields = marshal.loads(payload[_RECORD_HEAD.size :])
    except (ValueError, EOFError, TypeError):
        return None
    return fields if isinstance(fields, dict) else None


def _define_series(payload: bytes, series: dict[int, Series], intern: SeriesInterner) -> None:
    (series_id,) = _SERIES_ID.unpack_from(payload)
    try:
        measurement, tags = marshal.loads(payload[_SERIES_ID.size :])
    except (ValueError, EOFError, TypeError):
        return
    if isinstance(measurement, str) and isinstance(tags, dict):
        series[series_id] = intern(measurement, tags)


def write_all(fd: int, chunks: Iterable[bytes]) -> int:
    """Write every chunk (retrying short writes); the bytes written."""
    total = 0
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            written = os.write(fd, view)
            view = view[written:]
            total += written
    return total


def fsync_directory(directory: Path) -> None:
    """Make a created, renamed or deleted entry of ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
