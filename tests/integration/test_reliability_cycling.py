"""Temperature-cycle counting from the measured chamber temperature against configured extremes and dwell:
on a synthetic sequence of records, then through the daemon polling a Watlow F4 simulator that is cycled by
writing its set point (register 300)."""

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
from edge_daq.reliability.journal import read_journal, read_state
from simulators import serve
from simulators.modbus_server import to_u16
from simulators.watlow_f4 import REG_SP1, WatlowF4
from tests.unit.test_reliability_config import RIG
from tests.unit.test_reliability_engine import T0, Rig

CYCLING = "  cycling: {point: chamber.temp_pv, low: -40, high: 125, tolerance: 3, dwell: 5s}\n"


def ramp(start: float, end: float, step: float) -> list[float]:
    """From ``start`` (excluded) to ``end`` (included) by ``step`` degrees a poll."""
    count = round(abs(end - start) / step)
    return [start + (end - start) * k / count for k in range(1, count + 1)]


def hold(value: float, polls: int) -> list[float]:
    """At ``value`` for ``polls`` polls, with +/-1 degC of noise (inside the tolerance)."""
    return [value + (1.0 if k % 2 else -1.0) for k in range(polls)]


def test_cycles_count_returns_to_low_after_a_dwell_at_high_and_survive_a_restart(tmp_path: Path) -> None:
    rig = Rig(tmp_path, RIG.replace("  milestones: [168h]\n", "  milestones: [168h]\n" + CYCLING))
    rig.engine.start(T0)
    t = 0

    def run(temperatures: list[float], **poll: Any) -> None:
        nonlocal t
        for temperature in temperatures:
            rig.poll(t, temp=temperature, **poll)
            t += 1

    def cycles() -> int:
        return int(rig.engine.status()["cycles"])

    run([25.0, *ramp(25, -40, 5), *hold(-40, 10)])  # to the low extreme first: no cycle yet
    assert (cycles(), rig.engine.stress_state.cycle_phase) == (0, "low")
    run([*ramp(-40, 125, 5), *hold(125, 10)])  # a dwell at high
    assert (cycles(), rig.engine.stress_state.cycle_phase) == (0, "high")
    run([*ramp(125, -40, 5), *hold(-40, 3)])  # back at low, but not yet for the dwell (5 s)
    assert cycles() == 0
    run(hold(-40, 4))
    assert cycles() == 1
    # An overshoot to high that does not dwell there, and a stop short of the extreme (outside tolerance),
    # count nothing.
    run([*ramp(-40, 125, 5), *hold(125, 3), *ramp(125, -40, 5), *hold(-40, 10)])
    run([*ramp(-40, 115, 5), *hold(115, 10), *ramp(115, -40, 5), *hold(-40, 10)])
    assert cycles() == 1
    # Half a cycle, then a restart: the phase and the count are persisted, and the cycle completes after it.
    run([*ramp(-40, 125, 5), *hold(125, 10)])
    rig.engine.close(rig_time(t - 1))
    rig.engine = rig.new_engine()
    rig.engine.start(rig_time(t))
    assert (cycles(), rig.engine.stress_state.cycle_phase) == (1, "high")
    run([*ramp(125, -40, 5), *hold(-40, 10)])
    assert cycles() == 2
    # A failure at the high extreme of the third cycle carries the cycles done so far.
    run([*ramp(-40, 125, 5), *hold(125, 6)])
    run(hold(125, 3), currents={"01": 45.0, "03": 0.0})  # U3 opens: confirmed at the second poll
    assert rig.engine.duts["U3"].status == "failed"
    failure = next(e for e in read_journal(rig.state_dir, "r1") if e["event"] == "failure")
    assert (failure["dut"], failure["cycles"]) == ("U3", 2)
    state = read_state(rig.state_dir, "r1")
    assert state is not None
    assert state["stress"]["cycles"] == 2


def rig_time(t: int) -> int:
    return T0 + t * 1_000_000_000


# -- through the simulator

SCALE = 3600.0  # model seconds per real second: the F4's default ramp rates give about 0.4 s per 100 degC
POLL = 0.05
LOW, HIGH, TOLERANCE = -20.0, 85.0, 2.0
DWELL = 0.3  # real (record clock) seconds


def cycling_rig(folder: Path, port: int) -> Path:
    rig = {
        "rig": "tc-sim",
        "test": {"id": "TC-1", "kind": "TC"},
        "instruments": [
            {"name": "chamber", "profile": "watlow-f4", "host": "127.0.0.1", "port": port, "interval": POLL,
             "timeout": 0.5,
             "points": [{"name": "temp_pv", "address": 100, "type": "int16", "scale": 0.1},
                        {"name": "load_pv", "address": 104, "type": "int16", "scale": 0.1},
                        {"name": "temp_sp", "address": 300, "type": "int16", "scale": 0.1}]},
        ],
        "stress": {
            "all": [{"point": "chamber.temp_pv", "above": -100, "reason": "chamber reading"}],
            "cycling": {"point": "chamber.load_pv", "low": LOW, "high": HIGH, "tolerance": TOLERANCE,
                        "dwell": DWELL},
        },
    }  # fmt: skip
    (folder / "rigs.d").mkdir()
    (folder / "rigs.d" / "tc-sim.yaml").write_text(yaml.safe_dump(rig, sort_keys=False))
    gateway = folder / "gateway.yaml"
    gateway.write_text(yaml.safe_dump({"gateway": "gw-tc", "rigs": "rigs.d/", "state_dir": str(folder / "state")}))
    return gateway


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


async def test_cycles_counted_from_the_load_temperature_of_a_cycling_f4(tmp_path: Path) -> None:
    async with serve("watlow-f4", seed=2, time_scale=SCALE, setpoint=LOW, ambient=LOW) as server:
        chamber = server.devices[1]
        assert isinstance(chamber, WatlowF4)
        gateway = cycling_rig(tmp_path, server.port)
        async with running(gateway) as engine:
            rig = engine.rigs["tc-sim"]

            async def reach(target: float) -> None:
                """Wait until the engine sees the load at ``target``, then for the dwell and two polls more."""
                async with asyncio.timeout(10):
                    while abs((rig.live.number("chamber.load_pv") or 1e9) - target) > TOLERANCE / 2:
                        await asyncio.sleep(POLL / 2)
                await asyncio.sleep(DWELL + 2 * POLL)

            def set_point(celsius: float) -> None:
                chamber.apply_write(REG_SP1, to_u16(celsius * 10))  # register 300, one decimal place

            await reach(LOW)  # the chamber starts at the low extreme
            assert rig.stress_state.cycle_phase == "low"
            for cycle in (1, 2):
                set_point(HIGH)
                await reach(HIGH)
                assert (rig.stress_state.cycle_phase, rig.stress_state.cycles) == ("high", cycle - 1)
                set_point(LOW)
                await reach(LOW)
                assert rig.stress_state.cycles == cycle
            # A set point short of the high extreme does not make a cycle.
            set_point(HIGH - 10)
            await reach(HIGH - 10)
            set_point(LOW)
            await reach(LOW)
            assert rig.stress_state.cycles == 2
    state = read_state(tmp_path / "state", "tc-sim")
    assert state is not None
    assert (state["stress"]["cycles"], state["test"]["kind"]) == (2, "TC")
