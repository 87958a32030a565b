"""The event loop edge-daq runs on: uvloop when it is installed, else asyncio's own.

uvloop is optional (not a dependency): it cuts the loop's share of the CPU on the hot paths that the pipeline and
fleet benchmarks (bench/pipeline.py, bench/fleet.py) show, sockets and callbacks, without any change elsewhere.
Set ``EDGE_DAQ_LOOP=asyncio`` to keep asyncio's loop even when uvloop is installed.
"""

from __future__ import annotations

import asyncio
import importlib
import os

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
