"""Bus schedulers: one per physical link, polling each instrument behind it at its own interval.

Intervals are kept drift-free on the monotonic clock (poll k is due at start + k * interval, whatever the
previous poll cost); a poll that starts after its due time is late, and due times that passed while a poll
was still running are skipped whole, never bunched up. Timestamps come from the wall clock at the moment the
response arrived, taken once and never changed afterwards.

Requests on one link are strictly sequential: one scheduler task per link, which awaits each poll before
starting the next, so a device never sees two requests in flight.

Stopping is graceful: :meth:`LinkScheduler.request_stop` starts no new poll, lets the poll under way get its
reply (for at most ``STOP_GRACE_TIMEOUTS`` of its instrument's timeouts) and emit its record, then ends.
Cancelling the task still works, as a last resort: the poll it interrupts is counted as a failure.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

from edge_daq.delivery import Backoff
from edge_daq.drivers.base import Instrument, InstrumentConfig, Link, PollResult
from edge_daq.errors import DriverConnectionError, DriverError, DriverTimeoutError
from edge_daq.processing.computed import compile_points
from edge_daq.record import FieldValue, Record, Series
from edge_daq.stats import InstrumentStats

log = structlog.get_logger("edge_daq.scheduling")

STATUS_MEASUREMENT = "edge_daq_status"
STATUS_HEARTBEAT = 60.0
"""A healthy instrument writes a status record at least this often (seconds); a failing one at every poll."""

BACKOFF_AFTER_FAILURES = 3
"""Consecutive failures after which an instrument is polled at growing intervals instead of every cycle."""
MAX_INSTRUMENT_BACKOFF = 60.0
LINK_REOPEN_AFTER_TIMEOUTS = 3
"""Consecutive timeouts on a link, with no success in between, after which the link is closed and reopened."""
STOP_GRACE_TIMEOUTS = 2.0
"""After a stop request, the poll under way may go on for this many of its instrument's timeouts: one for the
request already sent, one more for a link being opened or the rest of a poll of several requests."""


T = TypeVar("T")

FIELD_NAME_TAG = "_field"
MEASUREMENT_TAG = "_measurement"


class RecordBuilder:
    """Turns a poll result into records: the instrument's series, plus one per distinct per-point tag set.

    Two per-point tags are reserved (InfluxDB reserves leading underscores, so they are never written):
    ``_field`` renames the point's field inside its record and ``_measurement`` sets that record's
    measurement. Repeated channels use them to give one record per channel with the same field names.
    """

    def __init__(self, config: InstrumentConfig, base_tags: Mapping[str, str]) -> None:
        # The identifying tags come last so that no rig or instrument tag can overwrite them.
        tags = {**config.tags, **base_tags, "instrument": config.name}
        self.series = Series(config.measurement_name, tags)
        self.status_series = Series(STATUS_MEASUREMENT, self.series.tags)
        self._field_series: dict[str, tuple[Series, str]] = {}
        distinct: dict[tuple[str, frozenset[tuple[str, str]]], Series] = {}  # points with equal tags share a record
        for name, point_tags in config.field_tags().items():
            written = {key: value for key, value in point_tags.items() if key not in (FIELD_NAME_TAG, MEASUREMENT_TAG)}
            measurement = point_tags.get(MEASUREMENT_TAG, self.series.measurement)
            key = (measurement, frozenset(written.items()))
            if key not in distinct:
                distinct[key] = Series(measurement, {**self.series.tags, **written})
            self._field_series[name] = (distinct[key], point_tags.get(FIELD_NAME_TAG, name))
        self.computed = compile_points(config.name, config.computed)

    def build(self, fields: dict[str, FieldValue], time_ns: int) -> list[Record]:
        records = self._build(fields, time_ns)
        if self.computed is not None:
            self.computed.apply_all(records)  # after the split: per channel, over that channel's fields
        return records

    def _build(self, fields: dict[str, FieldValue], time_ns: int) -> list[Record]:
        if not self._field_series:
            return [Record(self.series, fields, time_ns)] if fields else []
        # Keyed by identity: a Series holds a dict, so it is not hashable, and each is built once above.
        grouped: dict[int, tuple[Series, dict[str, FieldValue]]] = {}
        default = (self.series, "")
        for name, value in fields.items():
            series, field_name = self._field_series.get(name, default)
            grouped.setdefault(id(series), (series, {}))[1][field_name or name] = value
        return [Record(series, group, time_ns) for series, group in grouped.values()]

    def status(self, *, ok: bool, failed_points: int, latency: float, error: str, time_ns: int) -> Record:
        fields: dict[str, FieldValue] = {
            "ok": ok,
            "failed_points": failed_points,
            "latency_ms": round(latency * 1000.0, 3),
            "error": error,
        }
        return Record(self.status_series, fields, time_ns)


@dataclass(eq=False)
class ScheduledInstrument:
    instrument: Instrument[InstrumentConfig, Link]
    builder: RecordBuilder
    stats: InstrumentStats
    next_due: float = 0.0
    retry_at: float = 0.0
    last_status_at: float = field(default=-STATUS_HEARTBEAT)
    points_failing: bool = False
    """Some points failed in the last successful poll: an episode of ``points_failed``, logged once."""
    last_fields: Mapping[str, FieldValue] | None = None
    """The values of the last successful poll: a write's ``old`` value, without a read of its own."""

    @property
    def config(self) -> InstrumentConfig:
        return self.instrument.config


