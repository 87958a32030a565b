"""Start-up: index the segments left by the previous run, repair what a crash or damage left, count what is lost.

- A segment with a valid header and seal costs two small reads.
- A segment without a valid seal (the one being written at a crash, or one cut short) is scanned: its torn
  tail is cut and it is sealed again.
- A damaged header costs nothing but a scan: the id is in the file name, the frames are found by their sync
  words and checksums, the spool-wide number of the first record is in the seal or follows from a neighbour.
- Every record a segment held (its seal, its record indices, the base of the next segment) but that cannot be
  read back is counted once here; the readers count it again per output when they pass it. Records of a
  segment missing between two held ones are known exactly from the two bases (format version 2).

Nothing here refuses to start or retries forever.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from edge_daq.buffer import segment as fmt
from edge_daq.buffer.spool.model import Segment
from edge_daq.stats import SpoolStats

log = structlog.get_logger("edge_daq.spool")


@dataclass(slots=True)
class _Found:
    id: int
    path: Path
    size: int
    header: fmt.Header | None
    seal: fmt.Seal | None
    scan: fmt.ScanResult | None

    @property
    def version(self) -> int:
        if self.header is not None:
            return self.header.version
        if self.seal is not None:
            return 2 if self.seal.base is not None else 1
        return self.scan.version if self.scan is not None else fmt.VERSION


def recover_segments(directory: Path, stats: SpoolStats, now_wall_ns: int, now_monotonic: float) -> list[Segment]:
    """The segments of ``directory`` in order, each repaired and sealed; damage counted on ``stats``."""
    found: list[_Found] = []
    numbered = ((fmt.segment_id_of(path), path) for path in directory.iterdir())
    for _, path in sorted((number, path) for number, path in numbered if number is not None):
        try:
            item = _inspect(path, stats)
        except OSError as error:
            log.error("spool_segment_unreadable", segment=path.name, error=str(error))
            set_aside(path, stats)
            continue
        if item is not None:
            found.append(item)

    segments: list[Segment] = []
    end_seq = 0
    for position, item in enumerate(found):
        previous = segments[-1] if segments else None
        following = found[position + 1] if position + 1 < len(found) else None
        try:
            segment = _index(item, previous, following, stats, end_seq, now_wall_ns, now_monotonic)
        except OSError as error:
            log.error("spool_segment_unreadable", segment=item.path.name, error=str(error))
            set_aside(item.path, stats)
            continue
        if segment is None:
            continue
        segments.append(segment)
        end_seq = segment.end_seq
    if segments:
        log.info(
            "spool_recovered",
            segments=len(segments),
            records=end_seq,
            bytes=sum(s.size for s in segments),
            corrupt_records=stats.corrupt_records,
            missing_records=stats.missing_records,
            damaged_headers=stats.damaged_headers,
            torn_bytes=stats.torn_bytes,
        )
    return segments


def _inspect(path: Path, stats: SpoolStats) -> _Found | None:
    segment_id = fmt.segment_id_of(path)
    assert segment_id is not None
    with path.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        header = fmt.decode_header(file.read(fmt.HEADER_SIZE))
        file.seek(max(0, size - fmt.SEAL_FRAME_SIZE))
        tail = file.read(fmt.SEAL_FRAME_SIZE)
    if size == 0:
        path.unlink()  # created, never written: nothing to keep
        return None
    if header is not None and header.segment_id != segment_id:
        header = None  # a header of another segment is damage too
    data_start = header.size if header is not None else None
    seal = fmt.decode_seal(tail) if size >= (data_start or 0) + fmt.SEAL_V1_FRAME_SIZE else None
    scan = None
    if header is None:
        stats.damaged_headers += 1
        log.error("spool_segment_header_damaged", segment=path.name, recovery="frames found by their checksums")
    if header is None or seal is None:
        scan = fmt.scan_segment(path, data_start)
        if scan.seal is not None and seal is None and scan.valid_end == size:
            seal = scan.seal
    return _Found(segment_id, path, size, header, seal, scan)


def _index(
    item: _Found,
    previous: Segment | None,
    following: _Found | None,
    stats: SpoolStats,
    first_seq: int,
    now_wall: int,
    now_mono: float,
) -> Segment | None:
    scan, seal, header = item.scan, item.seal, item.header
    if header is None and scan is not None and scan.records == 0 and (seal is None or seal.records == 0):
        # Nothing readable: keep the bytes for a post-mortem; its records count as a gap (missing_segment).
        log.error("spool_segment_corrupt", segment=item.path.name, reason="no valid frame", set_aside=True)
        set_aside(item.path, stats)
        return None
    base = _base_of(item, previous)
    data_start = header.size if header is not None else (scan.data_start if scan is not None else fmt.HEADER_SIZE)
    size = item.size
    if seal is not None and scan is None:
        records, first_ns, last_ns = seal.records, seal.first_time_ns, seal.last_time_ns
    else:
        assert scan is not None
        records = scan.next_index if seal is None else max(seal.records, scan.next_index)
        following_base = _base_of(following, None) if following is not None else None
        if seal is None and base is not None and following_base is not None:
            records = max(records, following_base - base)  # what the segment held, from its neighbour's number
        first_ns, last_ns = scan.first_time_ns, scan.last_time_ns
        lost = records - scan.records
        if lost > 0:
            stats.corrupt_records += lost
            log.error("spool_records_corrupt", segment=item.path.name, records=lost)
        if seal is None:
            size = _repair(item, scan, records, first_ns, last_ns, base, stats)
    missing = 0
    if previous is not None and previous.end_base is not None and base is not None:
        missing = max(0, base - previous.end_base)
    elif previous is not None and item.id != previous.id + 1 and (previous.base is None or base is None):
        log.error("spool_segment_missing", after=previous.path.name, before=item.path.name, records="unknown")
        stats.missing_segments += 1
    if missing:
        stats.missing_segments += 1
        stats.missing_records += missing
        log.error("spool_records_missing", after=previous.path.name if previous else None, before=item.path.name,
                  records=missing)  # fmt: skip
    # Re-anchor the age on the monotonic clock once; a wall-clock step later cannot age it any further.
    age = max(0.0, (now_wall - last_ns) / 1e9) if records else 0.0
    return Segment(
        id=item.id,
        path=item.path,
        size=size,
        records=records,
        first_seq=first_seq,
        sealed=True,
        newest_monotonic=now_mono - age,
        data_start=data_start,
        base=base,
        version=item.version,
        first_time_ns=first_ns,
        last_time_ns=last_ns,
        checked_upto=size if scan is not None else data_start,
        missing_before=missing,
    )


def _base_of(item: _Found, previous: Segment | None) -> int | None:
    if item.header is not None and item.header.base is not None:
        return item.header.base
    if item.seal is not None and item.seal.base is not None:
        return item.seal.base
    if item.version == fmt.VERSION and previous is not None and previous.id + 1 == item.id:
        return previous.end_base
    return None


def _repair(
    item: _Found, scan: fmt.ScanResult, records: int, first_ns: int, last_ns: int, base: int | None, stats: SpoolStats
) -> int:
    """Cut the torn tail and seal the segment; its new size (unsealed if its base is unknown)."""
    if scan.valid_end < item.size:
        stats.torn_bytes += item.size - scan.valid_end
        log.warning("spool_torn_tail_truncated", segment=item.path.name, bytes=item.size - scan.valid_end)
    if item.version == fmt.VERSION:
        if base is None:
            return scan.valid_end  # scanned again at the next start
        seal = fmt.encode_seal(records, first_ns, last_ns, base)
    else:
        seal = fmt.encode_seal_v1(records, first_ns, last_ns)
    with item.path.open("r+b") as file:
        file.truncate(scan.valid_end)
        file.seek(scan.valid_end)
        file.write(seal)
        file.flush()
        os.fsync(file.fileno())
    return scan.valid_end + len(seal)


def set_aside(path: Path, stats: SpoolStats) -> None:
    stats.corrupt_segments += 1
    with contextlib.suppress(OSError):
        path.rename(path.with_name(path.name + fmt.CORRUPT_SUFFIX))
