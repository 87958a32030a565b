"""The delivery runner's retry, batching and drain logic, with a scripted output.

The real outputs are tested against real servers in their own test modules; here the output is a script so
that each failure can be placed exactly.
"""

import asyncio
from collections.abc import Callable, Sequence

import pytest
import structlog
import structlog.testing

from edge_daq import delivery
from edge_daq.buffer.ring import RingBuffer
from edge_daq.delivery import OutputRunner
from edge_daq.errors import FatalSinkError, RetriableSinkError, SinkError
from edge_daq.record import Record, Series
from edge_daq.sinks.base import Output, OutputConfig, WriteResult
from edge_daq.stats import OutputStats

SERIES = Series("m", {"rig": "r"})


class ScriptedOutput(Output):
    name = "scripted"

    def __init__(self, failures: list[SinkError] | None = None) -> None:
        self.failures = list(failures or [])
        self.batches: list[list[int]] = []
        self.attempts = 0
        self.closed = False

    async def write(self, records: Sequence[Record]) -> WriteResult:
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        self.batches.append([int(r.fields["n"]) for r in records])
        return WriteResult(written=len(records))

    async def close(self) -> None:
        self.closed = True


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "INITIAL_BACKOFF", 0.01)
    monkeypatch.setattr(delivery, "FATAL_MIN_BACKOFF", 0.02)


def make_runner(output: Output, ring: RingBuffer, **config: object) -> tuple[OutputRunner, OutputStats]:
    stats = OutputStats(output.name)
    cfg = OutputConfig.model_validate({"batch_size": 10, "flush_interval": 0.05, "max_backoff": 0.05, **config})
    return OutputRunner(output, ring.reader(output.name), cfg, stats), stats


async def run_until_delivered(runner: OutputRunner, stats: OutputStats, count: int) -> None:
    task = asyncio.create_task(runner.run())
    async with asyncio.timeout(5):
        while stats.delivered < count:
            await asyncio.sleep(0.01)
    runner.begin_drain()
    await asyncio.wait_for(task, 5)


async def test_batches_by_size_and_commits_after_ack() -> None:
    ring = RingBuffer(1000)
    output = ScriptedOutput()
    runner, stats = make_runner(output, ring)
    ring.extend(Record(SERIES, {"n": n}, n) for n in range(25))
    await run_until_delivered(runner, stats, 25)
    assert [n for batch in output.batches for n in batch] == list(range(25))
    assert all(len(batch) <= 10 for batch in output.batches)
    assert len(ring) == 0  # committed records are released
    assert output.closed


async def test_retriable_errors_keep_the_batch_and_deliver_it_once() -> None:
    ring = RingBuffer(1000)
    output = ScriptedOutput([RetriableSinkError("503"), RetriableSinkError("timeout"), FatalSinkError("401")])
    runner, stats = make_runner(output, ring)
    ring.extend(Record(SERIES, {"n": n}, n) for n in range(5))
    await run_until_delivered(runner, stats, 5)
    assert output.batches == [[0, 1, 2, 3, 4]]
    assert stats.retries == 3
    assert stats.failing_since is None


async def test_retry_after_is_honoured() -> None:
    ring = RingBuffer(1000)
    output = ScriptedOutput([RetriableSinkError("429", retry_after=0.3)])
    runner, stats = make_runner(output, ring)
    ring.append(Record(SERIES, {"n": 1}, 1))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await run_until_delivered(runner, stats, 1)
    assert loop.time() - started >= 0.3


async def test_a_partial_batch_is_flushed_after_flush_interval() -> None:
    ring = RingBuffer(1000)
    output = ScriptedOutput()
    runner, stats = make_runner(output, ring, batch_size=1000, flush_interval=0.1)
    ring.extend(Record(SERIES, {"n": n}, n) for n in range(3))
    await run_until_delivered(runner, stats, 3)
    assert output.batches == [[0, 1, 2]]


