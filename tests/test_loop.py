"""The event loop helpers: the loop policy switch and the precise sleep of the RS-485 silences."""

from __future__ import annotations

import asyncio
import time

import pytest

from edge_daq import loop as loop_module
from edge_daq.loop import install_event_loop_policy, sleep_precisely


@pytest.mark.parametrize("delay", [0.0, -1.0, 0.0004, 0.00175, 0.012])
async def test_sleep_precisely_never_returns_early(delay: float) -> None:
    for _ in range(5):
        started = time.monotonic()
        await sleep_precisely(delay)
        assert time.monotonic() - started >= max(0.0, delay)


async def test_long_sleeps_wait_on_the_loop_and_only_the_tail_in_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    tails: list[float] = []
    real_sleep = time.sleep

    def record_tail(seconds: float) -> None:
        tails.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(loop_module.time, "sleep", record_tail)
    await sleep_precisely(0.03)
    assert len(tails) <= 1
    assert all(0 < tail <= loop_module.PRECISE_BELOW for tail in tails)


async def test_a_precise_sleep_can_be_cancelled() -> None:
    task = asyncio.create_task(sleep_precisely(0.5))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_asyncio_loop_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_DAQ_LOOP", "asyncio")
    assert install_event_loop_policy() == "asyncio"
