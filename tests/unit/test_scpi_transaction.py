"""A SCPI write and its check hold the link together: another task's request waits until both are done."""

from __future__ import annotations

import asyncio

from edge_daq.drivers.scpi.transaction import TransactionLock


async def run(transaction: bool) -> list[str]:
    lock = TransactionLock()
    order: list[str] = []

    async def request(name: str, delay: float = 0.0) -> None:
        async with lock.hold():  # what every link request does
            await asyncio.sleep(delay)
            order.append(name)

    async def write_then_check() -> None:
        if transaction:
            async with lock.hold():
                await request("write", 0.01)
                await request("check", 0.02)
        else:
            await request("write", 0.01)
            await request("check", 0.02)

    async def poll() -> None:
        await asyncio.sleep(0.005)  # arrives while the write is on the wire
        await request("poll")

    await asyncio.gather(write_then_check(), poll())
    return order


async def test_a_held_transaction_keeps_another_tasks_request_out_and_its_own_requests_in() -> None:
    assert await run(transaction=True) == ["write", "check", "poll"]
    assert await run(transaction=False) == ["write", "poll", "check"]  # what the write's check risked before


async def test_the_lock_is_free_again_after_a_failure_inside_it() -> None:
    lock = TransactionLock()
    try:
        async with lock.hold():
            raise RuntimeError("the write failed")
    except RuntimeError:
        pass
    async with asyncio.timeout(1), lock.hold():
        pass