async def test_drain_delivers_everything_pending_then_returns() -> None:
    ring = RingBuffer(1000)
    output = ScriptedOutput()
    runner, stats = make_runner(output, ring, batch_size=7, flush_interval=60)
    ring.extend(Record(SERIES, {"n": n}, n) for n in range(20))
    runner.begin_drain()
    await asyncio.wait_for(runner.run(), 5)
    assert stats.delivered == 20


class OverlappingOutput(Output):
    """Takes two writes at once; each write waits until the test releases it, so their order can be chosen."""

    name = "overlapping"
    writes_in_flight = 2

    def __init__(self) -> None:
        self.started: list[list[int]] = []
        self.release: dict[int, asyncio.Event] = {}
        self.active = 0
        self.most_active = 0

    async def write(self, records: Sequence[Record]) -> WriteResult:
        first = int(records[0].fields["n"])
        self.started.append([int(r.fields["n"]) for r in records])
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            await self.release.setdefault(first, asyncio.Event()).wait()
        finally:
            self.active -= 1
        return WriteResult(written=len(records))


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.005)


async def test_two_writes_overlap_and_commit_in_order() -> None:
    ring = RingBuffer(1000)
    output = OverlappingOutput()
    runner, stats = make_runner(output, ring)
    reader = runner.source
    ring.extend(Record(SERIES, {"n": n}, n) for n in range(30))
    task = asyncio.create_task(runner.run())
    await until(lambda: len(output.started) == 2)
    assert output.started == [list(range(10)), list(range(10, 20))]  # the second full batch did not wait
    # The second write finishes first: nothing is committed until the first one is acknowledged too.
    output.release.setdefault(10, asyncio.Event()).set()
    await asyncio.sleep(0.05)
    assert reader.pending == 30
    output.release.setdefault(0, asyncio.Event()).set()
    await until(lambda: reader.pending == 10)
    assert stats.delivered == 20
    output.release.setdefault(20, asyncio.Event()).set()
    await until(lambda: stats.delivered == 30)
    runner.begin_drain()
    await asyncio.wait_for(task, 5)
    assert output.most_active == 2
    assert len(ring) == 0


async def test_a_partial_batch_is_not_started_beside_a_write_in_flight() -> None:
    ring = RingBuffer(1000)
    output = OverlappingOutput()
    runner, stats = make_runner(output, ring)
    ring.extend(Record(SERIES, {"n": n}, n) for n in range(15))
    task = asyncio.create_task(runner.run())
    await until(lambda: len(output.started) == 1)
    await asyncio.sleep(0.1)  # two flush intervals: the 5 left wait for the write in flight, not beside it
    assert output.started == [list(range(10))]
    output.release.setdefault(0, asyncio.Event()).set()
    await until(lambda: len(output.started) == 2)
    assert output.started[1] == list(range(10, 15))
    output.release.setdefault(10, asyncio.Event()).set()
    await until(lambda: stats.delivered == 15)
    runner.begin_drain()
    await asyncio.wait_for(task, 5)
    assert output.most_active == 1


async def test_while_failing_no_further_batch_is_started() -> None:
    ring = RingBuffer(1000)
    output = ScriptedOutput([RetriableSinkError("503")] * 3)
    output.writes_in_flight = 2  # type: ignore[misc]
    attempts: list[tuple[int, bool]] = []  # (first n of the batch, failed)
    write = output.write

    async def logged_write(records: Sequence[Record]) -> WriteResult:
        failing = bool(output.failures)
        attempts.append((int(records[0].fields["n"]), failing))
        return await write(records)

    output.write = logged_write  # type: ignore[method-assign]
    runner, stats = make_runner(output, ring)
    ring.extend(Record(SERIES, {"n": n}, n) for n in range(40))
    await run_until_delivered(runner, stats, 40)
    assert sorted(n for batch in output.batches for n in batch) == list(range(40))  # each record once
    last_failure = max(index for index, (_, failed) in enumerate(attempts) if failed)
    # Only the two batches under way when the outage began are retried until it ends.
    assert {first for first, _ in attempts[: last_failure + 1]} <= {0, 10}
    assert len(ring) == 0


