"""The bus scheduler's timing and failure handling, with a scripted instrument on a scripted link.

Driver behaviour over real sockets is tested in the driver modules; here polls are scripted so that lateness,
overruns and failures happen exactly when the test wants them.
"""

import asyncio
import itertools
from collections.abc import Callable

import pytest

from edge_daq.drivers.base import Instrument, InstrumentConfig, Link, PollResult
from edge_daq.errors import DriverConnectionError, DriverTimeoutError
from edge_daq.record import FieldValue, Record
from edge_daq.scheduling import STATUS_MEASUREMENT, LinkScheduler, RecordBuilder, ScheduledInstrument
from edge_daq.stats import InstrumentStats


class ScriptedLink(Link):
    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self._open = False
        self.refuse = False

    async def open(self) -> None:
        if self.refuse:
            raise DriverConnectionError("connection refused")
        self.opened += 1
        self._open = True

    async def close(self) -> None:
        self.closed += 1
        self._open = False

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def describe(self) -> str:
        return "scripted://link"


class ScriptedInstrument(Instrument[InstrumentConfig, ScriptedLink]):
    def __init__(self, config: InstrumentConfig, behaviour: Callable[[int], PollResult]) -> None:
        super().__init__(config)
        self.behaviour = behaviour
        self.poll_times: list[float] = []

    async def poll(self, link: ScriptedLink) -> PollResult:
        self.poll_times.append(asyncio.get_running_loop().time())
        return self.behaviour(len(self.poll_times))


def config(name: str = "chamber", interval: float = 0.05) -> InstrumentConfig:
    return InstrumentConfig(name=name, driver="scripted", interval=interval, timeout=0.05)


def scheduled(instrument: ScriptedInstrument) -> ScheduledInstrument:
    return ScheduledInstrument(
        instrument=instrument,  # type: ignore[arg-type]
        builder=RecordBuilder(instrument.config, {"gateway": "gw", "rig": "r"}),
        stats=InstrumentStats(rig="r", instrument=instrument.config.name, link="scripted://link"),
    )


async def run_for(scheduler: LinkScheduler, seconds: float) -> None:
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_polls_on_a_drift_free_grid_and_stamps_records() -> None:
    records: list[Record] = []
    instrument = ScriptedInstrument(config(interval=0.05), lambda n: PollResult({"n": n}))
    item = scheduled(instrument)
    scheduler = LinkScheduler(link=ScriptedLink(), instruments=[item], emit=records.append)
    await run_for(scheduler, 0.52)

    start = instrument.poll_times[0]
    # Each poll k starts at start + k * interval (no accumulated drift), give or take the loop's jitter.
    for k, at in enumerate(instrument.poll_times):
        assert at - start == pytest.approx(k * 0.05, abs=0.02)
    assert len(instrument.poll_times) in range(10, 13)
    data = [r for r in records if r.measurement == "chamber"]
    assert [r.fields["n"] for r in data] == list(range(1, len(data) + 1))
    assert data[0].tags == {"gateway": "gw", "rig": "r", "instrument": "chamber"}
    assert all(a.time_ns < b.time_ns for a, b in itertools.pairwise(data))
    assert item.stats.skipped == 0


async def test_a_poll_that_overruns_skips_whole_cycles_and_counts_them() -> None:
    instrument = ScriptedInstrument(config(interval=0.05), lambda n: PollResult({"n": n}))
    original_poll = instrument.poll
    overrun: list[float] = []

    async def slow_poll(link: ScriptedLink) -> PollResult:
        result = await original_poll(link)
        if len(instrument.poll_times) == 2:
            started = asyncio.get_running_loop().time()
            await asyncio.sleep(0.17)  # costs the next three due times (more on a busy machine: measured below)
            overrun.append(asyncio.get_running_loop().time() - started)
        return result

    instrument.poll = slow_poll  # type: ignore[method-assign]
    item = scheduled(instrument)
    await run_for(LinkScheduler(link=ScriptedLink(), instruments=[item], emit=lambda r: None), 0.4)
    # Every due time that passed during the overrun is skipped and counted: three, unless the sleep overslept.
    missed = int(overrun[0] / 0.05)
    assert missed >= 3
    assert item.stats.skipped == missed
    # After the overrun the grid is kept: the third poll is due on the grid, not bunched up early.
    assert instrument.poll_times[2] - instrument.poll_times[0] == pytest.approx((missed + 2) * 0.05, abs=0.02)


