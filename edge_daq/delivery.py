"""Feeds one output from the buffer: batching by size and time, retries with backoff, cursor commits.

Each output has its own runner and its own cursor, so a slow or dead output never holds back another one nor
acquisition. A batch is committed only after the output acknowledged it; until then it is retried, whatever
the error, so nothing leaves the buffer undelivered except what the destination itself rejected as invalid.

Recovery is prompt: while backing off, the runner probes the destination (:meth:`Output.probe`) every
``PROBE_INTERVAL``; once a probe that failed succeeds, the destination is back and the batch is retried at
once, however long the backoff had grown. A destination that answers the probe but failed the write (a 500)
is not probed again until the next failure: its backoff runs its course. ``Retry-After`` and configuration
errors are never cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque

import structlog

from edge_daq.buffer.ring import Batch, BatchSource
from edge_daq.errors import FatalSinkError, RetriableSinkError, SinkError
from edge_daq.sinks.base import Output, OutputConfig
from edge_daq.stats import OutputStats

log = structlog.get_logger("edge_daq.delivery")

INITIAL_BACKOFF = 0.5
FATAL_MIN_BACKOFF = 30.0  # a misconfigured output (bad token) is not hammered
RETRY_AFTER_CAP = 600.0
PROBE_INTERVAL = 1.0  # seconds between reachability probes while backing off
PROBE_LIMIT = 60.0  # a probe still under way after this long is a bug: cancelled, and the backoff waited out
DRAIN_RETRY_DELAY = 1.0  # the longest wait between retries once draining: the supervisor bounds the total
WRITE_TIMES_KEPT = 32  # recent successful writes whose durations set how early a non-full batch starts
WRITE_ALLOWANCE_QUANTILE = 0.9
WRITE_ALLOWANCE_SHARE = 0.5  # a non-full batch waits at least this share of flush_interval: slow writes keep batching


class WriteTimes:
    """Durations of an output's recent successful writes.

    ``flush_interval`` is a record's latency budget to the destination, so a non-full batch starts that much
    earlier than the interval: by the 90th percentile of the recent writes, at most half the interval (a slow
    database still gets batches, not a stream of small writes). bench/fleet.py measures the effect: the p99
    from acquisition to queryable in InfluxDB was flush_interval + the p99 write before it.
    """

    def __init__(self) -> None:
        self._seconds: deque[float] = deque(maxlen=WRITE_TIMES_KEPT)

    def add(self, seconds: float) -> None:
        self._seconds.append(seconds)

    def allowance(self, flush_interval: float) -> float:
        if not self._seconds:
            return 0.0
        ordered = sorted(self._seconds)
        typical = ordered[min(len(ordered) - 1, int(len(ordered) * WRITE_ALLOWANCE_QUANTILE))]
        return min(typical, flush_interval * WRITE_ALLOWANCE_SHARE)


class Backoff:
    """Exponential backoff with full jitter, reset on success."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = max(initial, maximum)
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * 2**self._attempt)
        # Capped: 2**attempt as a float overflows after ~1,000 failures (days of outage at a long backoff).
        self._attempt = min(self._attempt + 1, 64)
        return random.uniform(ceiling / 2, ceiling)


