"""The on-disk format of the spool (version 2): append-only segment files of checksummed frames.

A segment file ``<id, 16 digits>.seg`` is a header followed by frames; all integers little-endian::

    header v2  "EDQSPOOL" | u16 version=2 | u16 0 | u64 segment id | i64 created (wall ns) | u64 base | u32 crc32
    frame      "\\xedQ" | u8 kind | u32 payload length | u32 crc32(kind, length, payload) | payload

``base`` is the spool-wide number of the segment's first record: numbers run on across segments and restarts,
so the records a missing or truncated segment held are known exactly from its neighbours.

Frame kinds of version 2 (payloads are msgpack, https://msgpack.org, which keeps bool, int, float and str apart
and belongs to no interpreter version):

- ``SERIES`` (4): ``u32 series id`` + msgpack ``[measurement, {tag: value}]``.
- ``KEYS`` (7): ``u32 keys id`` + msgpack ``[field name, ...]``: the field names of records, in order.
- ``RECORD`` (5): ``u32 series id | u32 keys id | u32 index in segment | i64 time ns`` + msgpack
  ``[value, ...]``, one value per name of its ``KEYS``. The index makes every lost record countable: a gap in
  the indices is a number of records. (Names once per segment, values per record: smaller, and faster to
  encode and decode than marshal's dicts.)

A series or keys definition is written before its first record in a segment and again after every
``SERIES_REPEAT`` records, so one damaged definition costs at most the records that need it up to the next one.
Ids mean something only inside a segment (the latest definition of an id before a record is the one it uses).
- ``SEAL`` (6): ``u64 records | i64 first time ns | i64 last time ns | u64 base``: the last frame of a finished
  segment, so that opening the spool reads one small trailer per segment instead of scanning it (and a damaged
  header costs nothing: the id is in the file name, the base in the seal).

Version 1 (the release before, read for the upgrade, never written): a 32-byte header without ``base``, kinds
1, 2, 3 with ``marshal`` payloads, a record frame without index, a seal without base.

The frame kinds differ between versions, so every frame says how to decode it, whatever the header says. The
two sync bytes let a reader find the next frame after damage (a damaged length cannot derail it): it searches
forward for a sync word whose frame checksums. Everything here is synchronous file I/O: the spool calls it from
worker threads.
"""

from __future__ import annotations

import marshal
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from edge_daq.record import Record, Series

MAGIC = b"EDQSPOOL"
VERSION = 2
_CRC = struct.Struct("<I")
_HEADER_V1 = struct.Struct("<8sHHQq")
_HEADER = struct.Struct("<8sHHQqQ")
HEADER_V1_SIZE = _HEADER_V1.size + _CRC.size
HEADER_SIZE = _HEADER.size + _CRC.size

SYNC = b"\xedQ"
_FRAME = struct.Struct("<2sBI")
FRAME_OVERHEAD = _FRAME.size + _CRC.size
MAX_PAYLOAD = 16 << 20  # far above any real record; a larger length is damage

SERIES_V1, RECORD_V1, SEAL_V1 = 1, 2, 3
SERIES, RECORD, SEAL, KEYS = 4, 5, 6, 7
RECORD_KINDS = frozenset((RECORD, RECORD_V1))
DEFINITION_KINDS = frozenset((SERIES, SERIES_V1, KEYS))
_KINDS = frozenset((SERIES_V1, RECORD_V1, SEAL_V1, SERIES, RECORD, SEAL, KEYS))
MAX_KEY_SETS = 10_000
"""Distinct field-name sets the encoder numbers before it starts afresh (points that fail make subsets)."""
SERIES_REPEAT = 1000
"""Records between two definitions of every series in use: what one damaged definition can cost at most."""

_SERIES_ID = struct.Struct("<I")
_RECORD_HEAD_V1 = struct.Struct("<Iq")
_RECORD_HEAD = struct.Struct("<IIIq")
_SEAL_V1 = struct.Struct("<Qqq")
_SEAL = struct.Struct("<QqqQ")
SEAL_V1_FRAME_SIZE = FRAME_OVERHEAD + _SEAL_V1.size
SEAL_FRAME_SIZE = FRAME_OVERHEAD + _SEAL.size

SEGMENT_SUFFIX = ".seg"
CORRUPT_SUFFIX = ".corrupt"