async def test_failures_are_counted_visible_in_data_and_backed_off() -> None:
    records: list[Record] = []

    def dead(n: int) -> PollResult:
        raise DriverTimeoutError("no answer from unit 1")

    instrument = ScriptedInstrument(config(interval=0.02), dead)
    item = scheduled(instrument)
    link = ScriptedLink()
    await run_for(LinkScheduler(link=link, instruments=[item], emit=records.append), 0.6)

    assert item.stats.failures == len(instrument.poll_times)
    # 30 cycles passed, but after three failures the instrument is retried at growing intervals.
    assert len(instrument.poll_times) < 10
    statuses = [r for r in records if r.measurement == STATUS_MEASUREMENT]
    assert len(statuses) == item.stats.failures
    assert all(r.fields["ok"] is False and "no answer" in str(r.fields["error"]) for r in statuses)
    assert link.closed >= 1  # repeated timeouts reopen the link


async def test_recovery_resets_backoff_and_writes_an_ok_status() -> None:
    records: list[Record] = []

    def flaky(n: int) -> PollResult:
        if n <= 2:
            raise DriverConnectionError("connection reset")
        return PollResult({"v": 1.0}, failed=["bad"], errors=[])

    instrument = ScriptedInstrument(config(interval=0.02), flaky)
    item = scheduled(instrument)
    await run_for(LinkScheduler(link=ScriptedLink(), instruments=[item], emit=records.append), 0.3)
    assert item.stats.consecutive_failures == 0
    assert item.stats.failed_points >= 1
    statuses = [r.fields["ok"] for r in records if r.measurement == STATUS_MEASUREMENT]
    assert statuses[:2] == [False, False]
    assert item.stats.polls > 5


async def test_a_link_that_cannot_open_fails_every_instrument_behind_it() -> None:
    link = ScriptedLink()
    link.refuse = True
    a = scheduled(ScriptedInstrument(config("a", 0.02), lambda n: PollResult({"x": 1})))
    b = scheduled(ScriptedInstrument(config("b", 0.02), lambda n: PollResult({"x": 1})))
    await run_for(LinkScheduler(link=link, instruments=[a, b], emit=lambda r: None), 0.2)
    assert a.stats.failures > 0
    assert b.stats.failures > 0
    assert a.stats.records == b.stats.records == 0
    assert "refused" in a.stats.last_error


async def test_timed_samples_become_records_at_their_own_times() -> None:
    """A subscription's data changes (PollResult.samples) are records at their times, not the poll's."""
    records: list[Record] = []
    samples: list[tuple[int, dict[str, FieldValue]]] = [
        (1_000_000_000_000_000_001, {"t": 1.5}),
        (1_000_000_000_500_000_000, {"t": 1.75, "door": True}),
    ]
    calls = itertools.count()
    instrument = ScriptedInstrument(
        config(interval=0.05), lambda n: PollResult({}, samples=list(samples) if next(calls) == 0 else [])
    )
    scheduler = LinkScheduler(link=ScriptedLink(), instruments=[scheduled(instrument)], emit=records.append)
    await run_for(scheduler, 0.18)
    data = [record for record in records if record.series.measurement == "chamber"]
    assert [(record.time_ns, record.fields) for record in data] == samples
    assert len(instrument.poll_times) >= 3  # the polls without changes gave no record