class OutputRunner:
    def __init__(self, output: Output, source: BatchSource, config: OutputConfig, stats: OutputStats) -> None:
        self.output = output
        self.source = source
        self.config = config
        self.stats = stats
        self._backoff = Backoff(INITIAL_BACKOFF, config.max_backoff)
        self._closing = False
        self._drain_requested = asyncio.Event()  # ends the wait of a backoff early
        self._probe_failure_logged = False
        self._read_at = time.monotonic()  # when the last batch was read
        self.write_times = WriteTimes()
        self._log = log.bind(output=output.name)

    def begin_drain(self) -> None:
        """Stop waiting for full batches: deliver what is pending, then :meth:`run` returns."""
        self._closing = True
        self._drain_requested.set()
        self.source.wake()

    async def run(self) -> None:
        await self._open()
        in_flight: deque[tuple[Batch, asyncio.Task[None]]] = deque()
        try:
            while True:
                if in_flight and not self._may_start_another(len(in_flight)):
                    oldest, delivery = in_flight.popleft()
                    await delivery
                    self.source.commit(oldest)
                    self.stats.lost = self.source.lost
                    continue
                batch = await self._next_batch()
                if batch is None:
                    return
                in_flight.append((batch, asyncio.create_task(self._deliver(batch), name=f"{self.output.name} write")))
        finally:
            for _, delivery in in_flight:
                delivery.cancel()
            if in_flight:
                await asyncio.wait([delivery for _, delivery in in_flight])
            await self.output.close()

    def _may_start_another(self, in_flight: int) -> bool:
        """Whether to read the next batch while ``in_flight`` writes are under way: only a full batch, only
        while the output is healthy (an outage is retried one batch at a time), and only as many as allowed."""
        return (
            in_flight < self.output.writes_in_flight
            and self.stats.failing_since is None
            and self.source.unread >= self.config.batch_size
        )

    async def _open(self) -> None:
        while True:
            try:
                await self.output.open()
            except SinkError as error:
                await self._failed(error)
            else:
                return

    async def _next_batch(self) -> Batch | None:
        """Up to batch_size records, waiting at most flush_interval after the first, less the time writes take;
        None once drained."""
        source, size = self.source, self.config.batch_size
        if not self._closing:
            if source.unread:
                # These came while the previous batch was written: the flush interval runs from that batch's read,
                # not from now, or a record would wait a whole write longer (bench/fleet.py: p99 acquisition to
                # queryable in InfluxDB).
                first_seen = self._read_at
            else:
                await source.wait(1)
                first_seen = time.monotonic()
            interval = self.config.flush_interval
            left = interval - self.write_times.allowance(interval) - (time.monotonic() - first_seen)
            if not self._closing and source.unread < size and left > 0:
                await source.wait(size, max_wait=left)
        if source.unread == 0:
            return None
        self._read_at = time.monotonic()
        return source.read(size)

    async def _deliver(self, batch: Batch) -> None:
        while True:
            started = time.monotonic()
            try:
                result = await self.output.write(batch.records)
            except SinkError as error:
                if self._closing and not isinstance(error, RetriableSinkError | FatalSinkError):
                    raise
                await self._failed(error)
                continue
            self.write_times.add(time.monotonic() - started)
            self.stats.delivered += result.written
            self.stats.rejected += result.dropped
            self.stats.resent += result.resent
            self.stats.batches += 1
            self.stats.last_delivery_wall = time.time()
            if self.stats.failing_since is not None:
                self._log.info(
                    "output_recovered",
                    outage_seconds=round(time.monotonic() - self.stats.failing_since, 1),
                )
                self.stats.failing_since = None
                self.stats.last_error = ""
            self._backoff.reset()
            return

    async def _failed(self, error: SinkError) -> None:
        """Log the first failure of an outage at error level, then back off quietly."""
        self.stats.retries += 1
        self.stats.last_error = str(error)
        if self.stats.failing_since is None:
            self.stats.failing_since = time.monotonic()
            self._log.error("output_failed", error=str(error), kind=type(error).__name__)
        delay = self._backoff.next_delay()
        probe = True
        if isinstance(error, FatalSinkError):
            delay = max(delay, FATAL_MIN_BACKOFF)
            probe = False  # the server answers: it is the configuration that is wrong
        if isinstance(error, RetriableSinkError) and error.retry_after is not None:
            delay = max(delay, min(error.retry_after, RETRY_AFTER_CAP))
            probe = False  # the server asked for this wait
        await self._wait_before_retry(delay, probe=probe)

    async def _wait_before_retry(self, delay: float, *, probe: bool) -> None:
        """Wait ``delay`` seconds, or less: while ``probe``, until the destination is seen coming back (a probe
        failed, a later one succeeded); once draining, at most DRAIN_RETRY_DELAY (the drain has a time limit)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        probe = probe and delay > PROBE_INTERVAL
        unreachable_seen = False
        while (remaining := deadline - loop.time()) > 0:
            if self._closing:
                await asyncio.sleep(min(remaining, DRAIN_RETRY_DELAY))
                return
            next_probe = loop.time() + PROBE_INTERVAL
            if probe:
                reachable = await self._probe()
                if reachable is None:
                    probe = False
                elif not reachable:
                    unreachable_seen = True
                elif unreachable_seen:
                    self._log.info("output_reachable", backoff_left_seconds=round(deadline - loop.time(), 1))
                    return
                else:
                    probe = False  # it answers, yet the write failed: let the backoff run its course
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(min(deadline, next_probe) if probe else deadline):
                    await self._drain_requested.wait()

    async def _probe(self) -> bool | None:
        """The output's probe; None if it cannot tell. Not cut at the end of the backoff: the retry would wait for
        the same connection attempt (MQTT's probe is the reconnect), so a probe is only cut if it hangs."""
        try:
            async with asyncio.timeout(PROBE_LIMIT):
                return await self.output.probe()
        except TimeoutError:
            return None
        except Exception as error:  # a probe must not end the runner: fall back to the plain backoff
            if not self._probe_failure_logged:
                self._probe_failure_logged = True
                self._log.warning("output_probe_failed", error=repr(error))
            return None