# --- prompt recovery: the probe ends a backoff once the destination is seen coming back -------------------------


class ProbedOutput(ScriptedOutput):
    """Fails as scripted; each probe returns the next answer of ``answers`` (the last one repeats)."""

    def __init__(self, failures: list[SinkError], answers: Sequence[bool | Exception | None]) -> None:
        super().__init__(failures)
        self.answers = answers
        self.probes = 0

    async def probe(self) -> bool | None:
        answer = self.answers[min(self.probes, len(self.answers) - 1)]
        self.probes += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def long_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first backoff of 10-20 s and probes every 50 ms: only a probe can end the wait within the test."""
    monkeypatch.setattr(delivery, "INITIAL_BACKOFF", 20.0)
    monkeypatch.setattr(delivery, "PROBE_INTERVAL", 0.05)


async def timed_delivery(output: Output, **config: object) -> tuple[float, OutputStats]:
    ring = RingBuffer(1000)
    runner, stats = make_runner(output, ring, **{"max_backoff": 300, **config})
    ring.append(Record(SERIES, {"n": 1}, 1))
    started = asyncio.get_running_loop().time()
    await run_until_delivered(runner, stats, 1)
    return asyncio.get_running_loop().time() - started, stats


@pytest.mark.usefixtures("long_backoff")
async def test_a_destination_seen_coming_back_ends_the_backoff_at_once() -> None:
    output = ProbedOutput([RetriableSinkError("connection refused")], [False, False, True])
    elapsed, stats = await timed_delivery(output)
    assert elapsed < 2.0  # instead of 10-20 s
    assert output.probes == 3
    assert output.batches == [[1]]
    assert stats.failing_since is None


@pytest.mark.usefixtures("long_backoff")
async def test_a_destination_that_answers_the_probe_waits_out_its_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    # Reachable but failing (a 500): retrying at every probe would hammer it. A first backoff of 0.3-0.6 s.
    monkeypatch.setattr(delivery, "INITIAL_BACKOFF", 0.6)
    output = ProbedOutput([RetriableSinkError("500")], [True])
    elapsed, _ = await timed_delivery(output)
    assert elapsed >= 0.3
    assert output.probes == 1  # not probed again once it answered


@pytest.mark.usefixtures("long_backoff")
@pytest.mark.parametrize(
    "error", [RetriableSinkError("429", retry_after=0.4), FatalSinkError("401")], ids=["retry_after", "fatal"]
)
async def test_retry_after_and_configuration_errors_are_not_probed(
    monkeypatch: pytest.MonkeyPatch, error: SinkError
) -> None:
    monkeypatch.setattr(delivery, "INITIAL_BACKOFF", 0.02)
    monkeypatch.setattr(delivery, "FATAL_MIN_BACKOFF", 0.4)
    output = ProbedOutput([error], [False, True])
    elapsed, _ = await timed_delivery(output)
    assert elapsed >= 0.4
    assert output.probes == 0


@pytest.mark.usefixtures("long_backoff")
async def test_an_output_without_a_probe_or_a_failing_probe_waits_out_its_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(delivery, "INITIAL_BACKOFF", 0.6)
    # Captured from structlog itself: another test may have configured logging to a stream capsys does not see.
    with structlog.testing.capture_logs() as logs:
        for answers in ([None], [RuntimeError("probe bug")]):
            output = ProbedOutput([RetriableSinkError("refused"), RetriableSinkError("refused")], answers)
            elapsed, _ = await timed_delivery(output)
            assert elapsed >= 0.3 + 0.6  # two plain backoffs: 0.3-0.6 s, then 0.6-1.2 s
            assert output.probes == 2  # once per backoff, then it is left alone
    assert [entry["event"] for entry in logs].count("output_probe_failed") == 1  # logged once, not per backoff


@pytest.mark.usefixtures("long_backoff")
async def test_a_drain_ends_a_long_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "DRAIN_RETRY_DELAY", 0.1)
    ring = RingBuffer(1000)
    output = ProbedOutput([RetriableSinkError("refused")], [False])  # still down when the drain begins
    runner, stats = make_runner(output, ring, max_backoff=300)
    ring.append(Record(SERIES, {"n": 1}, 1))
    task = asyncio.create_task(runner.run())
    await until(lambda: output.probes >= 2)
    runner.begin_drain()
    await asyncio.wait_for(task, 2)
    assert stats.delivered == 1


class SlowOutput(Output):
    """Each write takes ``seconds``; remembers when each started and ended (monotonic)."""

    name = "slow"

    def __init__(self, seconds: float, on_first: Callable[[], None]) -> None:
        self.seconds = seconds
        self.on_first = on_first
        self.spans: list[tuple[float, float]] = []

    async def write(self, records: Sequence[Record]) -> WriteResult:
        started = asyncio.get_running_loop().time()
        if not self.spans:
            self.on_first()
        await asyncio.sleep(self.seconds)
        self.spans.append((started, asyncio.get_running_loop().time()))
        return WriteResult(written=len(records))


async def test_records_that_came_during_a_write_wait_one_flush_interval_from_the_previous_read() -> None:
    """Not a whole flush interval more after the write ends: that is what a record's latency to the database is."""
    ring = RingBuffer(1000)
    output = SlowOutput(0.7, on_first=lambda: ring.append(Record(SERIES, {"n": 1}, 1)))
    runner, stats = make_runner(output, ring, batch_size=1000, flush_interval=0.6)
    ring.append(Record(SERIES, {"n": 0}, 0))
    await run_until_delivered(runner, stats, 2)
    (_, first_end), (second_start, _) = output.spans
    # The second record waited 0.7 s (the write) since the first batch's read, more than the flush interval: it
    # goes at once, where waiting from the write's end would start it 0.6 s later.
    assert second_start - first_end < 0.3


