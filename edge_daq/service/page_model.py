"""What the status page shows: the latest values (a reader of the ring, like an output) and the page's JSON.

:class:`PageFeed` follows the records and keeps, bounded by the configuration, the latest fields of every
instrument and of every socket, the latest events, and a short trend of a few numeric fields per instrument.
:class:`PageModel` builds the page's document from it, the pipeline's counters and the reliability engine;
the document is built at most once per ``CACHE_SECONDS`` per rig shown, however many browsers poll it, so
the page's cost does not grow with the number of screens on the lab floor.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_daq import __version__
from edge_daq.buffer.ring import RingBuffer
from edge_daq.config.layout import channel_sockets, grid
from edge_daq.config.loader import LoadedConfig
from edge_daq.config.models import RigConfig
from edge_daq.record import FieldValue, Record, Series
from edge_daq.reliability.failures import DutState
from edge_daq.service.metrics import PipelineView
from edge_daq.stats import InstrumentStats

EVENT_MEASUREMENT = "edge_daq_event"
STATUS_MEASUREMENT = "edge_daq_status"
EVENTS_KEPT = 100
EVENTS_SHOWN = 30
TREND_POINTS = 30
TREND_FIELDS = 3
TREND_STEP = 10.0
"""Seconds between trend samples: 30 of them are the last five minutes."""
INSTRUMENTS_SHOWN = 48
"""Instruments listed in detail for the rig shown; a fleet gateway's others are counted, not listed."""
VALUES_SHOWN = 10
TEXT_CHARS = 80
CACHE_SECONDS = 1.5
READ_RECORDS = 10_000
READ_EVERY = 1.0
MAX_SLOTS = 200_000
STALE_PART_NS = 300 * 1_000_000_000


@dataclass(slots=True)
class Latest:
    """The latest record of each series of one instrument (or socket): several when point tags split a poll."""

    parts: dict[int, Record] = field(default_factory=dict)

    @property
    def time_ns(self) -> int:
        return max((record.time_ns for record in self.parts.values()), default=0)

    @property
    def fields(self) -> Mapping[str, FieldValue]:
        if len(self.parts) == 1:
            return next(iter(self.parts.values())).fields
        # A part far older than the newest is a series a reload replaced (renamed points): left out, and dropped.
        newest = self.time_ns
        for key in [key for key, record in self.parts.items() if newest - record.time_ns > STALE_PART_NS]:
            del self.parts[key]
        merged: dict[str, FieldValue] = {}
        for record in self.parts.values():
            merged.update(record.fields)
        return merged


