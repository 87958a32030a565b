"""Cycle-counted confirmation end to end: the daemon polls an event-detector simulator on a cycling chamber
(a cycle every 0.75 s), three channels crack at seeded cycles and burst events in every hot dwell,
every channel has isolated events. IPC-9701 style (10 events within 10 % of the cycles to the first), each
cracked channel must fail at the cycle of the first event of its confirming window (computed here from the
simulator's truth), and no channel with isolated events only may fail."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from edge_daq.config.loader import load_config
from edge_daq.daemon import Daemon
from edge_daq.reliability.engine import ReliabilityEngine
from edge_daq.reliability.journal import read_journal
from edge_daq.reliability.life import life_table
from edge_daq.reliability.state import load_state
from simulators import serve
from simulators.event_detector import Crack, EventDetector

CYCLE = 3600.0  # model seconds per cycle
SCALE = 4800.0  # a cycle every 0.75 s: events sit 190 ms from a cycle boundary, which a late poll may take
SOAK = 1.0 * SCALE  # a second at the low extreme first: the daemon is polling before cycle 0 begins
POLL = 0.02
CHANNELS = 16
CRACKS = [Crack(3, 10), Crack(9, 14), Crack(14, 18)]
EVENTS, FRACTION = 10, 0.1
RUN_CYCLES = 22


def detector_rig(folder: Path, port: int) -> Path:
    rig = {
        "rig": "tc-ed",
        "test": {"id": "TC-ED-1", "kind": "TC"},
        "duts": [{"socket": c, "serial": f"J{c:02d}", "board": "TV1"} for c in range(1, CHANNELS + 1)],
        "instruments": [
            {"name": "det", "profile": "event-detector", "host": "127.0.0.1", "port": port, "interval": POLL,
             "timeout": 0.5, "channels": {"count": CHANNELS, "stride": 4, "points": [
                 {"name": "events", "address": 1000, "type": "uint32"},
                 {"name": "open", "address": 1002, "type": "bool", "bit": 1}]}},
        ],
        "stress": {
            "all": [{"point": "det.temp", "above": -100, "reason": "detector reading"}],
            "cycling": {"point": "det.temp", "low": -40, "high": 125, "tolerance": 3, "dwell": 0.05},
        },
        "failures": {
            "rules": [{"name": "intermittent", "field": "events", "rises": True, "mode": "solder joint open",
                       "confirm": {"events": EVENTS, "within_fraction": FRACTION, "cycles_from": "det.cycles"}}],
        },
    }  # fmt: skip
    (folder / "rigs.d").mkdir()
    (folder / "rigs.d" / "tc-ed.yaml").write_text(yaml.safe_dump(rig, sort_keys=False))
    gateway = folder / "gateway.yaml"
    gateway.write_text(yaml.safe_dump({"gateway": "gw-ed", "rigs": "rigs.d/", "state_dir": str(folder / "state")}))
    return gateway


def expected_cycle(event_cycles: list[int]) -> int | None:
    """IPC-9701: the first event followed by EVENTS - 1 more within FRACTION of its cycle count."""
    for i, first in enumerate(event_cycles):
        if sum(1 for c in event_cycles[i:] if c - first <= FRACTION * first) >= EVENTS:
            return first
    return None


@contextlib.asynccontextmanager
async def running(gateway: Path) -> AsyncIterator[ReliabilityEngine]:
    daemon = Daemon(load_config(gateway), drain_timeout=5)
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        group.create_task(daemon.run(stop), name="daemon")
        try:
            yield daemon.reliability
        finally:
            stop.set()


async def test_cracked_channels_fail_at_the_cycle_of_their_first_event_and_isolated_events_never_do(
    tmp_path: Path,
) -> None:
    options: dict[str, Any] = {
        "channels": CHANNELS, "cycle": CYCLE, "soak": SOAK, "intermittent": CRACKS, "burst": (6, 9), "isolated": 0.3,
    }  # fmt: skip
    async with serve("event-detector", seed=23, time_scale=SCALE, **options) as server:
        detector = server.devices[1]
        assert isinstance(detector, EventDetector)
        async with running(detector_rig(tmp_path, server.port)) as engine:
            rig = engine.rigs["tc-ed"]
            async with asyncio.timeout(40):
                while detector.position()[0] < RUN_CYCLES:
                    await asyncio.sleep(0.1)
                # In a hot dwell the cycles counted from the temperature are the detector's own (waited for: the
                # engine sees the chamber a poll late).
                while not (0.2 < detector.position()[1] < 0.45 and rig.stress_state.cycles == detector.position()[0]):
                    await asyncio.sleep(0.01)
    state = load_state(tmp_path / "state", "tc-ed")
    assert state is not None
    truth = {c: detector.event_cycles(c, RUN_CYCLES) for c in range(1, CHANNELS + 1)}
    expected = {f"J{c:02d}": expected_cycle(events) for c, events in truth.items()}
    assert {serial for serial, cycle in expected.items() if cycle is not None} == {f"J{c.channel:02d}" for c in CRACKS}
    # Isolated events happened on the healthy channels, and none of them failed.
    healthy = [c for c in truth if c not in {crack.channel for crack in CRACKS}]
    assert sum(len(truth[c]) for c in healthy) >= len(healthy)
    failed = {serial: dut.failure for serial, dut in state.duts.items() if dut.failure is not None}
    assert {serial: failure.cycles for serial, failure in failed.items()} == {
        serial: cycle for serial, cycle in expected.items() if cycle is not None
    }
    for crack in CRACKS:
        failure = failed[f"J{crack.channel:02d}"]
        assert failure.cycles is not None
        assert failure.cycles >= crack.cycle - FRACTION * crack.cycle
        assert failure.events >= EVENTS
        assert failure.detected_cycles is not None
        assert failure.detected_cycles - failure.cycles <= FRACTION * failure.cycles
        assert (failure.rule, failure.mode) == ("intermittent", "solder joint open")
    events = [e for e in read_journal(tmp_path / "state", "tc-ed") if e["event"] == "failure"]
    assert sorted((e["dut"], e["failed_cycle"]) for e in events) == sorted((s, f.cycles) for s, f in failed.items())
    rows = {row.dut: row for row in life_table(state)}
    assert rows["J03"].failed_cycles == failed["J03"].cycles
    assert rows["J01"].status == "survived"
