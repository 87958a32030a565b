"""The reliability engine: follows the live records like an output and keeps each rig's test, stress clock,
DUT states and events, persisted in the gateway's state folder.

Started beside the daemon, in its task group::

    group.create_task(run_reliability(daemon, stop), name="reliability")

Every event (test lifecycle, notes, interruptions, milestones, failures, config changes) goes to the ring as
an ``edge_daq_event`` record (so the outputs deliver it like any record), to the rig's append-only journal,
and to MQTT (``.../<rig>/events``) when an MQTT output is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from edge_daq.config.models import GatewayConfig, RigConfig, base_tags
from edge_daq.errors import SinkError
from edge_daq.record import FieldValue, Record, Series
from edge_daq.reliability.failures import STATUS_ACTIVE, STATUS_REMOVED, DutState, FailureDetector
from edge_daq.reliability.journal import STATE_FILE, STATE_VERSION, Journal, read_state, rig_folder, write_json_atomic
from edge_daq.reliability.stress import NS, REASON_DOWN, LiveValues, StressClock, StressState, first_failing
from edge_daq.scheduling import STATUS_MEASUREMENT
from edge_daq.sinks.mqtt import MqttOutput

if TYPE_CHECKING:
    from edge_daq.daemon import Daemon

log = structlog.get_logger("edge_daq.reliability")

EVENT_MEASUREMENT = "edge_daq_event"
HEARTBEAT = 1.0
"""Seconds between state saves: at most this much is judged again (as downtime) after a crash."""
TICK = 0.25
TICK_LAG_NS = 500_000_000
"""The clock moves on without records only this far behind now, so records in flight still count."""
TEST_STATES = ("running", "paused", "stopped")

EventSink = Callable[[str, Mapping[str, Any]], None]


def _scalar_fields(details: Mapping[str, Any]) -> dict[str, FieldValue]:
    fields: dict[str, FieldValue] = {}
    for key, value in details.items():
        if isinstance(value, bool | int | float | str):
            fields[key] = value
    return fields


class RigEngine:
    """One rig's test, stress clock and DUTs."""

    def __init__(
        self,
        *,
        rig: RigConfig,
        gateway: GatewayConfig,
        config_hash: str,
        state_dir: Path,
        emit_record: Callable[[Record], None],
        publish: EventSink | None = None,
    ) -> None:
        self.rig = rig
        self.name = rig.rig
        self.config_hash = config_hash
        self.folder = rig_folder(state_dir, rig.rig)
        self.tags = base_tags(gateway, rig)
        self._emit_record = emit_record
        self._publish = publish
        self._event_series: dict[tuple[tuple[str, str], ...], Series] = {}
        self.live = LiveValues()
        saved = read_state(state_dir, rig.rig)
        self.test: dict[str, Any] | None = saved.get("test") if saved else None
        self._saved_hash: str | None = saved.get("config_hash") if saved else None
        self.stress_state = StressState.from_json(saved["stress"]) if saved else StressState()
        self.duts: dict[str, DutState] = (
            {serial: DutState.from_json(data) for serial, data in saved["duts"].items()} if saved else {}
        )
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
        self.journal = Journal(self.folder)

    # -- lifecycle

    @property
    def running(self) -> bool:
        return self.test is not None and self.test["state"] in ("running", "paused")

    @property
    def paused(self) -> bool:
        return self.test is not None and self.test["state"] == "paused"

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
        self.clock.judge(t, self.live, running=self.running, paused=self.paused)
        if socket is not None and self.detector is not None and self.running and not self.paused:
            serial = self._by_channel.get((instrument, int(socket)))
            if serial is not None and self._failures_judged():
                dut = self.duts[serial]
                failure = self.detector.observe(dut, record.fields, t, self.stress_state.stress_s)
                if failure is not None:
                    self._failure_event(dut, failure, t)

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
        self.clock.judge(t, self.live, running=self.running, paused=self.paused)

    # -- commands (the control channel)

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
        return {"ok": False, "error": f"unknown command {command!r}"}

    def _test_command(self, action: str, request: Mapping[str, Any], now: int) -> dict[str, Any]:
        test = self.test
        if action == "start":
            if self.running:
                return {"ok": False, "error": f"test {test['id'] if test else ''} is already running: stop it first"}
            test_id, kind = request.get("id"), request.get("kind") or "custom"
            if not test_id:
                return {"ok": False, "error": "a test needs an id"}
            self.test = {"id": str(test_id), "kind": str(kind), "state": "running", "started_ns": now}
            # A new test starts from zero stress time; until data shows the condition, time is excluded.
            self.stress_state = self.clock.state = StressState(clock_ns=now, reason=None)
            for serial, dut in list(self.duts.items()):
                self.duts[serial] = DutState(dut.identity, dut.instrument, dut.socket)
            self.event("test_started", f"test {test_id} ({kind}) started", {}, now)
            self.clock.judge(now, LiveValues(), running=True, paused=False)
        elif test is None or test["state"] == "stopped":
            return {"ok": False, "error": "no test is running"}
        elif action == "pause":
            if test["state"] == "paused":
                return {"ok": False, "error": "the test is already paused"}
            self.clock.advance(now, running=True)
            test["state"] = "paused"
            self.clock.judge(now, self.live, running=True, paused=True)
            self.event("test_paused", f"test {test['id']} paused", {}, now)
        elif action == "resume":
            if test["state"] != "paused":
                return {"ok": False, "error": "the test is not paused"}
            self.clock.advance(now, running=True)
            test["state"] = "running"
            self.clock.judge(now, self.live, running=True, paused=False)
            self.event("test_resumed", f"test {test['id']} resumed", {}, now)
        elif action == "stop":
            self.clock.advance(now, running=True)
            self.clock.close(now)
            test["state"], test["stopped_ns"] = "stopped", now
            self.event("test_stopped", f"test {test['id']} stopped", {}, now)
        else:
            return {"ok": False, "error": f"unknown test action {action!r}: start, pause, resume or stop"}
        self.save(now)
        return {
            "ok": True,
            "message": f"test {self.test['id'] if self.test else ''} {self.test and self.test['state']}",
        }

    def _remove(self, serial: str, reason: str, now: int) -> dict[str, Any]:
        dut = self.duts.get(serial)
        if dut is None:
            return {"ok": False, "error": f"no DUT {serial!r} in rig {self.name}"}
        if dut.status != STATUS_ACTIVE:
            return {"ok": False, "error": f"DUT {serial} is already {dut.status}"}
        dut.status, dut.removed_stress_s = STATUS_REMOVED, self.stress_state.stress_s
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
            "test": self.test,
            "stress_h": state.stress_s / 3600,
            "stress_s": state.stress_s,
            "holding": state.reason is None,
            "reason": state.reason,
            "cycles": state.cycles,
            "duts": counts,
        }

    # -- events and persistence

    def _clock_event(self, kind: str, message: str, details: dict[str, Any], time_ns: int) -> None:
        self.event(kind, message, details, time_ns)

    def _failure_event(self, dut: DutState, failure: Mapping[str, Any], time_ns: int) -> None:
        details = {
            "rule": failure["rule"],
            "mode": failure["mode"],
            "limit": failure["limit"],
            "value": failure["value"],
            "stress_h": failure["stress_s"] / 3600,
            "last_good_h": (failure["last_good_stress_s"] or 0.0) / 3600,
            "failed_at_ns": failure["time_ns"],
            "violations": failure.get("events", 1),
            "cycles": self.stress_state.cycles,
            "before": failure["before"],
            "after": failure["after"],
        }
        message = f"DUT {dut.identity['dut']} failed: {failure['rule']} {failure['value']:g} ({failure['limit']})"
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
            "test_id": self.test["id"] if self.test else None,
            "stress_h": self.stress_state.stress_s / 3600,
            **details,
        }
        if dut is not None:
            event.update(dut.identity)
            event["socket"] = dut.socket
            event["instrument"] = dut.instrument
        self.journal.append(event)
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

    def snapshot(self, now_ns: int) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "rig": self.name,
            "heartbeat_ns": now_ns,
            "config_hash": self.config_hash,
            "test": self.test,
            "stress": self.stress_state.to_json(),
            "duts": {serial: dut.to_json() for serial, dut in self.duts.items()},
        }

    def save(self, now_ns: int) -> None:
        write_json_atomic(self.folder / STATE_FILE, self.snapshot(now_ns))
        self._saved_hash = self.config_hash


