"""The event loop helpers: the loop policy switch and the precise sleep of the RS-485 silences."""

from __future__ import annotations

import asyncio
import time

import pytest

from edge_daq.loop import install_event_loop_policy, sleep_precisely


@pytest.mark.parametrize("delay", [0.0, -1.0, 0.0004, 0.00175, 0.012])
async def test_sleep_precisely_never_returns_early(delay: float) -> None:
    for _ in range(5):
        started = time.monotonic()
        await sleep_precisely(delay)
        assert time.monotonic() - started >= max(0.0, delay)


async def test_a_long_sleep_waits_on_the_loop_timer_then_a_thread_then_spins(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    threads: list[float] = []
    real_sleep, real_thread_sleep = asyncio.sleep, time.sleep

    async def record(seconds: float) -> None:
        waits.append(seconds)
        await real_sleep(seconds)

    def record_thread(seconds: float) -> None:
        threads.append(seconds)
        real_thread_sleep(seconds)

    monkeypatch.setattr("edge_daq.loop.asyncio.sleep", record)
    monkeypatch.setattr("edge_daq.loop.time.sleep", record_thread)
    await sleep_precisely(0.0304)
    assert waits[0] == pytest.approx(0.028)  # whole milliseconds, at least one short of the thread's part
    assert len(threads) <= 1
    assert all(0 < seconds <= 0.0034 for seconds in threads)
    assert set(waits[1:]) <= {0}


async def test_a_precise_sleep_can_be_cancelled() -> None:
    task = asyncio.create_task(sleep_precisely(0.5))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_asyncio_loop_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_DAQ_LOOP", "asyncio")
    assert install_event_loop_policy() == "asyncio"
