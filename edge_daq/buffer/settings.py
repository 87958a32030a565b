"""Plain settings of the buffer, so that the buffer needs nothing from the configuration layer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_FSYNC_INTERVAL = 0.1
MIN_FREE_FRACTION = 0.05
MIN_FREE_CEILING = 1 << 30
SEGMENTS_PER_SPOOL = 64
"""A drop sheds one segment: at most this fraction of what the spool may hold."""
MIN_SEGMENT_BYTES = 64 << 10
MAX_SEGMENT_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class SpoolSettings:
    """The durable spool's settings (the gateway file's ``buffer:`` keys, see the README's "Buffering")."""

    directory: Path
    max_bytes: int
    max_age: float | None = None
    min_free: int | None = None
    """Free space always left on the file system; None: :func:`default_min_free`."""
    fsync_interval: float = DEFAULT_FSYNC_INTERVAL
    segment_bytes: int | None = None
    """None: :func:`default_segment_bytes`."""


def default_min_free(total_bytes: int) -> int:
    """Free space the spool always leaves on its file system: 5 % of it, at most 1 GiB."""
    return min(int(total_bytes * MIN_FREE_FRACTION), MIN_FREE_CEILING)


def default_segment_bytes(max_bytes: int, fs_bytes: int | None = None, min_free: int = 0) -> int:
    """A 64th of what the spool may use (its cap, or the file system less ``min_free`` if smaller).

    Dropping the oldest segment then sheds a small fraction of the backlog, even on a small partition.
    Between 64 KiB and 64 MiB.
    """
    usable = max_bytes if fs_bytes is None else min(max_bytes, max(0, fs_bytes - min_free))
    return max(MIN_SEGMENT_BYTES, min(MAX_SEGMENT_BYTES, usable // SEGMENTS_PER_SPOOL))
