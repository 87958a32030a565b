"""The reliability engine: follows the live records like an output and keeps each rig's test, stress clock,
DUT states and events, persisted in the gateway's state folder.

Started beside the daemon, in its task group, with what it uses and nothing else: the rigs, a record reader
(:class:`RecordReader`, the ring's), an event emitter (:class:`EventEmitter`, the ring's ``append``), an
optional event publisher (:class:`EventPublisher`, which the MQTT output implements) and the state folder::

    engine = ReliabilityEngine(
        rigs=config.rigs, gateway=config.gateway, config_hash=config.hash,
        reader=ring.reader("reliability"), emit=ring.append, publisher=mqtt, state_dir=state_dir,
    )
    group.create_task(engine.run(stop), name="reliability")

State and journal writes go to a :class:`~edge_daq.reliability.journal.BackgroundStore`: fsynced in a worker
thread, never on the event loop, and the last state is written before :meth:`ReliabilityEngine.run` returns.

Every event (test lifecycle, notes, interruptions, milestones, failures, config changes) goes to the ring as
an ``edge_daq_event`` record (so the outputs deliver it like any record), to the rig's append-only journal,
and to MQTT (``.../<rig>/events``) when an MQTT output is configured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog

from edge_daq.buffer.ring import Batch
from edge_daq.config.models import CONTROL_SOCKET, GatewayConfig, RigConfig, base_tags
from edge_daq.errors import SinkError
from edge_daq.record import FieldValue, Record, Series
from edge_daq.reliability import readout
from edge_daq.reliability.enums import DutStatus, TestState
from edge_daq.reliability.failures import DutState, Failure, FailureDetector
from edge_daq.reliability.journal import JOURNAL_FILE, STATE_FILE, BackgroundStore, DirectStore, StateStore, rig_folder
from edge_daq.reliability.state import RigState, TestRun, load_state
from edge_daq.reliability.stress import (
    NS,
    REASON_DOWN,
    REASON_PAUSED,
    REASON_READOUT,
    LiveValues,
    StressClock,
    StressState,
    first_failing,
)
from edge_daq.scheduling import STATUS_MEASUREMENT

log = structlog.get_logger("edge_daq.reliability")

EVENT_MEASUREMENT = "edge_daq_event"
HEARTBEAT = 1.0
"""Seconds between state saves: at most this much is judged again (as downtime) after a crash."""
TICK = 0.25
TICK_LAG_NS = 500_000_000
"""The clock moves on without records only this far behind now, so records in flight still count."""
READ_RECORDS = 10_000


class RecordReader(Protocol):
    """The live records, read in batches and committed once judged (the ring's reader is one)."""

    async def wait(self, min_records: int = 1, max_wait: float | None = None) -> bool: ...

    def read(self, max_records: int) -> Batch: ...

    def commit(self, batch: Batch) -> None: ...


class EventEmitter(Protocol):
    """Takes an ``edge_daq_event`` record into the pipeline (the ring's ``append``); never blocks."""

    def __call__(self, record: Record, /) -> None: ...


class EventPublisher(Protocol):
    """Publishes one rig's event elsewhere (the MQTT output's ``.../<rig>/events``)."""

    async def publish_event(self, rig: str, event: Mapping[str, object]) -> None:
        """Returns once delivered; raises :class:`~edge_daq.errors.SinkError` if it could not be."""
        ...


EventSink = Callable[[str, Mapping[str, Any]], None]
"""Queues one rig's event for the publisher; never blocks."""
OUTBOX_EVENTS = 10_000


def _scalar_fields(details: Mapping[str, Any]) -> dict[str, FieldValue]:
    fields: dict[str, FieldValue] = {}
    for key, value in details.items():
        if isinstance(value, bool | int | float | str):
            fields[key] = value
    return fields


class RigEngine:
    """One rig's test, stress clock and DUTs."""

    observer: Callable[[str, str, Mapping[str, Any], DutState | None], None] | None = None
    """Called with every event (rig, kind, event, DUT): the daemon's actions (edge_daq.writes) follow them."""

    def __init__(
        self,
        *,
        rig: RigConfig,
        gateway: GatewayConfig,
        config_hash: str,
        state_dir: Path,
        emit_record: EventEmitter,
        publish: EventSink | None = None,
        store: StateStore | None = None,
        saved: RigState | Literal["read"] | None = "read",
    ) -> None:
        """``saved``: the rig's state as read from disk (None: it has none); by default read here, at once."""
        self.rig = rig
        self.name = rig.rig
        self.config_hash = config_hash
        self.folder = rig_folder(state_dir, rig.rig)
        self.tags = base_tags(gateway, rig)
        self._emit_record = emit_record
        self._publish = publish
        self._store = store or DirectStore()
        self._state_path = self.folder / STATE_FILE
        self._journal_path = self.folder / JOURNAL_FILE
        self._event_series: dict[tuple[tuple[str, str], ...], Series] = {}
        self.live = LiveValues()
        self.results_refused = 0
        """Readout results files refused (unreadable, malformed, too large) since the daemon started."""
        if saved == "read":
            saved = load_state(state_dir, rig.rig)
        if saved is None:
            saved = RigState(rig=rig.rig)
        self.test: TestRun | None = saved.test
        self._saved_hash: str | None = saved.config_hash
        self.stress_state: StressState = saved.stress
        self.duts: dict[str, DutState] = saved.duts
        channel_instruments = [
            i.name for i in rig.instruments if any("_field" in tags for tags in i.field_tags().values())
        ]
        self._by_channel: dict[tuple[str, int], str] = {}
        for dut in rig.duts:
            instrument = dut.instrument or channel_instruments[0]
            self.duts.setdefault(dut.serial, DutState.new(dut, instrument))
            self._by_channel[(instrument, dut.socket)] = dut.serial
        self.detector = FailureDetector(rig.failures) if rig.failures else None
        self.clock = StressClock(
            rig.stress,
            self.stress_state,
            intervals={i.name: i.interval for i in rig.instruments},
            emit=self._clock_event,
        )
        self.folder.mkdir(parents=True, exist_ok=True)  # at build, not on the loop later

    # -- lifecycle

    @property
    def running(self) -> bool:
        return self.test is not None and self.test.active

    @property
    def paused(self) -> bool:
        return self.test is not None and self.test.state is TestState.PAUSED

    @property
    def in_readout(self) -> bool:
        """A readout is under way: the DUTs are out of the chamber."""
        return self.test is not None and self.test.active and self.test.readout is not None

    def judge_now(self, now_ns: int, live: LiveValues | None = None) -> None:
        """Whether stress holds from ``now_ns`` on (held off during a readout)."""
        held = REASON_READOUT if self.in_readout else None
        self.clock.judge(now_ns, live or self.live, running=self.running, paused=self.paused, held=held)

    def cycles(self, source: str | None) -> float | None:
        """The cycle count now: of a counter point, or (None) the rig's ``stress.cycling`` count if it has one."""
        if source is not None:
            return self.live.number(source)
        stress = self.rig.stress
        return float(self.stress_state.cycles) if stress is not None and stress.cycling is not None else None

    def start(self, now_ns: int) -> None:
        """Account for the time the daemon was down, note a changed configuration, start the YAML's test."""
        state = self.stress_state
        if self.running and state.clock_ns is not None and now_ns > state.clock_ns:
            self.clock.interrupt(state.clock_ns, now_ns, REASON_DOWN)
        if self._saved_hash != self.config_hash:
            kind = "config_loaded" if self._saved_hash is None else "config_changed"
            self.event(kind, f"configuration {self.config_hash[:12]}", {"config_hash": self.config_hash}, now_ns)
        if self.test is None and self.rig.test is not None:
            request = {"command": "test", "action": "start", "id": self.rig.test.id, "kind": self.rig.test.kind}
            self.command(request, now_ns)
        self.save(now_ns)

    def close(self, now_ns: int) -> None:
        self.save(now_ns)

    # -- records

    def on_record(self, record: Record) -> None:
        tags = record.tags
        instrument = tags.get("instrument", "")
        if record.measurement == EVENT_MEASUREMENT:
            return
        t = max(record.time_ns, self.stress_state.clock_ns or 0)
        self.clock.advance(t, running=self.running)
        socket = tags.get("socket")
        if record.measurement == STATUS_MEASUREMENT:
            self.live.status(instrument, bool(record.fields.get("ok", True)))
        elif socket is None:
            self.live.update(instrument, record.fields, record.time_ns)
        self.judge_now(t)
        judged = self.running and not self.paused and not self.in_readout
        if socket is not None and self.detector is not None and judged:
            serial = self._by_channel.get((instrument, int(socket)))
            if serial is not None and self._failures_judged():
                dut = self.duts[serial]
                failure = self.detector.observe(dut, record.fields, t, self.stress_state.stress_s, self.cycles)
                if failure is not None:
                    self.failure_event(dut, failure, t)

    def _failures_judged(self) -> bool:
        assert self.rig.failures is not None
        if self.rig.failures.when is not None:
            return first_failing(self.rig.failures.when, self.live) is None
        return self.stress_state.reason is None

    def tick(self, now_ns: int) -> None:
        t = now_ns - TICK_LAG_NS
        if self.stress_state.clock_ns is not None and t <= self.stress_state.clock_ns:
            return
        self.clock.advance(t, running=self.running)
        self.judge_now(t)

    # -- commands (the control channel)

    def handle(self, request: Mapping[str, Any]) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """A control request; a readout's end is answered once its results file was read in a worker thread."""
        if request.get("command") == "readout" and request.get("action") == "end":
            return readout.end_with_file(self, request)
        return self.command(request)

    def command(self, request: Mapping[str, Any], now_ns: int | None = None) -> dict[str, Any]:
        now = time.time_ns() if now_ns is None else now_ns
        command = request.get("command")
        if command == "note":
            text = str(request.get("text", "")).strip()
            if not text:
                return {"ok": False, "error": "a note needs text"}
            self.event("note", text, {}, now)
            return {"ok": True, "message": "note recorded"}
        if command == "test":
            return self._test_command(str(request.get("action")), request, now)
        if command == "remove":
            return self._remove(str(request.get("dut", "")), str(request.get("reason", "")), now)
        if command == "status":
            return {"ok": True, "status": self.status()}
        if command == "readout" and request.get("action") == "start":
            return readout.start(self, now)
        if command == "readout":
            return {"ok": False, "error": "readout is `start`, or `end` with a results file"}
        return {"ok": False, "error": f"unknown command {command!r}"}

    def _test_command(self, action: str, request: Mapping[str, Any], now: int) -> dict[str, Any]:
        test = self.test
        if action == "start":
            if self.running:
                return {"ok": False, "error": f"test {test.id if test else ''} is already running: stop it first"}
            test_id, kind = request.get("id"), request.get("kind") or "custom"
            if not test_id:
                return {"ok": False, "error": "a test needs an id"}
            self.test = TestRun(id=str(test_id), kind=str(kind), state=TestState.RUNNING, started_ns=now)
            # A new test starts from zero stress time; until data shows the condition, time is excluded.
            self.stress_state = self.clock.state = StressState(clock_ns=now, reason=None)
            for serial, dut in list(self.duts.items()):
                self.duts[serial] = DutState(dut.identity, dut.instrument, dut.socket)
            self.event("test_started", f"test {test_id} ({kind}) started", {}, now)
            self.clock.judge(now, LiveValues(), running=True, paused=False)
        elif test is None or test.state is TestState.STOPPED:
            return {"ok": False, "error": "no test is running"}
        elif action in ("pause", "resume") and self.in_readout:
            return {"ok": False, "error": "a readout is under way: end it first (edge-daq test readout end)"}
        elif action == "pause":
            if test.state is TestState.PAUSED:
                return {"ok": False, "error": "the test is already paused"}
            self.clock.advance(now, running=True)
            test.state = TestState.PAUSED
            reason = str(request.get("reason") or "")[:200]
            self.clock.pause_reason = reason or REASON_PAUSED  # an interlock pauses with its name
            self.clock.judge(now, self.live, running=True, paused=True)
            self.event("test_paused", f"test {test.id} paused" + (f": {reason}" if reason else ""), {}, now)
        elif action == "resume":
            if test.state is not TestState.PAUSED:
                return {"ok": False, "error": "the test is not paused"}
            self.clock.advance(now, running=True)
            test.state = TestState.RUNNING
            self.clock.judge(now, self.live, running=True, paused=False)
            self.event("test_resumed", f"test {test.id} resumed", {}, now)
        elif action == "stop":
            if (current := test.readout) is not None:  # the DUTs never came back to this test
                current.update(ended_ns=now, abandoned=True)
            self.clock.advance(now, running=True)
            self.clock.close(now)
            test.state, test.stopped_ns = TestState.STOPPED, now
            self.event("test_stopped", f"test {test.id} stopped", {}, now)
        else:
            return {"ok": False, "error": f"unknown test action {action!r}: start, pause, resume or stop"}
        self.save(now)
        assert self.test is not None  # every action above leaves one
        return {"ok": True, "message": f"test {self.test.id} {self.test.state}"}

    def _remove(self, serial: str, reason: str, now: int) -> dict[str, Any]:
        dut = self.duts.get(serial)
        if dut is None:
            return {"ok": False, "error": f"no DUT {serial!r} in rig {self.name}"}
        if dut.status is not DutStatus.ACTIVE:
            return {"ok": False, "error": f"DUT {serial} is already {dut.status}"}
        dut.status, dut.removed_stress_s = DutStatus.REMOVED, self.stress_state.stress_s
        self.event("dut_removed", f"DUT {serial} removed: {reason or 'no reason given'}", {"reason": reason}, now, dut)
        self.save(now)
        return {"ok": True, "message": f"DUT {serial} removed"}

    def status(self) -> dict[str, Any]:
        state = self.stress_state
        counts: dict[str, int] = {}
        for dut in self.duts.values():
            counts[dut.status] = counts.get(dut.status, 0) + 1
        return {
            "rig": self.name,
            "test": None if self.test is None else self.test.to_json(),
            "stress_h": state.stress_s / 3600,
            "stress_s": state.stress_s,
            "holding": state.reason is None,
            "reason": state.reason,
            "cycles": state.cycles,
            "duts": counts,
            "readout": None if self.test is None else self.test.readout,
            "results_refused": self.results_refused,
        }

    # -- events and persistence

    def _clock_event(self, kind: str, message: str, details: dict[str, Any], time_ns: int) -> None:
        self.event(kind, message, details, time_ns)

    def failure_event(self, dut: DutState, failure: Failure, time_ns: int) -> None:
        details = {
            "rule": failure.rule,
            "mode": failure.mode,
            "limit": failure.limit,
            "value": failure.value,
            "stress_h": failure.stress_s / 3600,
            "last_good_h": (failure.last_good_stress_s or 0.0) / 3600,
            "failed_at_ns": failure.time_ns,
            "violations": failure.events,
            "cycles": self.stress_state.cycles,
            "before": failure.before,
            "after": failure.after,
        }
        for key in ("cycles", "detected_cycles", "readout"):  # the cycle of the first violation, and so on
            if (value := getattr(failure, key)) is not None:
                details["failed_cycle" if key == "cycles" else key] = value
        message = f"DUT {dut.identity['dut']} failed: {failure.rule} {failure.value:g} ({failure.limit})"
        self.event("failure", message, details, time_ns, dut)
        self.save(time_ns)

    def event(
        self, kind: str, message: str, details: Mapping[str, Any], time_ns: int, dut: DutState | None = None
    ) -> None:
        event: dict[str, Any] = {
            "time": datetime.fromtimestamp(time_ns / NS, UTC).isoformat(),
            "time_ns": time_ns,
            "rig": self.name,
            "event": kind,
            "message": message,
            "test_id": self.test.id if self.test else None,
            "stress_h": self.stress_state.stress_s / 3600,
            **details,
        }
        if dut is not None:
            event.update(dut.identity)
            event["socket"] = dut.socket
            event["instrument"] = dut.instrument
        self._store.append(self._journal_path, event)
        if self.observer is not None:
            self.observer(self.name, kind, event, dut)
        tags = {**self.tags, "event": kind, **(dut.identity if dut else {})}
        key = tuple(sorted(tags.items()))
        series = self._event_series.get(key)
        if series is None:
            series = self._event_series[key] = Series(EVENT_MEASUREMENT, tags)
        fields = _scalar_fields({k: v for k, v in event.items() if k not in ("time", "time_ns", "rig", "event")})
        self._emit_record(Record(series, fields, time_ns))
        if self._publish is not None:
            self._publish(self.name, event)
        log.info("reliability_event", rig=self.name, kind=kind, message=message)

    def state(self, now_ns: int) -> RigState:
        return RigState(
            rig=self.name,
            config_hash=self.config_hash,
            heartbeat_ns=now_ns,
            test=self.test,
            stress=self.stress_state,
            duts=self.duts,
        )

    def snapshot(self, now_ns: int) -> dict[str, Any]:
        return self.state(now_ns).to_json()

    def save(self, now_ns: int) -> None:
        """Saved by the store: at once (tools) or soon, off the event loop, coalesced with other saves."""
        self._store.save(self._state_path, lambda: self.snapshot(now_ns))
        self._saved_hash = self.config_hash


def read_states(state_dir: Path, rigs: Sequence[RigConfig]) -> dict[str, RigState | None]:
    """The saved state of every reliability rig: blocking file reads, for a worker thread."""
    return {rig.rig: load_state(state_dir, rig.rig) for rig in rigs if rig.has_reliability}


class ReliabilityEngine:
    """Every rig with reliability keys, fed from one record reader, with the control channel."""

    def __init__(
        self,
        *,
        rigs: Sequence[RigConfig],
        gateway: GatewayConfig,
        config_hash: str,
        reader: RecordReader,
        emit: EventEmitter,
        state_dir: Path,
        publisher: EventPublisher | None = None,
        heartbeat: float = HEARTBEAT,
        saved: Mapping[str, RigState | None] | None = None,
    ) -> None:
        """``saved``: each rig's state from :func:`read_states` (read off the event loop); None: read here."""
        self.state_dir = state_dir
        self.heartbeat = heartbeat
        self.reader = reader
        self._publisher = publisher
        self._outbox: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=OUTBOX_EVENTS)
        self.events_not_published = 0
        """Events the publisher could not take (down, refused, outbox full); the journal and the ring have them."""
        self._publish_failing = False
        self.store = BackgroundStore()
        publish = self._queue_event if publisher is not None else None
        self.rigs = {
            rig.rig: RigEngine(
                rig=rig,
                gateway=gateway,
                config_hash=config_hash,
                state_dir=self.state_dir,
                emit_record=emit,
                publish=publish,
                store=self.store,
                saved="read" if saved is None else saved.get(rig.rig),
            )
            for rig in rigs
            if rig.has_reliability
        }

    def _queue_event(self, rig: str, event: Mapping[str, Any]) -> None:
        try:
            self._outbox.put_nowait((rig, dict(event)))
        except asyncio.QueueFull:  # the journal and the ring have it regardless
            self.events_not_published += 1

    write_handler: Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]] | None = None
    """The daemon's write service (``edge_daq.writes``): the ``write`` command of any rig goes there."""

    def handle(self, request: Mapping[str, Any]) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        if request.get("command") == "write" and self.write_handler is not None:
            return self.write_handler(request)
        rig = self.rigs.get(str(request.get("rig")))
        if rig is None:
            return {"ok": False, "error": f"no reliability rig {request.get('rig')!r}; rigs: {', '.join(self.rigs)}"}
        return rig.handle(request)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the records until ``stop`` is set (at once without reliability rigs).

        The caller owns the reader: it removes it from the ring however the run ended.
        """
        if self.rigs:
            await self._run_rigs(stop)

    async def _run_rigs(self, stop: asyncio.Event) -> None:
        from edge_daq.reliability.control import ControlServer

        now = time.time_ns()
        for rig in self.rigs.values():
            rig.start(now)
        control = ControlServer(self.state_dir / CONTROL_SOCKET, self.handle)
        await control.start()
        try:
            async with asyncio.TaskGroup() as group:
                publisher = group.create_task(self._publish_events(), name="reliability events to mqtt")
                writer = group.create_task(self.store.run(), name="reliability state writer")
                await self._follow(stop)
                publisher.cancel()
                writer.cancel()
        finally:
            try:
                await control.close()
            finally:
                now = time.time_ns()
                for rig in self.rigs.values():
                    rig.close(now)
                await self.store.close()  # the last state and events on disk before the run returns

    async def _follow(self, stop: asyncio.Event) -> None:
        last_save = time.monotonic()
        while True:
            stopping = stop.is_set()
            await self.reader.wait(1, max_wait=0 if stopping else TICK)
            batch = self.reader.read(READ_RECORDS)
            for record in batch.records:
                rig = self.rigs.get(record.tags.get("rig", ""))
                if rig is not None:
                    rig.on_record(record)
            self.reader.commit(batch)
            now = time.time_ns()
            for rig in self.rigs.values():
                rig.tick(now)
            if stopping:
                return
            if time.monotonic() - last_save >= self.heartbeat:
                last_save = time.monotonic()
                for rig in self.rigs.values():
                    rig.save(now)

    async def _publish_events(self) -> None:
        """Best effort: a broker that is down or refuses us costs the copy on MQTT, logged once per outage."""
        while True:
            rig, event = await self._outbox.get()
            if self._publisher is None:
                continue
            try:
                await self._publisher.publish_event(rig, event)
            except SinkError as error:
                self.events_not_published += 1
                if not self._publish_failing:
                    self._publish_failing = True
                    # Not `event=`: structlog's first argument is the event name.
                    log.warning("event_not_published", rig=rig, kind=event.get("event"), error=str(error))
            else:
                if self._publish_failing:
                    self._publish_failing = False
                    log.info("events_published_again", not_published=self.events_not_published)