class PageFeed:
    """Follows the ring; :meth:`run` until cancelled (supervised: a restart starts a fresh reader)."""

    def __init__(
        self,
        ring: RingBuffer,
        *,
        trend_step: float = TREND_STEP,
        configured: Callable[[], set[tuple[str, str]]] | None = None,
    ) -> None:
        """``configured``: the (rig, instrument) pairs configured now; values of others are dropped (reloads)."""
        self.ring = ring
        self.configured = configured
        self.trend_step = trend_step
        self.instruments: dict[tuple[str, str], Latest] = {}
        self.sockets: dict[tuple[str, str, int], Latest] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.trends: dict[tuple[str, str], dict[str, deque[float | None]]] = {}
        # Where each series' records go, by id(series) (the series is kept, so its id is not reused): the hot
        # path is one lookup and one store per record, since series are built once per instrument or socket.
        self._slots: dict[int, tuple[Series, Latest | None]] = {}
        self.busy_seconds = 0.0
        """CPU time spent following the records and sampling trends (bench/page.py reports it)."""

    async def run(self) -> None:
        reader = self.ring.reader("status page")
        next_sample = time.monotonic()
        try:
            while True:
                # A sleep, not reader.wait(): woken by every record, the feed cost a fleet gateway 3 % of a
                # core (bench/page.py); once a second is fresh enough for a page that polls every 1.5 s.
                await asyncio.sleep(READ_EVERY)
                started = time.thread_time()  # CPU time: a loaded machine's preemption is not the page's cost
                while True:
                    batch = reader.read(READ_RECORDS)
                    self.on_records(batch.records)
                    reader.commit(batch)
                    if len(batch.records) < READ_RECORDS:
                        break
                if time.monotonic() >= next_sample:
                    next_sample = time.monotonic() + self.trend_step
                    if self.configured is not None:
                        self.forget(self.configured())
                    self.sample_trends()
                self.busy_seconds += time.thread_time() - started
        finally:
            self.ring.remove_reader(reader)

    def on_record(self, record: Record) -> None:
        self.on_records((record,))

    def on_records(self, records: Sequence[Record]) -> None:
        slots, parts_of = self._slots, self._slot
        for record in records:  # the hot path: one lookup and one store per record
            series = record.series
            if series.measurement == EVENT_MEASUREMENT:  # events build a series each: never a slot
                self.events.append(_event(record))
                continue
            slot = slots.get(id(series)) or parts_of(series)
            if slot[1] is not None:
                slot[1].parts[id(series)] = record

    def _slot(self, series: Series) -> tuple[Series, Latest | None]:
        if len(self._slots) >= MAX_SLOTS:  # a source that builds a series per record: start over, stay bounded
            self._slots.clear()
        tags = series.tags
        rig, instrument, socket = tags.get("rig"), tags.get("instrument"), tags.get("socket")
        latest: Latest | None = None
        if rig is not None and instrument is not None and series.measurement != STATUS_MEASUREMENT:
            if socket is None:
                latest = self.instruments.setdefault((rig, instrument), Latest())
            elif socket.isdigit():
                latest = self.sockets.setdefault((rig, instrument, int(socket)), Latest())
        slot = self._slots[id(series)] = (series, latest)
        return slot

    def sample_trends(self) -> None:
        for key, latest in self.instruments.items():
            fields = latest.fields
            if not fields:
                continue
            trend = self.trends.get(key)
            if trend is None:
                # Measurements before counts and codes: floats (scaled points) first, then integers.
                numeric = [name for name, value in fields.items() if _is_number(value)]
                numeric.sort(key=lambda name: not isinstance(fields[name], float))
                numeric = numeric[:TREND_FIELDS]
                trend = self.trends[key] = {name: deque(maxlen=TREND_POINTS) for name in numeric}
            for name, points in trend.items():
                value = fields.get(name)
                number = isinstance(value, int | float) and _is_number(value)
                points.append(float(value) if number and isinstance(value, int | float) else None)

    def forget(self, current: set[tuple[str, str]]) -> None:
        """Drop what belongs to instruments no longer configured (after a reload)."""
        gone = [key for key in self.instruments if key not in current]
        gone_sockets = [key3 for key3 in self.sockets if key3[:2] not in current]
        for key in gone:
            del self.instruments[key]
        for key in [key for key in self.trends if key not in current]:
            del self.trends[key]
        for key3 in gone_sockets:
            del self.sockets[key3]
        if gone or gone_sockets:
            self._slots.clear()  # rebuilt as records come


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _event(record: Record) -> dict[str, Any]:
    tags, fields = record.tags, record.fields
    kind = tags.get("event") or fields.get("kind") or "event"
    message = fields.get("message")
    if not isinstance(message, str):
        message = " ".join(f"{key}={value}" for key, value in fields.items() if key != "kind")
    return {
        "time_ns": record.time_ns,
        "rig": tags.get("rig"),
        "kind": _text(kind),
        "message": _text(message),
        "dut": tags.get("dut"),
    }


def _text(value: object) -> str:
    text = str(value)
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"


def _value(value: FieldValue) -> FieldValue | None:
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    if isinstance(value, str):
        return _text(value)
    return value


class RigView(Protocol):
    """What the page reads of a rig under reliability test (:class:`edge_daq.reliability.engine.RigEngine`)."""

    duts: dict[str, DutState]

    def status(self) -> dict[str, Any]: ...


