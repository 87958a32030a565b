"""The delivery runner's retry, batching and drain logic, with a scripted output.

The real outputs are tested against real servers in their own test modules; here the output is a script so
that each failure can be placed exactly.
"""

import asyncio
from collections.abc import Callable, Sequence

import pytest

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
