"""A link's lock that one task can hold across several requests: a write and the check that follows it.

A SCPI write is a command with no reply, then ``:SYST:ERR?`` or ``*OPC?``. If a poll of the same link (another
task) slipped in between, its own ``:SYST:ERR?`` drain could take the write's error, and the write's check would
read the poll's. Each request takes the lock; a task that already holds it (inside :meth:`hold`) goes straight on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class TransactionLock:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[object] | None = None

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Hold the link for the block: requests of other tasks wait, the holder's own go through."""
        task = asyncio.current_task()
        if task is not None and self._owner is task:
            yield
            return
        async with self._lock:
            self._owner = task
            try:
                yield
            finally:
                self._owner = None