def segment_name(segment_id: int) -> str:
    return f"{segment_id:016d}{SEGMENT_SUFFIX}"


def segment_id_of(path: Path) -> int | None:
    stem = path.name.removesuffix(SEGMENT_SUFFIX)
    return int(stem) if stem.isdigit() and path.name.endswith(SEGMENT_SUFFIX) else None


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    segment_id: int
    created_ns: int
    base: int | None
    """Spool-wide number of the first record (None in version 1)."""

    @property
    def size(self) -> int:
        return HEADER_SIZE if self.version == VERSION else HEADER_V1_SIZE


def encode_header(segment_id: int, created_ns: int, base: int = 0) -> bytes:
    head = _HEADER.pack(MAGIC, VERSION, 0, segment_id, created_ns, base)
    return head + _CRC.pack(zlib.crc32(head))


def decode_header(data: bytes) -> Header | None:
    """The header of a version 2 or version 1 segment, or None if it is damaged or of another format."""
    for layout, version in ((_HEADER, VERSION), (_HEADER_V1, 1)):
        if len(data) < layout.size + _CRC.size:
            continue
        head = data[: layout.size]
        if zlib.crc32(head) != _CRC.unpack_from(data, layout.size)[0]:
            continue
        values = layout.unpack(head)
        if values[0] != MAGIC or values[1] != version:
            continue
        return Header(version, values[3], values[4], values[5] if version == VERSION else None)
    return None


def encode_frame(kind: int, payload: bytes) -> bytes:
    head = _FRAME.pack(SYNC, kind, len(payload))
    return head + _CRC.pack(zlib.crc32(payload, zlib.crc32(head))) + payload


@dataclass(frozen=True, slots=True)
class Seal:
    records: int
    first_time_ns: int
    last_time_ns: int
    base: int | None


def encode_seal(records: int, first_time_ns: int, last_time_ns: int, base: int) -> bytes:
    return encode_frame(SEAL, _SEAL.pack(records, first_time_ns, last_time_ns, base))


def encode_seal_v1(records: int, first_time_ns: int, last_time_ns: int) -> bytes:
    """Only to seal again a version 1 segment repaired at start (its records have no spool-wide number)."""
    return encode_frame(SEAL_V1, _SEAL_V1.pack(records, first_time_ns, last_time_ns))


def decode_seal(tail: bytes) -> Seal | None:
    """The seal that ends ``tail`` (a segment's last ``SEAL_FRAME_SIZE`` bytes or fewer), if there is a valid one."""
    for size, kind in ((SEAL_FRAME_SIZE, SEAL), (SEAL_V1_FRAME_SIZE, SEAL_V1)):
        if len(tail) < size:
            continue
        frames = FrameScan(tail[-size:])
        frame = frames.next_frame()
        if frame is None or frame[0] != kind or frames.corrupt_regions or frames.position != size:
            continue
        if kind == SEAL:
            records, first, last, base = _SEAL.unpack(frame[1])
            return Seal(records, first, last, base)
        records, first, last = _SEAL_V1.unpack(frame[1])
        return Seal(records, first, last, None)
    return None


