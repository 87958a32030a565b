"""Actions of the rig file, taken by the daemon: writes at test start/stop, protective writes on a confirmed
DUT failure (per socket), and interlocks over live points.

- The reliability engine's events drive the first two: ``test_started`` runs ``test.on_start``,
  ``test_stopped`` runs ``test.on_stop``, ``failure`` runs the rule's ``on_failure`` (or
  ``failures.on_failure``) with ``{socket}`` replaced by the failed DUT's socket. They are queued when the
  event happens and sent at once: a protective write reaches the bus within one poll of the confirmation.
- Interlocks follow the records (a ring reader of their own): when ``when`` holds for ``for`` (record time),
  the interlock trips once: its ``do`` writes are queued and, with ``then: pause``, the test is paused with
  the interlock's name as the exclusion's reason, at the trip. It re-arms when the condition clears.
- Every write goes through the write service (guards, read-back, events). A write that failed (not one
  that was refused: a refusal is a configuration matter) is retried with bounded backoff
  (:data:`RETRY_DELAYS`), logged once, and listed in :meth:`ActionRunner.status` while it retries.

The daemon is not the safety interlock: hardware is. These actions reduce damage; they do not replace it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from edge_daq.config.models import RigConfig
from edge_daq.record import Record
from edge_daq.reliability.engine import RecordReader
from edge_daq.writes.action_config import SOCKET_PLACEHOLDER, Interlock, WriteAction
from edge_daq.writes.service import WriteOrder, WriteService

log = structlog.get_logger("edge_daq.writes.actions")

RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)
"""Seconds before each retry of a failed action; after the last, the action is given up (and logged)."""
MAX_QUEUED = 1024
READ_RECORDS = 1000
NS = 1_000_000_000

Pause = Callable[[str, str], None]
"""(rig, reason): pause the rig's test."""


@dataclass(frozen=True, slots=True)
class Job:
    rig: str
    instrument: str
    point: str
    value: float
    why: str
    source: str


@dataclass(slots=True)
class _Interlock:
    rig: str
    config: Interlock
    instrument: str
    field: str
    since_ns: int | None = None
    tripped: bool = False


def socket_point(rig: RigConfig, action: WriteAction, socket: int) -> str | None:
    """The point a ``{socket}`` action names for ``socket`` (``enable{socket}`` -> ``enable07``)."""
    prefix, _, suffix = action.point.partition(SOCKET_PLACEHOLDER)
    for instrument in rig.instruments:
        if instrument.name != action.instrument:
            continue
        for point in getattr(instrument, "points", ()):
            name = point.name or ""
            middle = name[len(prefix) : len(name) - len(suffix)] if len(name) > len(prefix) + len(suffix) else ""
            if name.startswith(prefix) and name.endswith(suffix) and middle.isdigit() and int(middle) == socket:
                return str(name)
    return None