async def _start_of_a_batch_after_a_quiet_write(write_seconds: float, flush_interval: float) -> float:
    """How long a lone record waits before its write starts, once the runner has seen one write's duration."""
    ring = RingBuffer(1000)
    output = SlowOutput(write_seconds, on_first=lambda: None)
    runner, stats = make_runner(output, ring, batch_size=1000, flush_interval=flush_interval)
    ring.append(Record(SERIES, {"n": 0}, 0))
    task = asyncio.create_task(runner.run())
    appended = 0.0
    async with asyncio.timeout(10):
        for count in (1, 2):
            while stats.delivered < count:
                await asyncio.sleep(0.01)
            if count == 1:
                await asyncio.sleep(0.1)  # the runner is idle, waiting for a record: the batch's wait starts with it
                appended = asyncio.get_running_loop().time()
                ring.append(Record(SERIES, {"n": 1}, 1))
    runner.begin_drain()
    await asyncio.wait_for(task, 5)
    return output.spans[1][0] - appended


async def test_a_partial_batch_starts_early_by_the_time_writes_take() -> None:
    """flush_interval is the record's budget to the destination: a 0.25 s write starts the batch 0.25 s early."""
    waited = await _start_of_a_batch_after_a_quiet_write(0.25, flush_interval=0.8)
    assert 0.45 < waited < 0.65, waited


async def test_slow_writes_still_wait_half_the_flush_interval() -> None:
    """A database slower than the interval keeps getting batches, not a stream of one-record writes."""
    waited = await _start_of_a_batch_after_a_quiet_write(1.0, flush_interval=0.6)
    assert 0.28 < waited < 0.45, waited


def test_write_allowance_is_a_high_quantile_of_recent_writes() -> None:
    times = delivery.WriteTimes()
    assert times.allowance(1.0) == 0.0
    for seconds in [0.1] * 28 + [0.3] * 4:
        times.add(seconds)
    assert times.allowance(1.0) == pytest.approx(0.3)
    for _ in range(delivery.WRITE_TIMES_KEPT):
        times.add(0.05)  # only the recent writes count
    assert times.allowance(1.0) == pytest.approx(0.05)
    times.add(5.0)
    assert times.allowance(1.0) == pytest.approx(0.05)  # one slow write is not the 90th percentile
