"""The spool's caps: which of the oldest segments must go before the next write, and why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_daq.buffer.spool.model import Segment
from edge_daq.stats import CAP_AGE, CAP_BYTES, DISK_FULL


@dataclass(frozen=True, slots=True)
class Caps:
    max_bytes: int
    max_age: float | None
    min_free: int


def segments_to_drop(
    segments: Sequence[Segment], caps: Caps, incoming: int, free: int | None, now_monotonic: float
) -> list[tuple[Segment, str]]:
    """The oldest segments to drop, each with its reason, so that ``incoming`` bytes fit under every cap.

    ``free`` is the file system's free space (None when ``min_free`` is 0). Only the fresh, empty segment being
    written is never dropped: it costs nothing and the write goes there.
    """
    drops: list[tuple[Segment, str]] = []
    total = sum(segment.size for segment in segments)
    for oldest in segments:
        if not oldest.sealed and not oldest.records:
            break
        if total + incoming > caps.max_bytes:
            reason = CAP_BYTES
        elif caps.max_age is not None and now_monotonic - oldest.newest_monotonic > caps.max_age:
            reason = CAP_AGE
        elif free is not None and free - incoming < caps.min_free:
            reason = DISK_FULL
            free += oldest.size
        else:
            break
        drops.append((oldest, reason))
        total -= oldest.size
    return drops