class SeriesEncoder:
    """Frames records; call :meth:`new_segment` on rotation (each segment decodes on its own)."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._key_ids: dict[tuple[str, ...], int] = {}
        self._defined: set[int] = set()
        self._defined_keys: set[int] = set()
        self._since_definitions = 0
        self._packer = msgpack.Packer()

    def new_segment(self) -> None:
        self._defined = set()
        self._defined_keys = set()
        self._since_definitions = 0

    def encode(self, record: Record, index: int, out: list[bytes]) -> None:
        """Append the frames of ``record``, the ``index``-th of its segment; raises ValueError if unencodable."""
        series = record.series
        fields = record.fields
        series_id = self._ids.get(series.line_prefix)
        if series_id is None:
            series_id = self._ids[series.line_prefix] = len(self._ids)
        names = tuple(fields)
        keys_id = self._key_ids.get(names)
        if keys_id is None:
            if len(self._key_ids) >= MAX_KEY_SETS:
                self._key_ids.clear()  # ids are reused from here on, each defined again before its next use
                self._defined_keys = set()
            keys_id = self._key_ids[names] = len(self._key_ids)
        self._since_definitions += 1
        if self._since_definitions > SERIES_REPEAT:
            self._defined.clear()
            self._defined_keys.clear()
            self._since_definitions = 1
        try:
            values = self._packer.pack(list(fields.values()))
            if series_id not in self._defined:
                definition = self._packer.pack([series.measurement, dict(series.tags)])
                out.append(encode_frame(SERIES, _SERIES_ID.pack(series_id) + definition))
                self._defined.add(series_id)
            if keys_id not in self._defined_keys:
                out.append(encode_frame(KEYS, _SERIES_ID.pack(keys_id) + self._packer.pack(names)))
                self._defined_keys.add(keys_id)
        except (OverflowError, TypeError) as error:  # an int beyond 64 bits, or a value of no field type
            self._packer.reset()
            raise ValueError(f"record not encodable: {error}") from error
        out.append(encode_frame(RECORD, _RECORD_HEAD.pack(series_id, keys_id, index, record.time_ns) + values))


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


def record_index(kind: int, payload: bytes) -> int | None:
    """The index in its segment that a version 2 record frame carries (None for version 1)."""
    return _RECORD_HEAD.unpack_from(payload)[2] if kind == RECORD else None


def record_time(kind: int, payload: bytes) -> int:
    head = _RECORD_HEAD if kind == RECORD else _RECORD_HEAD_V1
    time_ns: int = head.unpack_from(payload)[-1]
    return time_ns


@dataclass(slots=True)
class ScanResult:
    """What a full scan of a segment found (on start, for a segment without a valid seal or header)."""

    data_start: int
    """Where the first frame is (the header's end, or the first valid frame after a damaged header)."""
    valid_end: int
    records: int = 0
    """Record frames that checksum."""
    next_index: int = 0
    """One past the highest record index seen: the records the segment held up to its last valid frame."""
    first_time_ns: int = 0
    last_time_ns: int = 0
    seal: Seal | None = None
    version: int = VERSION
    """Of the record frames found (what matters when the header is damaged)."""


def scan_segment(path: Path, data_start: int | None = None) -> ScanResult:
    """Checksum every frame; ``valid_end`` is the end of the last valid frame (a seal ends the scan).

    With ``data_start`` None the header is taken as damaged and frames are searched from the first byte.
    """
    result = ScanResult(data_start=data_start if data_start is not None else 0, valid_end=data_start or 0)
    with path.open("rb") as file:
        start = result.data_start
        frames = FrameReader(file, start, os.fstat(file.fileno()).st_size, chunk_bytes=4 << 20)
        for kind, payload, end in frames:
            if data_start is None and result.valid_end == 0:
                result.data_start = end - FRAME_OVERHEAD - len(payload)
            if kind in RECORD_KINDS:
                time_ns = record_time(kind, payload)
                if result.records == 0:
                    result.first_time_ns = time_ns
                result.last_time_ns = time_ns
                result.records += 1
                index = record_index(kind, payload)
                result.version = VERSION if index is not None else 1
                result.next_index = max(result.next_index + (index is None), (index or 0) + 1)
            elif kind in (SEAL, SEAL_V1):
                result.seal = decode_seal(encode_frame(kind, payload))
            result.valid_end = end
        if result.valid_end == 0:
            result.data_start = result.valid_end = HEADER_SIZE if data_start is None else data_start
    return result


@dataclass(slots=True)
class DecodedChunk:
    """Records decoded from one read of a segment, each with the offset just after it."""

    records: list[Record] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    end: int = 0
    """Where the next read starts."""
    next_index: int = 0
    """The index of the next record after ``end``."""
    missing: int = 0
    """Records before ``next_index`` that this read could not give back (damaged frames or definitions)."""
    corrupt_regions: int = 0


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
    keys: dict[int, tuple[str, ...]] | None = None,
    start_index: int = 0,
    data_start: int = HEADER_SIZE,
) -> DecodedChunk:
    """Decode up to ``max_records`` records from ``[start, stop)``; ``series`` is the segment's series table.

    ``keys`` is the segment's table of field names (kept by a reader across reads, like ``series``).
    ``start_index`` is the index of the first record at ``start``. A version 2 record carries its index, so
    records skipped by damage are counted exactly in ``missing``; in version 1 only the seal can tell.
    Raises FileNotFoundError if the segment was deleted meanwhile.
    """
    chunk = DecodedChunk(end=start, next_index=start_index)
    expected = start_index
    keys = {} if keys is None else keys
    with path.open("rb") as file:
        if start > data_start and not series:
            # A reader resuming in the middle of a segment needs the definitions made before its position.
            for kind, payload, _ in FrameReader(file, data_start, start, chunk_bytes=max_bytes):
                if kind in DEFINITION_KINDS:
                    _define(kind, payload, series, keys, intern)
        frames = FrameReader(file, start, stop, chunk_bytes=max_bytes)
        for kind, payload, end in frames:
            chunk.end = end
            if kind in DEFINITION_KINDS:
                _define(kind, payload, series, keys, intern)
                continue
            if kind not in RECORD_KINDS:
                continue
            if kind == RECORD:
                series_id, keys_id, index, time_ns = _RECORD_HEAD.unpack_from(payload)
                fields = _fields(keys.get(keys_id), _load(payload, _RECORD_HEAD.size, msgpack_payload=True))
            else:
                series_id, time_ns = _RECORD_HEAD_V1.unpack_from(payload)
                index = expected
                fields = _load(payload, _RECORD_HEAD_V1.size, msgpack_payload=False)
            if index < expected:
                continue  # never give a record back twice
            chunk.missing += index - expected
            expected = index + 1
            chunk.next_index = expected
            known = series.get(series_id)
            if known is None or not isinstance(fields, dict):
                chunk.missing += 1
                continue
            chunk.records.append(Record(known, fields, time_ns))
            chunk.ends.append(end)
            chunk.indices.append(index)
            if len(chunk.records) >= max_records:
                break
        else:
            chunk.end = stop  # everything up to stop was read, damage at the end included
        chunk.corrupt_regions = frames.corrupt_regions
    return chunk