class ActionRunner:
    def __init__(
        self,
        *,
        rigs: Callable[[], Sequence[RigConfig]],
        service: WriteService,
        pause: Pause,
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        self._rigs = rigs
        self._service = service
        self._pause = pause
        self.retry_delays = tuple(retry_delays)
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=MAX_QUEUED)
        self.taken = 0
        self.failed = 0
        self.dropped = 0
        self.retrying: dict[str, str] = {}
        """Actions being retried: target -> the last error (for /status)."""
        self._interlocks: list[_Interlock] = []
        self.reload()

    def reload(self) -> None:
        """Rebuild the interlocks from the rigs (a tripped one stays tripped if it is still configured)."""
        previous = {(i.rig, i.config.name): i for i in self._interlocks}
        self._interlocks = []
        for rig in self._rigs():
            for interlock in rig.interlocks:
                instrument, _, field = interlock.when.point.rpartition(".")
                state = _Interlock(rig.rig, interlock, instrument, field)
                if (old := previous.get((rig.rig, interlock.name))) is not None and old.config == interlock:
                    state.since_ns, state.tripped = old.since_ns, old.tripped
                self._interlocks.append(state)

    def _rig(self, name: str) -> RigConfig | None:
        return next((rig for rig in self._rigs() if rig.rig == name), None)

    def _queue_job(self, job: Job) -> None:
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("action_dropped", rig=job.rig, target=f"{job.instrument}.{job.point}", queued=MAX_QUEUED)

    # -- triggers

    def on_event(self, rig_name: str, kind: str, event: Mapping[str, Any], dut: Any) -> None:
        """The reliability engine's observer: queue the actions an event triggers."""
        rig = self._rig(rig_name)
        if rig is None:
            return
        actions: list[WriteAction] = []
        socket: int | None = None
        if kind == "test_started" and rig.test is not None:
            actions = rig.test.on_start
        elif kind == "test_stopped" and rig.test is not None:
            actions = rig.test.on_stop
        elif kind == "failure" and rig.failures is not None and dut is not None:
            rule = next((r for r in rig.failures.rules if r.name == event.get("rule")), None)
            actions = rule.on_failure if rule is not None and rule.on_failure is not None else rig.failures.on_failure
            socket = int(dut.socket)
        for action in actions:
            point = action.point
            if socket is not None and SOCKET_PLACEHOLDER in point:
                resolved = socket_point(rig, action, socket)
                if resolved is None:
                    log.error("action_target_missing", rig=rig_name, target=action.write, socket=socket)
                    continue
                point = resolved
            why = f"{kind}: {event.get('message', '')}"[:300]
            self._queue_job(Job(rig_name, action.instrument, point, action.value, why, "action"))

    def on_record(self, record: Record) -> None:
        """Judge the interlocks on one record."""
        rig, instrument = record.tags.get("rig"), record.tags.get("instrument")
        for interlock in self._interlocks:
            if interlock.rig != rig or interlock.instrument != instrument or "socket" in record.tags:
                continue
            value = record.fields.get(interlock.field)
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            condition = interlock.config.when
            if not condition.violated(float(value)):
                if interlock.tripped:
                    log.info("interlock_cleared", rig=rig, interlock=interlock.config.name, value=value)
                interlock.since_ns, interlock.tripped = None, False
                continue
            if interlock.since_ns is None:
                interlock.since_ns = record.time_ns
            if not interlock.tripped and record.time_ns - interlock.since_ns >= condition.for_ * NS:
                interlock.tripped = True
                self._trip(interlock, value)

    def _trip(self, interlock: _Interlock, value: float) -> None:
        name = interlock.config.name
        log.warning("interlock_tripped", rig=interlock.rig, interlock=name, point=interlock.config.when.point,
                    value=value)  # fmt: skip
        why = f"interlock {name}: {interlock.config.when.point} = {value:g}"
        for action in interlock.config.do:
            self._queue_job(Job(interlock.rig, action.instrument, action.point, action.value, why, "interlock"))
        if interlock.config.then == "pause":
            try:
                self._pause(interlock.rig, name)
            except Exception as error:  # no test to pause is not a reason to skip the writes
                log.warning("interlock_pause_failed", rig=interlock.rig, interlock=name, error=str(error)[:200])

    # -- execution

    async def run(self, reader: RecordReader | None = None) -> None:
        """Take queued actions (and, with ``reader``, judge interlocks on the records) until cancelled."""
        async with asyncio.TaskGroup() as group:
            if reader is not None:
                group.create_task(self._follow(reader), name="interlocks")
            while True:
                job = await self._queue.get()
                group.create_task(self._take(job), name=f"action {job.rig}/{job.instrument}.{job.point}")

    async def _follow(self, reader: RecordReader) -> None:
        while True:
            await reader.wait(1, max_wait=1.0)
            batch = reader.read(READ_RECORDS)
            for record in batch.records:
                self.on_record(record)
            reader.commit(batch)

    async def _take(self, job: Job) -> None:
        target = f"{job.rig}/{job.instrument}.{job.point}"
        order = WriteOrder(rig=job.rig, instrument=job.instrument, point=job.point, value=job.value,
                           who="edge-daq", why=job.why, source=job.source)  # fmt: skip
        for attempt, delay in enumerate((*self.retry_delays, None)):
            outcome = await self._service.write(order)
            if outcome.ok:
                self.taken += 1
                if self.retrying.pop(target, None) is not None:
                    log.info("action_recovered", target=target, attempts=attempt + 1)
                return
            if outcome.state == "refused" or delay is None:
                break
            if target not in self.retrying:  # logged once per episode; the events have every attempt
                log.error("action_retrying", target=target, error=outcome.message, retries=len(self.retry_delays))
            self.retrying[target] = outcome.message
            await asyncio.sleep(delay)
        self.failed += 1
        self.retrying.pop(target, None)
        log.error("action_failed", target=target, error=outcome.message)

    def status(self) -> dict[str, Any]:
        return {
            "taken": self.taken,
            "failed": self.failed,
            "dropped": self.dropped,
            "queued": self._queue.qsize(),
            "retrying": dict(self.retrying),
            "interlocks_tripped": [f"{i.rig}/{i.config.name}" for i in self._interlocks if i.tripped],
        }
