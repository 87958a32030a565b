"""End to end: a seeded burn-in board with 48 Weibull-failing DUTs and a chamber, both real Modbus TCP
simulators; the daemon and the reliability engine; a door opening and a daemon restart in the middle.

The simulators run 3600 times faster than real time (one real second is one model hour of stress), so the
whole test is about 15 s. The board's own stress clock (seconds with bias on) is the injected truth: the
test switches bias off while the door is open and while the daemon is down, so the board ages exactly when
the engine should credit stress, and the two clocks agree to a poll interval.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from edge_daq.config.loader import load_config
from edge_daq.daemon import Daemon
from edge_daq.reliability.engine import ReliabilityEngine
from edge_daq.reliability.journal import read_journal, read_state
from edge_daq.reliability.life import life_table
from edge_daq.reliability.state import load_state
from edge_daq.reliability.weibull import fit_weibull
from simulators import serve
from simulators.burnin_board import REG_BIAS, BurnInBoard
from simulators.watlow_f4 import DOOR_BIT, REG_DIGITAL_INPUTS, WatlowF4

SCALE = 3600.0  # model seconds per real second
POLL = 0.1  # real seconds, both instruments
POLL_MODEL = POLL * SCALE
SLACK = 0.05 * SCALE  # scheduling lateness of a poll on a loaded machine (real seconds, in model seconds)
SOCKETS = 48
BETA, ETA_H = 2.0, 5.0
RULE_OF_MODE = {"leak": "drift", "open": "open", "short": "over_current", "latch": "over_current"}


def rig_file(folder: Path, chamber_port: int, board_port: int) -> Path:
    duts = [
        {"socket": s, "serial": f"U{s:04d}", "lot": "L2611-03", "wafer": f"{(s - 1) // 16 + 1:02d}",
         "x": s % 16, "y": s // 16, "board": "B03", "slot": 1}
        for s in range(1, SOCKETS + 1)
    ]  # fmt: skip
    rig = {
        "rig": "htol-e2e",
        "test": {"id": "T-E2E", "kind": "HTOL"},
        "duts": duts,
        "instruments": [
            {"name": "chamber", "profile": "watlow-f4", "host": "127.0.0.1", "port": chamber_port,
             "interval": POLL, "timeout": 0.5,
             "points": [{"name": "temp_pv", "address": 100, "type": "int16", "scale": 0.1},
                        {"name": "temp_sp", "address": 300, "type": "int16", "scale": 0.1},
                        {"name": "door_open", "address": 210, "type": "bool", "bit": 3}]},
            {"name": "board1", "profile": "burnin-board", "host": "127.0.0.1", "port": board_port,
             "interval": POLL, "timeout": 0.5,
             "points": [{"name": "bias_enable", "address": 20, "type": "uint16"},
                        {"name": "stress_time", "address": 30, "type": "uint32"}],
             "channels": {"count": SOCKETS, "stride": 10, "points": [
                 {"name": "i", "address": 1001, "type": "uint16", "scale": 0.1},
                 {"name": "oc", "address": 1002, "type": "bool", "bit": 0}]}},
        ],
        "stress": {
            "time_scale": SCALE,
            "milestones": ["2h", "8h"],
            "all": [
                {"point": "chamber.door_open", "equals": False, "reason": "door open"},
                {"point": "board1.bias_enable", "equals": 1, "reason": "bias off"},
                {"point": "chamber.temp_pv", "within": 2, "of": "chamber.temp_sp", "reason": "out of tolerance"},
            ],
        },
        "failures": {
            "confirm": 2,
            "rules": [
                {"name": "over_current", "field": "oc", "equals": True, "mode": "short or latch-up"},
                {"name": "open", "field": "i", "below": 1.0, "mode": "open"},
                {"name": "drift", "field": "i", "drift": 0.10, "mode": "leakage drift"},
            ],
        },
    }  # fmt: skip
    (folder / "rigs.d").mkdir()
    (folder / "rigs.d" / "htol-e2e.yaml").write_text(yaml.safe_dump(rig, sort_keys=False))
    gateway = folder / "gateway.yaml"
    gateway.write_text(
        yaml.safe_dump(
            {
                "gateway": "gw-test",
                "rigs": "rigs.d/",
                "state_dir": str(folder / "state"),
                "outputs": {"file": {"dir": str(folder / "archive")}},
            }
        )
    )
    return gateway


@contextlib.asynccontextmanager
async def running(gateway: Path) -> AsyncIterator[ReliabilityEngine]:
    daemon = Daemon(load_config(gateway), drain_timeout=5)
    engine = daemon.reliability  # the daemon runs its own engine, as under `edge-daq run`
    engine.heartbeat = 0.2  # state saved often, so the restart's downtime is measured finely
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        group.create_task(daemon.run(stop), name="daemon")
        try:
            yield engine
        finally:
            stop.set()


async def wait_until(predicate: Any, within: float) -> None:
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_weibull_failures_door_and_restart_end_to_end(tmp_path: Path) -> None:
    async with (
        serve("watlow-f4", seed=3, time_scale=SCALE, setpoint=125.0, ambient=124.0) as chamber_server,
        serve(
            "burnin-board", seed=11, time_scale=SCALE, sockets=SOCKETS, bias=False,
            weibull=(BETA, ETA_H * 3600), limit_ma=120.0,
        ) as board_server,
    ):  # fmt: skip
        board = board_server.devices[1]
        chamber = chamber_server.devices[1]
        assert isinstance(board, BurnInBoard)
        assert isinstance(chamber, WatlowF4)
        gateway = rig_file(tmp_path, chamber_server.port, board_server.port)
        state_dir = tmp_path / "state"

        async with running(gateway) as engine:
            rig = engine.rigs["htol-e2e"]
            await wait_until(lambda: rig.live.values.get("board1.bias_enable") == 0, 5)
            board.apply_write(REG_BIAS, 1)  # the board ages from here on, as the engine credits
            await asyncio.sleep(2.5)
            # The door opens (bias off while it is open: the board must not age while stress is not held).
            door_opened_ns = time.time_ns()
            chamber.apply_write(REG_DIGITAL_INPUTS, DOOR_BIT)
            board.apply_write(REG_BIAS, 0)
            await asyncio.sleep(0.5)
            door_closed_ns = time.time_ns()
            chamber.apply_write(REG_DIGITAL_INPUTS, 0)
            board.apply_write(REG_BIAS, 1)
            await asyncio.sleep(2.5)
            board.apply_write(REG_BIAS, 0)
            await asyncio.sleep(3 * POLL)
        before_restart = read_state(state_dir, "htol-e2e")
        assert before_restart is not None
        down_from_ns = time.time_ns()
        await asyncio.sleep(0.5)

        async with running(gateway) as engine:
            rig = engine.rigs["htol-e2e"]
            # Nothing lost across the restart: the clock resumes where it stopped.
            assert rig.stress_state.stress_s == before_restart["stress"]["stress_s"]
            await wait_until(lambda: rig.live.values.get("board1.bias_enable") == 0, 5)
            board.apply_write(REG_BIAS, 1)
            await wait_until(lambda: rig.stress_state.stress_s >= 11.5 * 3600, 15)
            board.apply_write(REG_BIAS, 0)
            await asyncio.sleep(3 * POLL)

    state = read_state(state_dir, "htol-e2e")
    assert state is not None
    final_stress_s = state["stress"]["stress_s"]
    exclusions = state["stress"]["exclusions"]

    # The door: one exclusion, edges within one poll of the injected opening and closing.
    door = [e for e in exclusions if e["reason"] == "door open"]
    assert len(door) == 1
    assert 0 <= (door[0]["start_ns"] - door_opened_ns) / 1e9 <= POLL + 0.1  # a poll, + load slack
    assert 0 <= (door[0]["end_ns"] - door_closed_ns) / 1e9 <= POLL + 0.1  # a poll, + load slack
    # The restart: one "daemon down" interval covering the downtime.
    down = [e for e in exclusions if e["reason"] == "daemon down"]
    assert len(down) == 1
    assert down[0]["start_ns"] <= down_from_ns
    assert (down[0]["end_ns"] - down[0]["start_ns"]) / 1e9 >= 0.5
    journal = list(read_journal(state_dir, "htol-e2e"))
    kinds = [event["event"] for event in journal]
    assert kinds.count("interruption") == 1
    assert "test_started" in kinds
    assert [event["milestone_h"] for event in journal if event["event"] == "milestone"] == [2.0, 8.0]

    # Every injected failure found, on the right DUT, with the right rule; no healthy DUT flagged.
    plan = {failure.socket: failure for failure in board.failure_plan()}
    board_stress_s = board.stress_s
    typed = load_state(state_dir, "htol-e2e")
    assert typed is not None
    rows = {row.socket: row for row in life_table(typed)}
    assert len(rows) == SOCKETS
    offsets: list[tuple[int, float]] = []
    for socket, row in rows.items():
        failure = plan[socket]
        assert row.serial == f"U{socket:04d}"
        assert row.lot == "L2611-03"
        assert row.test_id == "T-E2E"
        if failure.at_stress_s < board_stress_s - 3 * POLL_MODEL:
            assert row.status == "failed", (socket, failure, row)
            assert row.rule == RULE_OF_MODE[failure.mode], (socket, failure, row)
            assert row.failed_h is not None
            assert row.detected_h is not None
            assert row.last_good_h is not None
            offsets.append((socket, row.failed_h * 3600 - failure.at_stress_s))
            assert row.last_good_h < row.failed_h <= row.detected_h
        elif failure.at_stress_s > board_stress_s + POLL_MODEL:
            assert row.status == "survived", (socket, failure, row)
            assert row.censored_h == final_stress_s / 3600
    # The engine's clock and the board's differ by a constant within each stretch between switches (bias on at
    # start, the door, the restart): each switch is seen at the next poll, so each may shift it by up to a poll.
    # Around it, each failure is back-dated to within a poll of its injection and detected within two.
    bounds = sorted([door[0]["stress_s"], down[0]["stress_s"]])
    by_stretch: dict[int, list[tuple[int, float]]] = {}
    for socket, offset in offsets:
        failed_s = plan[socket].at_stress_s + offset
        by_stretch.setdefault(bisect.bisect(bounds, failed_s), []).append((socket, offset))
    # A DUT that failed while the daemon was not polling (stopped for the restart) is seen only at the first
    # polls after it: its dating and detection are bounded by that gap in the observations, not by a poll.
    unobserved = {
        socket
        for socket, _ in offsets
        if (rows[socket].detected_h - rows[socket].last_good_h) * 3600 > 2 * POLL_MODEL + SLACK  # type: ignore[operator]
    }
    assert len(unobserved) <= 6, unobserved  # the daemon is down for a few polls: few failures fall in that time
    for stretch in by_stretch.values():
        ordered = sorted(offset for _, offset in stretch)
        median = ordered[len(ordered) // 2]
        assert abs(median) <= 3 * POLL_MODEL
        for socket, offset in stretch:
            row = rows[socket]
            if socket in unobserved:
                continue
            assert abs(offset - median) <= POLL_MODEL + SLACK, (socket, row, median)
            detected_s = row.detected_h * 3600  # type: ignore[operator]
            assert detected_s - (plan[socket].at_stress_s + median) <= 2 * POLL_MODEL + SLACK, (socket, row)
    failed = sum(1 for row in rows.values() if row.status == "failed")
    assert failed >= 40

    # The Weibull fit of the life table brackets the injected parameters.
    fit = fit_weibull(list(rows.values()), confidence=0.95)
    assert fit.beta_bounds[0] <= BETA <= fit.beta_bounds[1], fit
    assert fit.eta_bounds[0] <= ETA_H <= fit.eta_bounds[1], fit
