"""The write service: every write to an instrument, guarded, sent through its bus, read back and journaled.

A write is refused before the wire when the rig, instrument or point is unknown, the point has no ``write:``,
the value is outside its limits or not on its step, or the point was written ``max_rate`` times in the last
minute. Otherwise: the old value is the last poll's (read now if the point was never polled), the write goes
through the link's bus scheduler (:meth:`~edge_daq.scheduling.LinkScheduler.operate`) as the next request on
the bus, and the point is read back and compared within its tolerance. A write whose reply timed out is
**not** sent again (a repeated write with a side effect can be worse than none): it is reported, the point is
read back, and the read-back decides whether it took effect.

Every step is an event (``write_requested``, ``write_refused``, ``write_done``, ``write_verified``,
``write_failed``) with who, why, old, new and read-back, handed to an :data:`EventSink` (the daemon's puts
it in the rig's journal and as an ``edge_daq_event`` record to every output that takes events).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from edge_daq.errors import DriverError, DriverTimeoutError
from edge_daq.record import FieldValue
from edge_daq.scheduling import LinkScheduler, ScheduledInstrument
from edge_daq.writes.limits import RateWindow
from edge_daq.writes.points import WritablePoint
from edge_daq.writes.targets import find_point

log = structlog.get_logger("edge_daq.writes")

EventSink = Callable[[str, str, str, dict[str, Any]], None]
"""(rig, kind, message, details): one write event."""


@dataclass(frozen=True, slots=True)
class WriteOrder:
    rig: str
    instrument: str
    point: str
    value: float
    who: str
    why: str = ""
    source: str = "cli"  # cli | http | action | interlock


@dataclass(slots=True)
class WriteOutcome:
    ok: bool
    state: str  # refused | failed | verified
    message: str
    old: FieldValue | None = None
    readback: FieldValue | None = None

    def reply(self) -> dict[str, Any]:
        if self.ok:
            return {"ok": True, "message": self.message, "old": self.old, "readback": self.readback}
        return {"ok": False, "error": self.message, "state": self.state, "readback": self.readback}


@dataclass(slots=True)
class WriteStats:
    requested: int = 0
    refused: int = 0
    verified: int = 0
    failed: int = 0
    last_failure: str = ""
    by_point: dict[str, dict[str, Any]] = field(default_factory=dict)


def _number(value: FieldValue | None) -> float | None:
    if value is None or isinstance(value, str):
        return None
    return float(value)


class WriteService:
    def __init__(
        self,
        *,
        schedulers: Callable[[], Iterable[LinkScheduler]],
        events: EventSink,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._schedulers = schedulers
        self._events = events
        self._clock = clock
        self._rates: dict[tuple[str, str, str], RateWindow] = {}
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self.stats = WriteStats()

    def _target(self, order: WriteOrder) -> tuple[LinkScheduler, ScheduledInstrument, WritablePoint] | str:
        rigs: set[str] = set()
        instruments: list[str] = []
        for scheduler in self._schedulers():
            for scheduled in scheduler.instruments:
                rigs.add(scheduled.stats.rig)
                if scheduled.stats.rig != order.rig:
                    continue
                instruments.append(scheduled.config.name)
                if scheduled.config.name == order.instrument:
                    point = find_point(scheduled.config, order.point)
                    return point if isinstance(point, str) else (scheduler, scheduled, point)
        if order.rig not in rigs:
            return f"unknown rig {order.rig!r}; rigs: {', '.join(sorted(rigs)) or 'none'}"
        return f"rig {order.rig!r} has no instrument {order.instrument!r}; instruments: {', '.join(instruments)}"

    def _event(self, order: WriteOrder, kind: str, message: str, **details: Any) -> None:
        base: dict[str, Any] = {
            "instrument": order.instrument,
            "point": order.point,
            "who": order.who,
            "why": order.why,
            "source": order.source,
            "new": order.value,
        }
        base.update({key: value for key, value in details.items() if value is not None})
        try:
            self._events(order.rig, kind, message, base)
        except Exception as error:  # a journal that cannot be written must not hide the write's outcome
            log.error("write_event_not_recorded", rig=order.rig, kind=kind, error=repr(error)[:200])

    def _refuse(self, order: WriteOrder, reason: str) -> WriteOutcome:
        self.stats.refused += 1
        self._event(order, "write_refused", reason, error=reason)
        log.warning("write_refused", rig=order.rig, instrument=order.instrument, point=order.point, reason=reason)
        return WriteOutcome(False, "refused", reason)

    def _fail(self, order: WriteOrder, reason: str, **details: Any) -> WriteOutcome:
        self.stats.failed += 1
        self.stats.last_failure = f"{order.rig}/{order.instrument}/{order.point}: {reason}"
        self._event(order, "write_failed", reason, error=reason, **details)
        log.error("write_failed", rig=order.rig, instrument=order.instrument, point=order.point, error=reason)
        return WriteOutcome(False, "failed", reason, details.get("old"), details.get("readback"))

    async def write(self, order: WriteOrder) -> WriteOutcome:
        """Check, send, read back and journal one write; never raises for an instrument's failure."""
        self.stats.requested += 1
        target = self._target(order)
        if isinstance(target, str):
            return self._refuse(order, target)
        scheduler, scheduled, point = target
        if (reason := point.limits.refusal(order.value)) is not None:
            return self._refuse(order, f"point {order.point!r}: {reason}")
        key = (order.rig, order.instrument, order.point)
        rate = self._rates.setdefault(key, RateWindow())
        if (reason := rate.refusal(point.limits, self._clock())) is not None:
            return self._refuse(order, f"point {order.point!r}: {reason}")
        rate.record(self._clock())  # counted once accepted, whatever happens on the wire
        async with self._locks.setdefault(key, asyncio.Lock()):
            return await self._send(order, scheduler, scheduled, point)

    async def _send(
        self, order: WriteOrder, scheduler: LinkScheduler, scheduled: ScheduledInstrument, point: WritablePoint
    ) -> WriteOutcome:
        where = f"{order.rig}/{order.instrument}/{order.point}"
        polled = scheduled.last_fields
        if polled is not None and order.point in polled:
            # The last poll's value: the write is the first request on the bus (no read ahead of it).
            old: FieldValue = polled[order.point]
        else:
            try:
                old = await scheduler.operate(point.read)
            except DriverError as error:
                return self._fail(order, f"{where}: cannot read the current value, nothing was written: {error}")
        self._event(order, "write_requested", f"{where}: {old} -> {order.value:g}", old=_number(old))
        timed_out: DriverTimeoutError | None = None
        try:
            sent = await scheduler.operate(lambda link: point.write(link, order.value))
        except DriverTimeoutError as error:
            timed_out = error  # not sent again: the read-back tells whether it took effect
            log.warning("write_timed_out", rig=order.rig, instrument=order.instrument, point=order.point,
                        error=str(error), action="reading back, not resending")  # fmt: skip
        except DriverError as error:
            return self._fail(order, f"{where}: {error}", old=_number(old))
        else:
            self._event(order, "write_done", f"{where}: {sent}", old=_number(old), sent=sent)
        try:
            readback = await scheduler.operate(point.read)
        except DriverError as error:
            prefix = f"the write timed out ({timed_out}) and " if timed_out else ""
            return self._fail(order, f"{where}: {prefix}the read-back failed: {error}", old=_number(old))
        numbers: dict[str, Any] = {"old": _number(old), "readback": _number(readback)}
        if timed_out:
            numbers["timed_out"] = True
        if not point.matches(order.value, readback):
            why = "the write timed out and was not applied" if timed_out else "the read-back does not match"
            return self._fail(order, f"{where}: {why}: wrote {order.value:g}, read back {readback}", **numbers)
        note = " (its reply timed out, the read-back confirms it)" if timed_out else ""
        self.stats.verified += 1
        message = f"{where} = {readback} (was {old}){note}"
        self._event(order, "write_verified", message, **numbers)
        log.info("write_verified", rig=order.rig, instrument=order.instrument, point=order.point, value=readback)
        return WriteOutcome(True, "verified", message, old, readback)

    async def handle(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The control channel's ``write`` command: ``{"command": "write", "rig", "instrument", "point",
        "value", "reason"}``; the caller is the kernel's ``peer``, never a name the client gives."""
        peer = request.get("peer") or {}
        who = str(peer.get("user") or "unknown")
        if peer.get("uid") is not None:
            who = f"{who} (uid {peer['uid']}, pid {peer.get('pid')})"
        try:
            value = float(request["value"])
        except (KeyError, TypeError, ValueError):
            return {"ok": False, "error": f"value {request.get('value')!r} is not a number"}
        order = WriteOrder(
            rig=str(request.get("rig", "")),
            instrument=str(request.get("instrument", "")),
            point=str(request.get("point", "")),
            value=value,
            who=who,
            why=str(request.get("reason", ""))[:500],
            source="cli",
        )
        return (await self.write(order)).reply()

    def status(self) -> dict[str, Any]:
        """For /status: the counters and the last failure (never a token)."""
        stats = self.stats
        return {
            "requested": stats.requested,
            "refused": stats.refused,
            "verified": stats.verified,
            "failed": stats.failed,
            "last_failure": stats.last_failure,
        }
