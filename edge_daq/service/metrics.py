"""Prometheus metrics and the /status document, read from the pipeline's plain counters at scrape time.

The hot path only increments ints in :mod:`edge_daq.stats`; a custom collector turns them into metric
families when /metrics is scraped, so polling never calls prometheus-client. The collector lives in its own
:class:`~prometheus_client.CollectorRegistry` (not the global one), which keeps tests and several daemons in
one process apart.

Scrapes run on the event loop, never in a thread: the counters are updated without locks, and the lists of
instruments and outputs change at a reload.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_daq import __version__
from edge_daq.service.supervisor import Component
from edge_daq.stats import (
    LOSS_REASONS,
    RING_FULL,
    Histogram,
    InstrumentStats,
    LinkStats,
    OutputStats,
    PipelineStats,
    SpoolStats,
)

INSTRUMENT_LABELS = ("rig", "instrument", "link")
OUTPUT_LABELS = ("output",)
COMPONENT_LABELS = ("component", "kind")


def lost_by_reason(output: OutputStats) -> dict[str, int]:
    """Every reason with its count; losses no reason was given for are the ring queue's (memory only)."""
    counts = dict.fromkeys(LOSS_REASONS, 0)
    counts.update(output.lost_by_reason)
    counts[RING_FULL] += max(0, output.lost - sum(output.lost_by_reason.values()))
    return counts


@dataclass(frozen=True, slots=True)
class StressView:
    """One rig's reliability test as /metrics shows it (:meth:`edge_daq.daemon.Daemon.stress_views`)."""

    rig: str
    expected: bool
    """A test runs, not paused and not in a readout: its stress time should be accruing."""
    holding: bool
    """The stress condition holds (time accrues)."""
    stress_seconds: float


class RingView(Protocol):
    """What the metrics read from the ring queue (:class:`edge_daq.buffer.ring.RingBuffer` is one)."""

    @property
    def capacity(self) -> int: ...

    @property
    def dropped(self) -> int: ...

    @property
    def bytes(self) -> int: ...

    def __len__(self) -> int: ...


@dataclass(slots=True)
class HttpStats:
    """Counters of the HTTP endpoint itself (:class:`edge_daq.service.http.HttpEndpoint` keeps them)."""

    open_connections: Callable[[], int] = lambda: 0
    connections_closed_idle: int = 0
    """Idle connections closed to make room for a new one while at the connection limit."""
    connections_refused: int = 0
    """Connections refused (503) while at the limit with every open connection busy."""
    bad_requests: int = 0
    """Requests aiohttp could not parse or answer (each also closes its connection)."""
    handler_errors: int = 0
    """Requests answered 500 because a handler raised."""


