"""Plain counters of the pipeline, updated on the hot path without locks.

The event loop is single-threaded, so an int attribute is enough; /metrics and ``edge-daq status`` read these
objects through a collector instead of the hot path calling prometheus-client for every poll.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

# Why a record was not delivered: the `reason` label of edge_daq_records_lost_total.
CAP_BYTES = "cap_bytes"  # the spool's spool_max_bytes
CAP_AGE = "cap_age"  # the spool's spool_max_age
DISK_FULL = "disk_full"  # spool_min_free, or the file system full
CORRUPT = "corrupt"  # damaged bytes on disk
MISSING_SEGMENT = "missing_segment"  # a segment file gone from the middle of the spool
RING_FULL = "ring_full"  # the ring queue full (memory_records or memory_bytes) before the disk had them
UNENCODABLE = "unencodable"  # no spool format holds it (an integer beyond 64 bits)
LOSS_REASONS = (CAP_BYTES, CAP_AGE, DISK_FULL, CORRUPT, MISSING_SEGMENT, RING_FULL, UNENCODABLE)

# Upper bounds in seconds, shared by the poll-latency and schedule-lateness histograms.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip


@dataclass(slots=True)
class Histogram:
    """Cumulative-on-read histogram with fixed buckets (Prometheus semantics)."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile (inf if it is in the overflow bucket)."""
        if self.count == 0:
            return 0.0
        rank = q * self.count
        seen = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            seen += count
            if seen >= rank:
                return bound
        return float("inf")


@dataclass(slots=True)
class InstrumentStats:
    rig: str
    instrument: str
    link: str
    polls: int = 0
    failures: int = 0
    failed_points: int = 0
    late: int = 0
    skipped: int = 0
    records: int = 0
    consecutive_failures: int = 0
    last_error: str = ""
    last_success_monotonic: float | None = None
    latency: Histogram = field(default_factory=Histogram)
    lateness: Histogram = field(default_factory=Histogram)
    last_latency: float | None = None
    """Seconds the last successful poll took (the status page shows it)."""

    @property
    def up(self) -> bool:
        return self.polls > 0 and self.consecutive_failures == 0


@dataclass(slots=True)
class LinkStats:
    """Counters of one link's wire, below the instruments: what the framing dropped or could not read."""

    link: str
    late_replies: int = 0  # replies that matched no request in flight (after its timeout, duplicates): dropped
    garbled_frames: int = 0  # frames that were not the protocol (bad header, overlong, stalled, oversize reply)
    stale_bytes: int = 0  # bytes dropped before a request or ahead of its reply
    crc_errors: int = 0  # Modbus RTU replies whose CRC failed
    reconnects: int = 0  # times the link closed its own connection to resynchronise


@dataclass(slots=True)
class OutputStats:
    output: str
    delivered: int = 0
    rejected: int = 0  # dropped by the destination as invalid
    lost: int = 0  # dropped by the buffer before delivery (the sum of lost_by_reason, with a spool)
    lost_by_reason: dict[str, int] = field(default_factory=dict)  # see edge_daq.buffer.spool.model.LOSS_REASONS
    retries: int = 0
    batches: int = 0
    resent: int = 0  # delivered again on purpose, after a lost connection (duplicates with the same time)
    failing_since: float | None = None
    last_error: str = ""
    last_delivery_wall: float | None = None
    # The backlog (kept up to date by the durable spool's reader; the ring queue leaves them at 0/None).
    pending_records: int = 0
    pending_bytes: int = 0
    oldest_pending_seconds: float | None = None
    # Reduction (edge_daq.processing: deadband or aggregate): field values read from the buffer, values in the
    # records delivered, and records that came after their window was emitted.
    values_in: int = 0
    values_sent: int = 0
    late_records: int = 0


@dataclass(slots=True)
class SpoolStats:
    """The durable spool as a whole (per-output backlog and losses are on each :class:`OutputStats`)."""

    segments: int = 0
    bytes: int = 0
    max_bytes: int = 0  # the cap (spool_max_bytes); 0 until the spool opens
    records: int = 0  # held on disk
    records_written: int = 0
    fsyncs: int = 0
    last_write_seconds: float = 0.0  # the last append + fsync
    dropped_records: int = 0  # by a cap (size, age, free space) before every output had them
    dropped_segments: int = 0
    dropped_in_ring: int = 0  # dropped by the ring queue before they reached the disk
    corrupt_records: int = 0  # records held on disk but unreadable (damaged frames or series definitions)
    corrupt_segments: int = 0  # segments set aside as *.corrupt (unreadable, or without one valid frame)
    damaged_headers: int = 0  # segment headers found damaged (the segment is read by its frames)
    missing_segments: int = 0  # gaps in the segment sequence found at start
    missing_records: int = 0  # records of those gaps, where known (format version 2)
    unencodable_records: int = 0  # records no spool format can hold (an integer beyond 64 bits)
    torn_bytes: int = 0  # cut off the end of a segment at start-up (a write the crash interrupted)
    write_errors: int = 0
    last_error: str = ""


@dataclass(slots=True)
class ReloadStats:
    """SIGHUP reloads by outcome; ``last_error`` is the first problem of the last one that did not apply."""

    applied: int = 0
    rejected: int = 0  # the new configuration did not load: the running one was kept
    failed: int = 0  # it loaded, but switching over raised
    last_error: str = ""


@dataclass(slots=True)
class PipelineStats:
    started_wall: float = field(default_factory=time.time)
    instruments: list[InstrumentStats] = field(default_factory=list)
    links: list[LinkStats] = field(default_factory=list)
    outputs: list[OutputStats] = field(default_factory=list)
    spool: SpoolStats | None = None
    reloads: ReloadStats = field(default_factory=ReloadStats)
