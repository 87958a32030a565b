"""The write service inside the daemon: its events into the journal and the outputs, its control command.

Events of a rig with reliability keys go through that rig's engine (its journal, an ``edge_daq_event``
record, the MQTT outputs that publish events at once); those of other rigs are written here the same way:
the rig's ``journal.jsonl`` under the state folder (appended in a worker thread, one at a time) and an
``edge_daq_event`` record in the ring, which reaches every output that takes events.

The control command ``write`` arrives on the reliability engine's control socket when the gateway has a
reliability rig; otherwise :func:`serve_control` listens on the same path (``<state_dir>/control.sock``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from edge_daq.buffer.ring import RingBuffer
from edge_daq.config.models import GatewayConfig, RigConfig, base_tags
from edge_daq.record import FieldValue, Record, Series
from edge_daq.reliability.control import ControlServer
from edge_daq.reliability.engine import ReliabilityEngine
from edge_daq.reliability.journal import JOURNAL_FILE, append_lines, encode_event, rig_folder
from edge_daq.scheduling import LinkScheduler
from edge_daq.writes.service import WriteService

log = structlog.get_logger("edge_daq.writes")

EVENT_MEASUREMENT = "edge_daq_event"


class WriteEvents:
    """The daemon's :data:`~edge_daq.writes.service.EventSink`."""

    def __init__(
        self,
        *,
        gateway: Callable[[], GatewayConfig],
        rigs: Callable[[], Iterable[RigConfig]],
        engine: Callable[[], ReliabilityEngine | None],
        ring: RingBuffer,
    ) -> None:
        self._gateway, self._rigs, self._engine, self._ring = gateway, rigs, engine, ring
        self._disk = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="write-journal")
        self.not_journaled = 0

    def __call__(self, rig: str, kind: str, message: str, details: dict[str, Any]) -> None:
        now = time.time_ns()
        engine = self._engine()
        if engine is not None and rig in engine.rigs:
            engine.rigs[rig].event(kind, message, details, now)
            return
        gateway = self._gateway()
        config = next((candidate for candidate in self._rigs() if candidate.rig == rig), None)
        if config is None:
            # A rig name from a client that names no rig: no journal folder, no series for it (the service
            # logged the refusal and counted it).
            return
        tags = {**base_tags(gateway, config), "event": kind}
        fields: dict[str, FieldValue] = {"message": message}
        fields.update({k: v for k, v in details.items() if isinstance(v, bool | int | float | str)})
        self._ring.append(Record(Series(EVENT_MEASUREMENT, tags), fields, now))
        event = {
            "time": datetime.fromtimestamp(now / 1e9, UTC).isoformat(),
            "time_ns": now,
            "rig": rig,
            "event": kind,
            "message": message,
            **details,
        }
        path = rig_folder(gateway.state_path, rig) / JOURNAL_FILE
        future = self._disk.submit(append_lines, path, [encode_event(event)])
        future.add_done_callback(self._journaled)

    def _journaled(self, future: concurrent.futures.Future[None]) -> None:
        if (error := future.exception()) is not None:
            self.not_journaled += 1
            if self.not_journaled == 1:
                log.error("write_event_not_journaled", error=str(error)[:200])

    def close(self) -> None:
        self._disk.shutdown(wait=True)


def build_service(
    *,
    schedulers: Callable[[], Iterable[LinkScheduler]],
    events: WriteEvents,
) -> WriteService:
    return WriteService(schedulers=schedulers, events=events)


def has_writable_points(rigs: Iterable[RigConfig]) -> bool:
    for rig in rigs:
        for instrument in rig.instruments:
            for point in getattr(instrument, "points", ()):
                if getattr(point, "write", None) is not None:
                    return True
    return False


async def serve_control(path: Path, service: WriteService, stop: asyncio.Event) -> None:
    """The control socket for ``write`` while no reliability engine serves it; until ``stop`` is set."""

    def handler(request: Mapping[str, Any]) -> Any:
        if request.get("command") != "write":
            return {"ok": False, "error": f"command {request.get('command')!r} needs a rig with reliability keys"}
        return service.handle(request)

    control = ControlServer(path, handler)
    await control.start()
    try:
        await stop.wait()
    finally:
        await control.close()
