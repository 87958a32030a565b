"""The event loop edge-daq runs on (uvloop when it is installed, else asyncio's own), and a sleep finer than its timer.

uvloop is optional (not a dependency): it cuts the loop's share of the CPU on the hot paths that the pipeline and
fleet benchmarks (bench/pipeline.py, bench/fleet.py) show, sockets and callbacks, without any change elsewhere.
Set ``EDGE_DAQ_LOOP=asyncio`` to keep asyncio's loop even when uvloop is installed.
"""

from __future__ import annotations

import asyncio
import importlib
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


PRECISE_BELOW = 0.005
"""Waits shorter than this (seconds) are timed by :func:`sleep_precisely`'s thread, not by the loop's timer."""


async def sleep_precisely(delay: float) -> None:
    """Sleep ``delay`` seconds to within about a tenth of a millisecond, where ``asyncio.sleep`` may overshoot by a
    whole millisecond: the loop's selector rounds its timeout up to whole milliseconds (``epoll_wait``), and so
    does uvloop's timer.

    For the RS-485 bus's inter-frame silences (1.75 ms above 19200 baud): rounded up to 2-3 ms, they cost a
    115200-baud line a tenth of its transactions (bench/rtu_line.py). The short tail of the wait is a
    ``time.sleep`` in a worker thread, which wakes the loop the moment it ends; the thread is idle meanwhile.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + delay
    if delay > PRECISE_BELOW:
        await asyncio.sleep(delay - PRECISE_BELOW)
    if (left := deadline - loop.time()) > 0:
        await asyncio.to_thread(time.sleep, left)