@dataclass(slots=True)
class PipelineView:
    """Everything /metrics, /status and /healthz read, in one place.

    ``stats`` must be the same object for the daemon's life (counters must not go back at a reload); the
    callables give what lives outside the stats: an output's backlog in records, and the age in seconds of
    its oldest undelivered record (None when nothing is pending).
    """

    stats: PipelineStats
    ring: RingView | None = None
    backlog: Callable[[str], int] | None = None
    oldest_age: Callable[[str], float | None] | None = None
    output_details: Callable[[str], Mapping[str, object]] | None = None
    """An output's type, current target (failover) and routing, for /status."""
    gateway: str = ""
    components: Callable[[], Iterable[Component]] | None = None
    """The supervised components (:class:`edge_daq.service.supervisor.Supervisor` ``.all_components``)."""
    http: HttpStats | None = None
    events_not_published: Callable[[], int] | None = None
    """Reliability events the MQTT output could not take (the journal and the outputs have them)."""
    writes: Callable[[], Mapping[str, object]] | None = None
    """Writes to instruments and the rig file's actions (edge_daq.writes), for /status."""
    stress: Callable[[], Iterable[StressView]] | None = None
    """The rigs with a reliability test, for the fleet's "stress not accruing" alert."""
    version: str = __version__
    clock: Callable[[], float] = field(default=time.monotonic)
    """The clock of ``failing_since`` and ``last_success_monotonic``."""

    def failing_for(self, output: OutputStats) -> float | None:
        """Seconds since the output started failing, None while it delivers."""
        return None if output.failing_since is None else max(0.0, self.clock() - output.failing_since)

    def component_failing_for(self, component: Component) -> float | None:
        """Seconds since the component's current failure episode began, None while it is healthy."""
        since = component.failing_since
        return None if since is None else max(0.0, time.monotonic() - since)

    def live_components(self) -> list[Component]:
        every = self.components() if self.components is not None else ()
        return [component for component in every if component.state != "stopped"]

    def snapshot(self) -> dict[str, Any]:
        """The /status document: plain JSON types only (no inf or NaN)."""
        now_wall, now = time.time(), self.clock()
        stats = self.stats
        return {
            "version": self.version,
            "gateway": self.gateway,
            "started": _iso(stats.started_wall),
            "uptime_seconds": round(max(0.0, now_wall - stats.started_wall), 3),
            "instruments": [self._instrument(instrument, now) for instrument in stats.instruments],
            "outputs": [self._output(output, now_wall) for output in stats.outputs],
            "links": [dataclasses.asdict(link) for link in stats.links],  # the wire's counters, as in /metrics
            "components": [self._component(component) for component in self.live_components()],
            "ring": None
            if self.ring is None
            else {
                "records": len(self.ring),
                "capacity": self.ring.capacity,
                "bytes": self.ring.bytes,
                "dropped": self.ring.dropped,
            },
            "reloads": {
                "applied": stats.reloads.applied,
                "rejected": stats.reloads.rejected,
                "failed": stats.reloads.failed,
                "last_error": stats.reloads.last_error,
            },
            **({"writes": dict(self.writes())} if self.writes is not None else {}),
        }

    def outputs_status(self) -> list[dict[str, Any]]:
        """The outputs as /status lists them (the status page shows them too)."""
        now_wall = time.time()
        return [self._output(output, now_wall) for output in self.stats.outputs]

    @staticmethod
    def _instrument(instrument: InstrumentStats, now: float) -> dict[str, Any]:
        last_success = instrument.last_success_monotonic
        return {
            "rig": instrument.rig,
            "instrument": instrument.instrument,
            "link": instrument.link,
            "up": instrument.up,
            "polls": instrument.polls,
            "failures": instrument.failures,
            "failed_points": instrument.failed_points,
            "records": instrument.records,
            "late": instrument.late,
            "skipped": instrument.skipped,
            "consecutive_failures": instrument.consecutive_failures,
            "last_error": instrument.last_error,
            "last_success_age_seconds": None if last_success is None else round(max(0.0, now - last_success), 3),
            "latency": _histogram(instrument.latency),
            "lateness": _histogram(instrument.lateness),
        }

    def _output(self, output: OutputStats, now_wall: float) -> dict[str, Any]:
        failing_for = self.failing_for(output)
        oldest = self.oldest_age(output.output) if self.oldest_age is not None else None
        return {
            "output": output.output,
            "delivered": output.delivered,
            "rejected": output.rejected,
            "lost": output.lost,
            "lost_by_reason": lost_by_reason(output),
            "retries": output.retries,
            "batches": output.batches,
            "resent": output.resent,
            "values_in": output.values_in,
            "values_sent": output.values_sent,
            "backlog": self.backlog(output.output) if self.backlog is not None else None,
            "oldest_age_seconds": None if oldest is None else round(oldest, 3),
            "failing": failing_for is not None,
            "failing_since": None if failing_for is None else _iso(now_wall - failing_for),
            "failing_for_seconds": None if failing_for is None else round(failing_for, 3),
            "last_error": output.last_error,
            "last_delivery": None if output.last_delivery_wall is None else _iso(output.last_delivery_wall),
            **(self.output_details(output.output) if self.output_details is not None else {}),
        }

    def _component(self, component: Component) -> dict[str, Any]:
        failing_for = self.component_failing_for(component)
        return {
            "component": component.name,
            "kind": component.kind,
            "state": component.state,
            "restarts": component.restarts,
            "failing": failing_for is not None,
            "failing_for_seconds": None if failing_for is None else round(failing_for, 3),
            "last_error": component.last_error,
        }


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds")


def _histogram(histogram: Histogram) -> dict[str, Any]:
    # The raw buckets (the last one is the overflow): readers compute the quantiles they want.
    return {
        "bounds": list(histogram.bounds),
        "counts": list(histogram.counts),
        "sum": histogram.total,
        "count": histogram.count,
    }


def histogram_buckets(histogram: Histogram) -> list[tuple[str, float]]:
    """Prometheus buckets: cumulative counts keyed by upper bound, ending with +Inf (the total count)."""
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
        cumulative += count
        buckets.append((repr(float(bound)), cumulative))  # 0.005, 1.0: as prometheus-client writes le
    buckets.append(("+Inf", histogram.count))
    return buckets


