"""The wait/wake logic that the ring's and the spool's readers share."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Waiter:
    """Lets one consumer wait until enough records are available, a deadline passes, or it is woken for good.

    The producer calls :meth:`notify` with what is available; the event is set only once the batch the
    consumer waits for is complete: one wake-up per batch, not per record.
    """

    __slots__ = ("_event", "wanted", "woken")

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.wanted = 1
        self.woken = False

    async def wait(self, available: Callable[[], int], min_records: int, max_wait: float | None) -> bool:
        """Whether ``min_records`` are available when the wait ends."""
        deadline = None if max_wait is None else asyncio.get_running_loop().time() + max_wait
        self.wanted = min_records
        try:
            async with asyncio.timeout_at(deadline):
                while available() < min_records and not self.woken:
                    self._event.clear()
                    await self._event.wait()
        except TimeoutError:
            pass
        finally:
            self.wanted = 1
        return available() >= min_records

    def notify(self, available: int) -> None:
        if available >= self.wanted:
            self._event.set()

    def wake(self) -> None:
        """End the current and every later wait at once (used when draining)."""
        self.woken = True
        self._event.set()