class PageModel:
    def __init__(
        self,
        *,
        view: PipelineView,
        feed: PageFeed,
        health: Callable[[], tuple[bool, str]],
        config: Callable[[], LoadedConfig],
        rigs: Callable[[], Mapping[str, RigView]],
        control: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.view = view
        self.feed = feed
        self.health = health
        self.config = config
        self.rigs = rigs
        self.control = control
        self.clock = clock
        self._cache: dict[tuple[str, str], tuple[float, bytes]] = {}
        self._shapes: tuple[str, dict[tuple[str, str], tuple[list[int], int, int, str]]] = ("", {})
        self.documents_built = 0
        self.build_seconds = 0.0

    def cached(self, kind: str, rig: str | None) -> bytes:
        """The document (``page`` or ``trends``) of rig ``rig`` (unknown or None: the first rig), as JSON."""
        config = self.config()
        names = [r.rig for r in config.rigs]
        chosen = rig if rig in names else (names[0] if names else "")
        now = self.clock()
        key = (kind, chosen)
        hit = self._cache.get(key)
        # Trends change once per trend step: every browser's poll of them in between gets the same copy.
        lifetime = CACHE_SECONDS if kind == "page" else self.feed.trend_step
        if hit is not None and now - hit[0] < lifetime:
            return hit[1]
        started = time.thread_time()
        document = self.document(chosen) if kind == "page" else self.trends(chosen)
        body = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
        self.build_seconds += time.thread_time() - started
        self._cache = {k: v for k, v in self._cache.items() if now - v[0] < self.feed.trend_step and k[1] in names}
        self._cache[key] = (now, body)
        self.documents_built += 1
        return body

    def document(self, chosen: str) -> dict[str, Any]:
        config = self.config()
        healthy, reason = self.health()
        stats = self.view.stats
        by_rig: dict[str, list[InstrumentStats]] = {}
        for instrument in stats.instruments:
            by_rig.setdefault(instrument.rig, []).append(instrument)
        engines = self.rigs()
        rig_config = next((r for r in config.rigs if r.rig == chosen), None)
        shown = by_rig.get(chosen, [])
        now = time.monotonic()
        return {
            "gateway": {
                "name": config.gateway.gateway,
                "site": config.gateway.site,
                "version": __version__,
                "uptime_seconds": round(max(0.0, time.time() - stats.started_wall), 1),
                "config_hash": config.hash[:12],
                "healthy": healthy,
                "reason": reason,
            },
            "time": time.time(),
            "control": self.control,
            "rigs": [_rig_card(r, engines.get(r.rig), by_rig.get(r.rig, [])) for r in config.rigs],
            "rig": chosen,
            "boards": [] if rig_config is None else self._boards(rig_config, engines.get(chosen)),
            "instruments": [self._instrument(i, now) for i in shown[:INSTRUMENTS_SHOWN]],
            "instruments_not_listed": max(0, len(shown) - INSTRUMENTS_SHOWN),
            "events": list(reversed(list(self.feed.events)[-EVENTS_SHOWN:])),
            "outputs": [self._output(o) for o in self.view.outputs_status()],
            "spool": self._spool(config),
        }

    def _instrument(self, stats: InstrumentStats, now: float) -> dict[str, Any]:
        key = (stats.rig, stats.instrument)
        latest = self.feed.instruments.get(key)
        values = {} if latest is None else latest.fields
        last = stats.last_success_monotonic
        state = "waiting" if stats.polls == 0 else ("up" if stats.up else "down")
        return {
            "instrument": stats.instrument,
            "state": state,
            "poll_age_seconds": None if last is None else round(max(0.0, now - last), 1),
            "latency_ms": None if stats.last_latency is None else round(stats.last_latency * 1000, 1),
            "last_error": _text(stats.last_error) if stats.last_error else "",
            "consecutive_failures": stats.consecutive_failures,
            "values": {name: _value(v) for name, v in list(values.items())[:VALUES_SHOWN]},
            "values_not_shown": max(0, len(values) - VALUES_SHOWN),
        }

    def _boards(self, rig: RigConfig, engine: RigView | None) -> list[dict[str, Any]]:
        duts = {(d.instrument, d.socket): d for d in engine.duts.values()} if engine is not None else {}
        boards = []
        for instrument, (sockets, rows, columns, order) in self._board_shapes(rig).items():
            cells = []
            for socket in sockets:
                dut = duts.get((instrument, socket))
                latest = self.feed.sockets.get((rig.rig, instrument, socket))
                cells.append(_cell(socket, dut, latest))
            boards.append({"instrument": instrument, "rows": rows, "columns": columns, "order": order, "cells": cells})
        return boards

    def _board_shapes(self, rig: RigConfig) -> dict[str, tuple[list[int], int, int, str]]:
        """Each board of the rig: its sockets, rows, columns and order; worked out once per configuration."""
        config_hash, shapes = self._shapes
        if config_hash != self.config().hash:
            self._shapes = config_hash, shapes = self.config().hash, {}
            for each in self.config().rigs:
                for instrument in each.instruments:
                    if sockets := channel_sockets(instrument):
                        layout = each.layout.get(instrument.name)
                        rows, columns = layout.shape(len(sockets)) if layout else grid(len(sockets))
                        order = layout.order if layout else "rows"
                        shapes[(each.rig, instrument.name)] = (sockets, rows, columns, order)
        return {name: shape for (rig_name, name), shape in shapes.items() if rig_name == rig.rig}

    @staticmethod
    def _output(output: Mapping[str, Any]) -> dict[str, Any]:
        keys = ("output", "type", "target", "delivered", "backlog", "oldest_age_seconds", "failing")
        shown = {key: output.get(key) for key in keys}
        shown["failing_for_seconds"] = output.get("failing_for_seconds")
        shown["last_error"] = _text(output.get("last_error") or "")
        return shown

    def _spool(self, config: LoadedConfig) -> dict[str, Any] | None:
        spool, buffer = self.view.stats.spool, config.gateway.buffer
        if spool is None or buffer.spool_dir is None:
            ring = self.view.ring
            if ring is None:
                return None
            return {"kind": "memory", "records": len(ring), "capacity": ring.capacity, "dropped": ring.dropped}
        return {
            "kind": "spool",
            "bytes": spool.bytes,
            "max_bytes": buffer.spool_max_bytes,
            "use": None if not buffer.spool_max_bytes else round(spool.bytes / buffer.spool_max_bytes, 4),
            "records": spool.records,
            "max_age_seconds": buffer.spool_max_age,
            "dropped_records": spool.dropped_records,
            "last_error": _text(spool.last_error) if spool.last_error else "",
        }

    def trends(self, chosen: str) -> dict[str, Any]:
        instruments = [i.instrument for i in self.view.stats.instruments if i.rig == chosen][:INSTRUMENTS_SHOWN]
        trends: dict[str, dict[str, list[float | None]]] = {}
        for name in instruments:
            trend = self.feed.trends.get((chosen, name))
            if trend:
                trends[name] = {field_name: list(points) for field_name, points in trend.items()}
        return {"rig": chosen, "step_seconds": self.feed.trend_step, "trends": trends}


def _cell(socket: int, dut: DutState | None, latest: Latest | None) -> dict[str, Any]:
    cell: dict[str, Any] = {"socket": socket, "status": "empty" if dut is None else str(dut.status)}
    if dut is not None:
        cell["dut"] = dut.identity.get("dut")
        cell["lot"] = dut.identity.get("lot")
        if dut.failure is not None:
            failure = dut.failure
            cell["failure"] = {
                "rule": failure.rule,
                "mode": failure.mode,
                "value": _value(failure.value),
                "limit": failure.limit,
                "stress_h": round(failure.stress_s / 3600, 3),
            }
    if latest is not None:
        cell["values"] = {name: _value(v) for name, v in list(latest.fields.items())[:VALUES_SHOWN]}
    return cell


def _rig_card(rig: RigConfig, engine: RigView | None, instruments: list[InstrumentStats]) -> dict[str, Any]:
    card: dict[str, Any] = {
        "rig": rig.rig,
        "instruments": len(instruments),
        "instruments_up": sum(1 for i in instruments if i.up),
        "test": None,
        "state": "logging",
    }
    if engine is None:
        return card
    status = engine.status()
    test = status.get("test")
    stress_s = float(status.get("stress_s", 0.0))
    milestones = sorted(rig.stress.milestones) if rig.stress is not None else []
    following = next((m for m in milestones if m > stress_s), None)
    previous = max((m for m in milestones if m <= stress_s), default=0.0)
    card.update(
        {
            "test": None if test is None else {"id": test.get("id"), "kind": test.get("kind")},
            "state": "no test" if test is None else str(test.get("state")),
            "stress_h": round(stress_s / 3600, 4),
            "holding": bool(status.get("holding")),
            "reason": status.get("reason"),
            "next_milestone_h": None if following is None else following / 3600,
            "progress": None if following is None else (stress_s - previous) / (following - previous),
            "duts": {key: int(status["duts"].get(key, 0)) for key in ("active", "failed", "removed")},
        }
    )
    return card