class PipelineCollector(Collector):
    """Yields every ``edge_daq_*`` metric family from a :class:`PipelineView` at each scrape."""

    def __init__(self, view: PipelineView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        view, stats = self.view, self.view.stats

        build = GaugeMetricFamily("edge_daq_build_info", "edge-daq version; always 1", labels=["version"])
        build.add_metric([view.version], 1)
        yield build
        yield GaugeMetricFamily(
            "edge_daq_start_time_seconds", "Start time of the daemon, Unix time", value=stats.started_wall
        )

        yield from self._instruments(stats.instruments)
        yield from self._links(stats.links)
        yield from self._outputs(stats.outputs)

        if view.ring is not None:
            yield GaugeMetricFamily("edge_daq_ring_records", "Records held in the ring queue", value=len(view.ring))
            yield GaugeMetricFamily(
                "edge_daq_ring_capacity", "Records the ring queue holds before it drops", value=view.ring.capacity
            )
            yield GaugeMetricFamily(
                "edge_daq_ring_bytes", "Estimated memory of the records in the ring queue", value=view.ring.bytes
            )
            yield CounterMetricFamily(
                "edge_daq_ring_dropped", "Records dropped by the full ring queue", value=view.ring.dropped
            )
        if stats.spool is not None:
            yield from self._spool(stats.spool)
        if view.stress is not None:
            yield from self._stress(list(view.stress()))
        if view.components is not None:
            yield from self._components(list(view.components()))
        if view.http is not None:
            yield from self._http(view.http)
        if view.events_not_published is not None:
            yield CounterMetricFamily(
                "edge_daq_events_not_published",
                "Reliability events not published to MQTT (the journal and the outputs still have them)",
                value=view.events_not_published(),
            )
        reloads = CounterMetricFamily("edge_daq_reloads", "Configuration reloads by result", labels=["result"])
        for result in ("applied", "rejected", "failed"):
            reloads.add_metric([result], getattr(stats.reloads, result))
        yield reloads

    @staticmethod
    def _http(http: HttpStats) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "edge_daq_http_connections", "Open connections to this HTTP endpoint", value=http.open_connections()
        )
        counters = {
            "edge_daq_http_connections_closed_idle": (
                "Idle connections closed to make room at the connection limit",
                http.connections_closed_idle,
            ),
            "edge_daq_http_connections_refused": (
                "Connections refused at the limit, every open one busy",
                http.connections_refused,
            ),
            "edge_daq_http_bad_requests": ("Malformed requests (each closes its connection)", http.bad_requests),
            "edge_daq_http_handler_errors": ("Requests answered 500 because a handler failed", http.handler_errors),
        }
        for name, (documentation, value) in counters.items():
            yield CounterMetricFamily(name, documentation, value=value)

    def _components(self, components: list[Component]) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            "edge_daq_component_restarts", "Restarts of a supervised component after it failed", labels=COMPONENT_LABELS
        )
        up = GaugeMetricFamily(
            "edge_daq_component_up", "1 while the component runs, 0 while it waits to restart", labels=COMPONENT_LABELS
        )
        failing = GaugeMetricFamily(
            "edge_daq_component_failing_seconds",
            "Seconds since the component's current run of failures began; 0 while healthy",
            labels=COMPONENT_LABELS,
        )
        for component in components:
            labels = [component.name, component.kind]
            restarts.add_metric(labels, component.restarts)  # stopped ones too: a counter never goes back
            if component.state == "stopped":
                continue
            up.add_metric(labels, 1 if component.state == "running" else 0)
            failing.add_metric(labels, self.view.component_failing_for(component) or 0.0)
        yield from (restarts, up, failing)

    @staticmethod
    def _stress(rigs: list[StressView]) -> Iterator[Metric]:
        families = (
            ("edge_daq_stress_seconds", "Stress time the rig's current test has accrued", lambda r: r.stress_seconds),
            (
                "edge_daq_stress_expected",
                "1 while a test runs outside a pause or readout (stress time should accrue)",
                lambda r: 1 if r.expected else 0,
            ),
            ("edge_daq_stress_holding", "1 while the stress condition holds", lambda r: 1 if r.holding else 0),
        )
        for name, documentation, value in families:
            family = GaugeMetricFamily(name, documentation, labels=["rig"])
            for rig in rigs:
                family.add_metric([rig.rig], value(rig))
            yield family

    @staticmethod
    def _spool(spool: SpoolStats) -> Iterator[Metric]:
        yield GaugeMetricFamily("edge_daq_spool_bytes", "Bytes of the durable spool on disk", value=spool.bytes)
        yield GaugeMetricFamily(
            "edge_daq_spool_max_bytes",
            "The spool's cap (spool_max_bytes): oldest records go beyond it",
            value=spool.max_bytes,
        )
        yield GaugeMetricFamily("edge_daq_spool_segments", "Segment files of the spool", value=spool.segments)
        yield GaugeMetricFamily("edge_daq_spool_records", "Records held on disk", value=spool.records)
        counters = {
            "edge_daq_spool_records_written": ("Records written and fsynced to the spool", spool.records_written),
            "edge_daq_spool_fsyncs": ("fsync calls of the spool writer", spool.fsyncs),
            "edge_daq_spool_dropped_records": ("Records dropped by a spool cap or a full disk", spool.dropped_records),
            "edge_daq_spool_corrupt_records": ("Records held but unreadable (damage)", spool.corrupt_records),
            "edge_daq_spool_corrupt_segments": ("Segments set aside as corrupt", spool.corrupt_segments),
            "edge_daq_spool_damaged_headers": ("Segment headers found damaged", spool.damaged_headers),
            "edge_daq_spool_missing_segments": ("Gaps in the segment sequence found at start", spool.missing_segments),
            "edge_daq_spool_missing_records": ("Records of the missing segments", spool.missing_records),
            "edge_daq_spool_write_errors": ("Failed spool writes (retried)", spool.write_errors),
        }
        for name, (documentation, value) in counters.items():
            yield CounterMetricFamily(name, documentation, value=value)

    @staticmethod
    def _links(links: list[LinkStats]) -> Iterator[Metric]:
        counters: dict[str, tuple[str, Callable[[LinkStats], int]]] = {
            "edge_daq_link_late_replies": (
                "Replies that matched no request in flight (after its timeout, duplicates), dropped",
                lambda s: s.late_replies,
            ),
            "edge_daq_link_garbled_frames": (
                "Frames that were not the protocol (bad header, stalled half-way, a reply over its limit)",
                lambda s: s.garbled_frames,
            ),
            "edge_daq_link_stale_bytes": (
                "Bytes dropped before a request or ahead of its reply",
                lambda s: s.stale_bytes,
            ),
            "edge_daq_link_crc_errors": ("Modbus RTU replies whose CRC failed", lambda s: s.crc_errors),
            "edge_daq_link_reconnects": (
                "Connections the link closed itself to get back in step with the device",
                lambda s: s.reconnects,
            ),
        }
        for name, (documentation, value) in counters.items():
            family = CounterMetricFamily(name, documentation, labels=["link"])
            for link in links:
                family.add_metric([link.link], value(link))
            yield family

    @staticmethod
    def _instruments(instruments: list[InstrumentStats]) -> Iterator[Metric]:
        def counter(name: str, documentation: str, value: Callable[[InstrumentStats], int]) -> Metric:
            family = CounterMetricFamily(name, documentation, labels=INSTRUMENT_LABELS)
            for instrument in instruments:
                family.add_metric(_instrument_labels(instrument), value(instrument))
            return family

        yield counter("edge_daq_polls", "Polls attempted", lambda s: s.polls)
        yield counter("edge_daq_poll_failures", "Polls that failed entirely", lambda s: s.failures)
        yield counter(
            "edge_daq_failed_points", "Points missing from otherwise successful polls", lambda s: s.failed_points
        )
        yield counter("edge_daq_records", "Records produced", lambda s: s.records)
        yield counter("edge_daq_late_cycles", "Polls started late (over 10% of the interval)", lambda s: s.late)
        yield counter("edge_daq_skipped_cycles", "Polls skipped because the link fell behind", lambda s: s.skipped)

        up = GaugeMetricFamily(
            "edge_daq_up", "1 if the last poll of the instrument succeeded", labels=INSTRUMENT_LABELS
        )
        failures = GaugeMetricFamily(
            "edge_daq_consecutive_failures", "Failed polls since the last success", labels=INSTRUMENT_LABELS
        )
        latency = HistogramMetricFamily(
            "edge_daq_poll_latency_seconds", "Time from request to complete response", labels=INSTRUMENT_LABELS
        )
        lateness = HistogramMetricFamily(
            "edge_daq_schedule_lateness_seconds", "Delay of a poll behind its due time", labels=INSTRUMENT_LABELS
        )
        for instrument in instruments:
            labels = _instrument_labels(instrument)
            up.add_metric(labels, 1 if instrument.up else 0)
            failures.add_metric(labels, instrument.consecutive_failures)
            latency.add_metric(labels, histogram_buckets(instrument.latency), instrument.latency.total)
            lateness.add_metric(labels, histogram_buckets(instrument.lateness), instrument.lateness.total)
        yield from (up, failures, latency, lateness)

    def _outputs(self, outputs: list[OutputStats]) -> Iterator[Metric]:
        view = self.view

        def counter(name: str, documentation: str, value: Callable[[OutputStats], int]) -> Metric:
            family = CounterMetricFamily(name, documentation, labels=OUTPUT_LABELS)
            for output in outputs:
                family.add_metric([output.output], value(output))
            return family

        yield counter("edge_daq_records_delivered", "Records the destination acknowledged", lambda s: s.delivered)
        yield counter("edge_daq_records_rejected", "Records the destination refused as invalid", lambda s: s.rejected)
        lost = CounterMetricFamily(
            "edge_daq_records_lost",
            "Records that could not be delivered, by reason (cap_bytes, cap_age, disk_full, corrupt, ...)",
            labels=(*OUTPUT_LABELS, "reason"),
        )
        for output in outputs:
            for reason, count in lost_by_reason(output).items():
                lost.add_metric([output.output, reason], count)
        yield lost
        yield counter("edge_daq_retries", "Failed delivery attempts, each retried after a backoff", lambda s: s.retries)
        yield counter("edge_daq_batches_delivered", "Batches the destination acknowledged", lambda s: s.batches)
        yield counter(
            "edge_daq_records_resent",
            "Records delivered again after a lost connection (resend_window): duplicates with the same time",
            lambda s: s.resent,
        )
        # Reduction (deadband, aggregate): only the outputs that reduce, so that the saving reads as in / sent.
        reducing = [output for output in outputs if output.values_in]
        for name, documentation, value in (
            ("edge_daq_output_values_in", "Field values a reducing output read from the buffer", "values_in"),
            ("edge_daq_output_values_sent", "Field values a reducing output delivered after reduction", "values_sent"),
            (
                "edge_daq_output_late_records",
                "Records that came after their aggregation window was emitted",
                "late_records",
            ),
        ):
            family = CounterMetricFamily(name, documentation, labels=OUTPUT_LABELS)
            for output in reducing:
                family.add_metric([output.output], getattr(output, value))
            yield family

        if view.backlog is not None:
            backlog = GaugeMetricFamily("edge_daq_backlog_records", "Records not yet delivered", labels=OUTPUT_LABELS)
            for output in outputs:
                backlog.add_metric([output.output], view.backlog(output.output))
            yield backlog
        if view.oldest_age is not None:
            oldest = GaugeMetricFamily(
                "edge_daq_oldest_undelivered_age_seconds",
                "Age of the oldest record not yet delivered; 0 when none is pending",
                labels=OUTPUT_LABELS,
            )
            for output in outputs:
                oldest.add_metric([output.output], view.oldest_age(output.output) or 0.0)
            yield oldest

        backlog_bytes = GaugeMetricFamily(
            "edge_daq_backlog_bytes", "Bytes of the spool not yet delivered (0 without a spool)", labels=OUTPUT_LABELS
        )
        for output in outputs:
            backlog_bytes.add_metric([output.output], output.pending_bytes)
        yield backlog_bytes

        failing = GaugeMetricFamily("edge_daq_failing", "1 while deliveries to the output fail", labels=OUTPUT_LABELS)
        failing_for = GaugeMetricFamily(
            "edge_daq_failing_seconds",
            "Seconds since deliveries started failing; 0 while they succeed",
            labels=OUTPUT_LABELS,
        )
        for output in outputs:
            seconds = view.failing_for(output)
            failing.add_metric([output.output], 0 if seconds is None else 1)
            failing_for.add_metric([output.output], seconds or 0.0)
        yield from (failing, failing_for)


def _instrument_labels(instrument: InstrumentStats) -> list[str]:
    return [instrument.rig, instrument.instrument, instrument.link]


class _ProcessCollector(ProcessCollector):
    """prometheus-client's ``process_*`` metrics, working under the unit's ``ProcSubset=pid``.

    The stock collector reads the boot time from /proc/stat, which ProcSubset=pid hides; without it, it
    silently yields nothing. CLOCK_BOOTTIME gives the same boot time.
    """

    def _boot_time(self) -> float:
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def build_registry(view: PipelineView, *, process: bool = True) -> CollectorRegistry:
    """A registry of its own with the pipeline's metrics and, unless ``process`` is false, the process's
    (``process_resident_memory_bytes``, ``process_open_fds``, ``python_info``...)."""
    registry = CollectorRegistry()
    registry.register(PipelineCollector(view))
    if process:
        _ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    return registry
