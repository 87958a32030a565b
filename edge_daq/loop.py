"""The event loop edge-daq runs on (uvloop when it is installed, else asyncio's own), and a sleep finer than its timer.

uvloop is optional (not a dependency) and the drivers are tested under it (tests/integration/test_uvloop.py). It is no
faster here: the pipeline benchmark's acquisition, 16 Modbus TCP links polled back to back into InfluxDB, made
776k values/s on uvloop 0.23 against 821k on asyncio's loop, at the same 87 % of a core. Set
``EDGE_DAQ_LOOP=asyncio`` to keep asyncio's loop even when uvloop is installed.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import os
import time

import structlog

log = structlog.get_logger("edge_daq.loop")


def install_event_loop_policy() -> str:
    """Install uvloop's event loop policy if uvloop can be imported; return the loop's name (``uvloop``/``asyncio``).

    Call once, before the first ``asyncio.run``.
    """
    if os.environ.get("EDGE_DAQ_LOOP", "").lower() == "asyncio":
        return "asyncio"
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    log.debug("event_loop_policy", loop="uvloop", version=getattr(uvloop, "__version__", "?"))
    return "uvloop"


THREAD_BELOW = 0.002
"""The part of a :func:`sleep_precisely` (seconds) before its deadline that a thread's ``time.sleep`` times."""
SPIN_BELOW = 0.0003
"""The last part of a :func:`sleep_precisely` (seconds), waited by giving the loop turns."""


async def sleep_precisely(delay: float) -> None:
    """Sleep ``delay`` seconds to within a few hundredths of a millisecond, where ``asyncio.sleep`` overshoots by
    half a millisecond on average: the loop's selector rounds its timeout up to whole milliseconds
    (``epoll_wait``), and so does uvloop's timer.

    For the RS-485 bus's inter-frame silences (1.75 ms above 19200 baud): rounded up, they cost a 115200-baud
    line a sixth of its transactions (bench/rtu_line.py). In three parts, each finer and costlier than the one
    before: the loop's timer for whole milliseconds ending at least one before the deadline; a worker thread's
    ``time.sleep`` until :data:`SPIN_BELOW` before it (its hand-over overshoots by about 0.2 ms here, too much
    alone); then turns of the loop (``asyncio.sleep(0)``) until the deadline: other tasks keep running, and the
    busy part is a few tenths of a millisecond per call.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + delay
    if (timed := math.floor((delay - THREAD_BELOW) * 1000.0) / 1000.0) > 0:
        await asyncio.sleep(timed)  # rounded up to whole milliseconds: still at least 1 ms short of the deadline
    if (left := deadline - SPIN_BELOW - loop.time()) > 0:
        await asyncio.to_thread(time.sleep, left)
    while loop.time() < deadline:  # noqa: ASYNC110 - polling the clock is the point: no event to wait for
        await asyncio.sleep(0)