class ReliabilityEngine:
    """Every rig with reliability keys, fed from one ring reader, with the control channel."""

    def __init__(self, daemon: Daemon, *, state_dir: Path | None = None, heartbeat: float = HEARTBEAT) -> None:
        gateway = daemon.config.gateway
        self.daemon = daemon
        self.state_dir = state_dir or gateway.state_path
        self.heartbeat = heartbeat
        self.reader = daemon.ring.reader("reliability")
        self._mqtt = next((r.output for r in daemon.runners if isinstance(r.output, MqttOutput)), None)
        self._outbox: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=10_000)
        publish = self._queue_event if self._mqtt is not None else None
        self.rigs = {
            rig.rig: RigEngine(
                rig=rig,
                gateway=gateway,
                config_hash=daemon.config.hash,
                state_dir=self.state_dir,
                emit_record=daemon.ring.append,
                publish=publish,
            )
            for rig in daemon.config.rigs
            if rig.has_reliability
        }

    def _queue_event(self, rig: str, event: Mapping[str, Any]) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # the journal and the ring have it regardless
            self._outbox.put_nowait((rig, dict(event)))

    def handle(self, request: Mapping[str, Any]) -> dict[str, Any]:
        rig = self.rigs.get(str(request.get("rig")))
        if rig is None:
            return {"ok": False, "error": f"no reliability rig {request.get('rig')!r}; rigs: {', '.join(self.rigs)}"}
        return rig.command(request)

    async def run(self, stop: asyncio.Event) -> None:
        from edge_daq.reliability.control import ControlServer

        if not self.rigs:
            self.daemon.ring.remove_reader(self.reader)
            return
        now = time.time_ns()
        for rig in self.rigs.values():
            rig.start(now)
        control = ControlServer(self.state_dir / "control.sock", self.handle)
        await control.start()
        try:
            async with asyncio.TaskGroup() as group:
                publisher = group.create_task(self._publish_events(), name="reliability events to mqtt")
                await self._follow(stop)
                publisher.cancel()
        finally:
            await control.close()
            now = time.time_ns()
            for rig in self.rigs.values():
                rig.close(now)
            self.daemon.ring.remove_reader(self.reader)

    async def _follow(self, stop: asyncio.Event) -> None:
        last_save = time.monotonic()
        while True:
            stopping = stop.is_set()
            await self.reader.wait(1, max_wait=0 if stopping else TICK)
            batch = self.reader.read(10_000)
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
        assert self._mqtt is not None or self._outbox.empty()
        while True:
            rig, event = await self._outbox.get()
            if self._mqtt is None:
                continue
            try:
                await self._mqtt.publish_event(rig, event)
            except SinkError as error:
                log.warning("event_not_published", rig=rig, event=event.get("event"), error=str(error))


async def run_reliability(daemon: Daemon, stop: asyncio.Event, *, state_dir: Path | None = None) -> None:
    """Run the reliability engine of ``daemon``'s rigs until ``stop`` is set (a no-op without such rigs)."""
    await ReliabilityEngine(daemon, state_dir=state_dir).run(stop)
