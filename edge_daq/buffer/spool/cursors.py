"""Each output's cursor on disk: written atomically with a checksum, validated against the segments held.

A cursor file ``cursors/<output>.json`` is one JSON object::

    {"version": 2, "segment": 12, "offset": 40960, "index": 311, "seq": 20311, "crc": 3735928559}

``seq`` is the spool-wide number of the next record (the segment's base plus ``index``; null for a segment of
format version 1) and ``crc`` the crc32 of the canonical JSON of the other keys (sorted, no spaces). A cursor
is trusted only if it checksums and fits the segments held: its segment exists (or lies before the oldest,
already consumed), the offset is a frame boundary inside it, and the record there carries ``index``. Anything
else means a replay from the oldest record held, logged once with the reason: replayed records overwrite
themselves in InfluxDB, skipped ones would be lost. A cursor without ``crc`` (written by format version 1) is
accepted when it fits the segments in the same way.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from edge_daq.buffer import segment as fmt
from edge_daq.buffer.spool.model import Position, Segment

log = structlog.get_logger("edge_daq.spool")

CURSOR_DIR = "cursors"
CURSOR_VERSION = 2
MAX_CURSOR_BYTES = 4096


def cursor_path(directory: Path, name: str) -> Path:
    return directory / CURSOR_DIR / f"{name}.json"


def _checksum(document: dict[str, Any]) -> int:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return zlib.crc32(canonical.encode())


def encode_cursor(position: Position, segment_base: int | None) -> bytes:
    document: dict[str, Any] = {
        "version": CURSOR_VERSION,
        "segment": position.segment,
        "offset": position.offset,
        "index": position.in_segment,
        "seq": None if segment_base is None else segment_base + position.in_segment,
    }
    document["crc"] = _checksum(document)
    return json.dumps(document).encode()


def save_cursor(path: Path, data: bytes) -> None:
    """Atomically: a crash leaves the old cursor or the new one. Raises OSError."""
    temporary = path.with_suffix(".tmp")
    with temporary.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    temporary.replace(path)


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a reader starts, and the records of missing segments it skips in doing so (counted as lost)."""

    position: Position
    missing: int = 0


class _Invalid(Exception):
    """The reason a cursor is not trusted."""


def load_cursor(path: Path, segments: Sequence[Segment], oldest: Segment, name: str) -> Resume:
    """Where output ``name`` resumes: its cursor validated against ``segments``, or ``oldest``'s first record.

    ``segments`` are those found at start (a cursor cannot name one created since).
    """
    if not segments:
        return Resume(oldest.start)  # nothing was left: whatever the cursor says, there is nothing to skip
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CURSOR_BYTES + 1)
    except FileNotFoundError:
        return Resume(oldest.start)  # a new output starts at the oldest record held
    except OSError as error:
        return _replay(name, f"unreadable: {error}", oldest)
    try:
        return _validate(data, segments)
    except _Invalid as reason:
        return _replay(name, str(reason), oldest)


def _replay(name: str, reason: str, oldest: Segment) -> Resume:
    log.error("spool_cursor_invalid", output=name, reason=reason, resume="oldest record held")
    return Resume(oldest.start)


def _integer(document: dict[str, Any], key: str, *, optional: bool = False) -> int | None:
    value = document.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Invalid(f"{key} is not a non-negative integer")
    return value


def _validate(data: bytes, segments: Sequence[Segment]) -> Resume:
    if len(data) > MAX_CURSOR_BYTES:
        raise _Invalid("file too large")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise _Invalid(f"not JSON: {error}") from None
    if not isinstance(document, dict):
        raise _Invalid("not a JSON object")
    checked = "crc" in document
    if checked:
        crc = document.pop("crc")
        if crc != _checksum(document):
            raise _Invalid("bad checksum")
    elif "version" in document:
        raise _Invalid("no checksum")
    segment_id, offset, index = (_integer(document, key) or 0 for key in ("segment", "offset", "index"))
    seq = _integer(document, "seq", optional=True)
    oldest, newest = segments[0], segments[-1]
    if segment_id < oldest.id:
        return Resume(oldest.start)  # its segment was consumed (or dropped and counted): nothing older is held
    if segment_id > newest.id:
        raise _Invalid(f"segment {segment_id} is after the newest held ({newest.id})")
    segment = next((s for s in segments if s.id == segment_id), None)
    if segment is None:
        following = next(s for s in segments if s.id > segment_id)
        if checked and seq is not None and following.base is not None and following.base >= seq:
            # Its segment went missing since (counted at start): resume after the gap, count what it held.
            return Resume(following.start, missing=following.base - seq)
        raise _Invalid(f"segment {segment_id} is not held and the cursor does not fit the gap")
    if not segment.data_start <= offset <= segment.size:
        raise _Invalid(f"offset {offset} is outside segment {segment_id} ({segment.data_start}..{segment.size})")
    if index > segment.records:
        raise _Invalid(f"index {index} is past the {segment.records} records of segment {segment_id}")
    if seq is not None and segment.base is not None and seq != segment.base + index:
        raise _Invalid(f"seq {seq} does not match segment {segment_id} (base {segment.base}, index {index})")
    _check_boundary(segment, offset, index)
    return Resume(Position(segment.id, offset, index, segment.first_seq + index))


def _check_boundary(segment: Segment, offset: int, index: int) -> None:
    """The cursor stands on a frame boundary, before the record with its index."""
    try:
        if segment.version == fmt.VERSION:
            if offset == segment.size:
                found = segment.records if index == segment.records else None
            else:
                found = fmt.first_record_index(segment.path, offset, segment.size)
                if found is None and fmt.at_seal(segment.path, offset, segment.size):
                    found = index  # at the seal: the reader counts any damaged records up to it when it gets there
        else:
            found = fmt.count_records(segment.path, segment.data_start, offset)
    except OSError as error:
        raise _Invalid(f"segment {segment.id} unreadable: {error}") from None
    if found != index:
        raise _Invalid(f"offset {offset} of segment {segment.id} is not before record {index} (found {found})")