def first_record_index(path: Path, offset: int, stop: int) -> int | None:
    """The index carried by the first record frame at or after ``offset`` (version 2), or None.

    The frame at ``offset`` itself must be whole and valid: a cursor must stand on a frame boundary.
    """
    with path.open("rb") as file:
        file.seek(offset)
        data = file.read(min(stop - offset, 256 << 10))
    scan = FrameScan(data, final=True)
    while (frame := scan.next_frame()) is not None:
        if scan.corrupt_regions:
            return None
        kind, payload = frame
        if kind in RECORD_KINDS:
            return record_index(kind, payload)
        if kind in (SEAL, SEAL_V1):
            return None
    return None


def at_seal(path: Path, offset: int, stop: int) -> bool:
    """Whether a valid seal frame starts at ``offset``."""
    with path.open("rb") as file:
        file.seek(offset)
        data = file.read(min(stop - offset, SEAL_FRAME_SIZE))
    frame = FrameScan(data).next_frame()
    return frame is not None and frame[0] in (SEAL, SEAL_V1)


def count_records(path: Path, data_start: int, offset: int) -> int | None:
    """Record frames in ``[data_start, offset)``, or None if ``offset`` is not the end of a valid frame."""
    count, last_end = 0, data_start
    with path.open("rb") as file:
        for kind, _, end in FrameReader(file, data_start, offset):
            count += kind in RECORD_KINDS
            last_end = end
    return count if last_end == offset else None


def _load(payload: bytes, start: int, *, msgpack_payload: bool) -> Any:
    try:
        if msgpack_payload:
            return msgpack.unpackb(payload[start:])
        return marshal.loads(payload[start:])
    except (ValueError, EOFError, TypeError, msgpack.UnpackException):
        return None


def _fields(names: tuple[str, ...] | None, values: Any) -> dict[str, Any] | None:
    if names is None or not isinstance(values, list) or len(values) != len(names):
        return None
    return dict(zip(names, values, strict=True))


def _define(
    kind: int, payload: bytes, series: dict[int, Series], keys: dict[int, tuple[str, ...]], intern: SeriesInterner
) -> None:
    (definition_id,) = _SERIES_ID.unpack_from(payload)
    definition = _load(payload, _SERIES_ID.size, msgpack_payload=kind != SERIES_V1)
    if kind == KEYS:
        if isinstance(definition, list) and all(isinstance(name, str) for name in definition):
            keys[definition_id] = tuple(definition)
        return
    if not isinstance(definition, list | tuple) or len(definition) != 2:
        return
    measurement, tags = definition
    if isinstance(measurement, str) and isinstance(tags, dict):
        series[definition_id] = intern(measurement, tags)


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