class LinkScheduler:
    """Owns one link and polls the instruments that share it, one request at a time."""

    def __init__(
        self,
        *,
        link: Link,
        instruments: Sequence[ScheduledInstrument],
        emit: Callable[[Record], None],
        phase: float = 0.0,
    ) -> None:
        """``phase`` (a fraction of an interval, 0 to 1) shifts this link's first polls; instruments on the
        link are spread evenly after it. Links given different phases never all start their polls at once."""
        if not instruments:
            raise ValueError("a link scheduler needs at least one instrument")
        if not 0.0 <= phase < 1.0:
            raise ValueError("phase is a fraction of the interval, from 0 to 1")
        self.link = link
        self.instruments = list(instruments)
        self.phase = phase
        self._emit = emit
        self._link_backoff = Backoff(0.5, 30.0)
        self._link_retry_at = 0.0
        self._link_error = ""
        self._timeouts_in_a_row = 0
        self._stopping = False
        self._sleeper: asyncio.Future[None] | None = None  # set while waiting for the next due time
        self._polling: tuple[ScheduledInstrument, asyncio.Timeout] | None = None  # the poll under way
        self._log = log.bind(link=link.describe)
        self.operations = 0
        """Writes and read-backs run through :meth:`operate`."""

    @property
    def stop_grace(self) -> float:
        """The longest a poll may go on after :meth:`request_stop` (seconds)."""
        return STOP_GRACE_TIMEOUTS * max(scheduled.config.timeout for scheduled in self.instruments)

    def request_stop(self) -> None:
        """End :meth:`run` gracefully: no new poll starts; the one under way gets its reply and emits its record
        (within :attr:`stop_grace`), then the link is closed and :meth:`run` returns."""
        if self._stopping:
            return
        self._stopping = True
        if self._sleeper is not None and not self._sleeper.done():
            self._sleeper.set_result(None)
        if self._polling is not None:
            scheduled, deadline = self._polling
            grace = STOP_GRACE_TIMEOUTS * scheduled.config.timeout
            deadline.reschedule(asyncio.get_running_loop().time() + grace)

    async def operate(self, operation: Callable[[Link], Awaitable[T]]) -> T:
        """Run a write (or its read-back) on this scheduler's link, between two of its transactions.

        Every link serialises its requests with a first-come lock, so the operation waits for the transaction
        on the wire, never interleaves with it, and goes before the next request of a poll under way. Nothing
        is sent while the link is down (the scheduler reopens it with backoff): the write is refused.
        """
        if not self.link.is_open:
            raise DriverConnectionError(f"{self.link.describe} is not connected: nothing was sent")
        self.operations += 1
        return await operation(self.link)

    async def _sleep(self, delay: float) -> None:
        """Like asyncio.sleep, but :meth:`request_stop` ends it early."""
        loop = asyncio.get_running_loop()
        sleeper = self._sleeper = loop.create_future()
        timer = loop.call_later(delay, _wake, sleeper)
        try:
            await sleeper
        finally:
            timer.cancel()
            self._sleeper = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        queue: list[tuple[float, int]] = []
        count = len(self.instruments)
        for index, scheduled in enumerate(self.instruments):
            # Spread the first due times over the interval: a fleet polled at the same instant turns every
            # period into a burst, and the p99 lateness into the burst's length (bench/fleet.py).
            scheduled.next_due = start + ((self.phase + index / count) % 1.0) * scheduled.config.interval
            queue.append((scheduled.next_due, index))
        heapq.heapify(queue)
        task = asyncio.current_task()
        try:
            while not self._stopping:
                due, index = queue[0]
                if (delay := due - loop.time()) > 0:
                    await self._sleep(delay)
                    if self._stopping:
                        break
                heapq.heappop(queue)
                scheduled = self.instruments[index]
                await self._cycle(scheduled, due)
                if task is not None and task.cancelling():
                    # Python 3.11's asyncio.wait_for (in a driver or a library under it) returns the reply instead of
                    # raising when a cancellation and the reply arrive together: honour the cancellation here,
                    # or shutdown would wait for this task forever.
                    raise asyncio.CancelledError
                heapq.heappush(queue, (scheduled.next_due, index))
        finally:
            await self.link.close()

    async def _cycle(self, scheduled: ScheduledInstrument, due: float) -> None:
        loop = asyncio.get_running_loop()
        stats, interval = scheduled.stats, scheduled.config.interval
        started = loop.time()
        lateness = started - due
        stats.lateness.observe(lateness)
        if lateness > max(0.01, interval * 0.1):
            stats.late += 1

        if started >= scheduled.retry_at:
            await self._poll(scheduled, started)

        next_due = due + interval
        now = loop.time()
        if next_due <= now:
            missed = int((now - next_due) // interval) + 1
            stats.skipped += missed
            next_due += missed * interval
        if scheduled.retry_at > next_due:
            # Backing off: stay on the instrument's grid, so its records keep regular timestamps.
            next_due += -(-(scheduled.retry_at - next_due) // interval) * interval
        scheduled.next_due = next_due

    async def _poll(self, scheduled: ScheduledInstrument, started: float) -> None:
        loop = asyncio.get_running_loop()
        stats = scheduled.stats
        stats.polls += 1
        # No deadline of its own (the driver bounds each request); request_stop() sets one.
        deadline = asyncio.timeout(None)
        try:
            async with deadline:
                self._polling = (scheduled, deadline)  # only while entered: reschedule() needs that
                try:
                    if not self.link.is_open:
                        await self._open_link(started)
                    result = await scheduled.instrument.poll(self.link)
                finally:
                    self._polling = None
        except DriverError as error:
            time_ns = time.time_ns()
            await self._poll_failed(scheduled, error, loop.time() - started, time_ns)
            return
        except TimeoutError:
            if not deadline.expired():
                raise
            self._poll_abandoned(scheduled, "it took longer than the stop grace")
            return
        except asyncio.CancelledError:
            self._poll_abandoned(scheduled, "the link was cancelled")
            raise
        time_ns = time.time_ns()  # acquisition time: when the response arrived
        latency = loop.time() - started
        stats.latency.observe(latency)
        stats.last_latency = latency
        self._timeouts_in_a_row = 0
        self._link_backoff.reset()
        self._poll_succeeded(scheduled, result, latency, time_ns)

    def _poll_abandoned(self, scheduled: ScheduledInstrument, reason: str) -> None:
        """A poll cut short by stopping: no record, so it is counted as a failed poll and logged."""
        stats = scheduled.stats
        stats.failures += 1
        self._log.warning("poll_abandoned", rig=stats.rig, instrument=stats.instrument, reason=reason)

    async def _open_link(self, now: float) -> None:
        if now < self._link_retry_at:
            raise DriverConnectionError(self._link_error or f"{self.link.describe} is down")
        try:
            await self.link.open()
        except DriverError as error:
            self._link_error = str(error)
            self._link_retry_at = now + self._link_backoff.next_delay()
            raise
        self._link_error = ""

    def _poll_succeeded(self, scheduled: ScheduledInstrument, result: PollResult, latency: float, time_ns: int) -> None:
        stats, builder = scheduled.stats, scheduled.builder
        recovered = stats.consecutive_failures > 0
        if recovered:
            self._log.info(
                "instrument_recovered",
                rig=stats.rig,
                instrument=stats.instrument,
                failed_polls=stats.consecutive_failures,
            )
        stats.consecutive_failures = 0
        stats.last_success_monotonic = asyncio.get_running_loop().time()
        scheduled.retry_at = 0.0
        scheduled.last_fields = result.fields
        samples = ((time_ns, result.fields),) if result.samples is None else result.samples
        for sample_ns, fields in samples:
            for record in builder.build(fields, sample_ns):
                self._emit(record)
                stats.records += 1

        failed = len(result.failed)
        error = "; ".join(dict.fromkeys(str(e) for e in result.errors)) if failed else ""
        if failed:
            stats.failed_points += failed
            # Once per episode: the message often varies from poll to poll (a reading, an exception code inside
            # it), the episode does not. The counters and the status record carry every poll's details.
            if not scheduled.points_failing:
                self._log.error(
                    "points_failed",
                    rig=stats.rig,
                    instrument=stats.instrument,
                    points=result.failed,
                    error=error,
                )
        elif scheduled.points_failing:
            self._log.info("points_recovered", rig=stats.rig, instrument=stats.instrument)
        scheduled.points_failing = failed > 0
        stats.last_error = error
        now = asyncio.get_running_loop().time()
        if failed or recovered or now - scheduled.last_status_at >= STATUS_HEARTBEAT:
            scheduled.last_status_at = now
            self._emit(
                builder.status(ok=not failed, failed_points=failed, latency=latency, error=error, time_ns=time_ns)
            )

    async def _poll_failed(
        self, scheduled: ScheduledInstrument, error: DriverError, latency: float, time_ns: int
    ) -> None:
        loop = asyncio.get_running_loop()
        stats = scheduled.stats
        stats.failures += 1
        stats.consecutive_failures += 1
        message = str(error) or type(error).__name__
        if stats.consecutive_failures == 1:
            self._log.error(
                "instrument_failed",
                rig=stats.rig,
                instrument=stats.instrument,
                error=message,
                kind=type(error).__name__,
            )
        stats.last_error = message

        if isinstance(error, DriverTimeoutError):
            self._timeouts_in_a_row += 1
        if self.link.is_open and (
            isinstance(error, DriverConnectionError) or self._timeouts_in_a_row >= LINK_REOPEN_AFTER_TIMEOUTS
        ):
            # A dead socket or a wedged peer: start afresh on the next attempt rather than wait on it.
            self._timeouts_in_a_row = 0
            await self.link.close()
        if stats.consecutive_failures >= BACKOFF_AFTER_FAILURES:
            exponent = stats.consecutive_failures - BACKOFF_AFTER_FAILURES
            delay = min(MAX_INSTRUMENT_BACKOFF, scheduled.config.interval * 2.0**exponent)
            scheduled.retry_at = loop.time() + delay
        scheduled.last_status_at = loop.time()
        self._emit(scheduled.builder.status(ok=False, failed_points=0, latency=latency, error=message, time_ns=time_ns))


def _wake(sleeper: asyncio.Future[None]) -> None:
    if not sleeper.done():
        sleeper.set_result(None)
