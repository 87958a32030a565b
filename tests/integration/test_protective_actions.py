"""Protective actions on the shipped HTOL example rig: the burn-in board simulator draws seeded failures; every
DUT that fails short (or latches up) has its socket disabled within one poll of the confirmation, by the rules'
``on_failure``, and no other socket is touched. Also: ``test.on_start`` and an interlock that pauses the test."""

from __future__ import annotations

import asyncio
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from edge_daq.config.loader import load_config
from edge_daq.daemon import Daemon
from edge_daq.record import Record
from edge_daq.reliability.journal import read_journal
from simulators import serve
from simulators.burnin_board import BurnInBoard, Failure
from simulators.watlow_f4 import REG_SP1, WatlowF4

REPO = Path(__file__).resolve().parents[2]
RIG = "htol-07"
SCALE = 3600.0  # a real second is an hour of stress
POLL = 0.1
FAILURES = [Failure(3, 0.4 * 3600, "short"), Failure(17, 0.6 * 3600, "short"), Failure(21, 0.5 * 3600, "latch"),
            Failure(5, 0.4 * 3600, "open")]  # fmt: skip
DISABLED = {3, 17, 21}  # short and latch-up: the over_current rule's on_failure


def example_gateway(folder: Path, chamber_port: int, board_port: int, **rig_keys: Any) -> Path:
    """The shipped htol-07 rig, pointed at the simulators, polled fast."""
    rig = yaml.safe_load((REPO / "config/rigs.d/htol-07.yaml").read_text())
    shutil.copy(REPO / "config/rigs.d/htol-07-duts.csv", folder / "htol-07-duts.csv")
    chamber, board = rig["instruments"]
    chamber.update(port=chamber_port, interval=POLL)
    for point in chamber["points"]:
        if point["name"] == "temp_sp":
            point["write"] = {"min": -70, "max": 180}
    board.update(port=board_port, interval=POLL)
    rig["stress"]["time_scale"] = SCALE
    rig.update(rig_keys)
    (folder / "htol-07.yaml").write_text(yaml.safe_dump(rig, sort_keys=False))
    gateway = folder / "gw.yaml"
    gateway.write_text(yaml.safe_dump({
        "gateway": "gw-protect", "rigs": ["htol-07.yaml"], "state_dir": str(folder / "state"),
        "outputs": {"file": {"dir": str(folder / "archive")}}, "log": {"level": "warning"},
    }))  # fmt: skip
    return gateway


async def test_a_shorted_dut_has_its_socket_switched_off_within_one_poll(tmp_path: Path) -> None:
    async with (
        serve("watlow-f4", seed=3, time_scale=SCALE, setpoint=125.0, ambient=124.0) as chamber_sim,
        serve("burnin-board", seed=7, time_scale=SCALE, sockets=32, failures=FAILURES) as board_sim,
    ):
        board, chamber = board_sim.devices[1], chamber_sim.devices[1]
        assert isinstance(board, BurnInBoard)
        assert isinstance(chamber, WatlowF4)
        on_start = [{"write": "chamber.temp_sp", "value": 124.5}]
        gateway = example_gateway(tmp_path, chamber_sim.port, board_sim.port,
                                  test={"id": "HTOL-T1", "kind": "HTOL", "on_start": on_start})  # fmt: skip
        daemon = Daemon(load_config(gateway), drain_timeout=5)
        reader = daemon.ring.reader("test")
        enables: dict[int, list[tuple[int, int]]] = defaultdict(list)  # socket -> (record time, enable)

        def collect(records: list[Record]) -> None:
            for record in records:
                enable = record.fields.get("enable")
                if record.tags.get("instrument") == "board1" and "socket" in record.tags and isinstance(enable, int):
                    enables[int(record.tags["socket"])].append((record.time_ns, enable))

        stop = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            group.create_task(daemon.run(stop), name="daemon")
            try:
                async with asyncio.timeout(20):
                    while not all(not board.socket_enabled(s) for s in DISABLED) or _failures(tmp_path) < 4:
                        await reader.wait(1, max_wait=0.1)
                        batch = reader.read(10_000)
                        collect(batch.records)
                        reader.commit(batch)
                for _ in range(3):  # a few more polls: the enables as the board reports them
                    await asyncio.sleep(POLL)
                    batch = reader.read(10_000)
                    collect(batch.records)
                    reader.commit(batch)
                status: dict[str, Any] = daemon.writes_status()["actions"]  # type: ignore[assignment]
            finally:
                stop.set()

    journal = list(read_journal(tmp_path / "state", RIG))
    failures = {event["socket"]: event for event in journal if event["event"] == "failure"}
    assert set(failures) == {3, 5, 17, 21}, failures
    assert chamber.register_values()[REG_SP1] == 1245  # test.on_start
    for socket in range(1, 33):
        assert board.socket_enabled(socket) is (socket not in DISABLED), socket
    verified = [e for e in journal if e["event"] == "write_verified"]
    assert sorted(e["point"] for e in verified) == ["enable03", "enable17", "enable21", "temp_sp"]
    for event in verified:
        assert event["who"] == "edge-daq"
        assert event["source"] == "action"
    for socket in DISABLED:
        confirmed = failures[socket]["time_ns"]
        # The poll after the confirmation may have been read before the write landed; the next one shows it.
        after = [enable for time_ns, enable in enables[socket] if time_ns > confirmed]
        assert 0 in after[:2], (socket, after[:5])
        assert failures[socket]["rule"] == "over_current"
    assert all(enable == 1 for s, rows in enables.items() if s not in DISABLED for _, enable in rows)
    assert status["taken"] == 4
    assert status["failed"] == 0


def _failures(folder: Path) -> int:
    return sum(1 for event in read_journal(folder / "state", RIG) if event["event"] == "failure")


async def test_an_interlock_switches_bias_off_and_pauses_the_test(tmp_path: Path) -> None:
    async with (
        serve("watlow-f4", seed=3, time_scale=SCALE, setpoint=125.0, ambient=124.0) as chamber_sim,
        serve("burnin-board", seed=7, time_scale=SCALE, sockets=32) as board_sim,
    ):
        board = board_sim.devices[1]
        assert isinstance(board, BurnInBoard)
        interlock = {"name": "over_temperature", "when": {"point": "chamber.temp_pv", "below": 100, "for": "200ms"},
                     "do": [{"write": "board1.bias_enable", "value": 0}], "then": "pause"}  # fmt: skip
        gateway = example_gateway(tmp_path, chamber_sim.port, board_sim.port, interlocks=[interlock])
        rig = yaml.safe_load((tmp_path / "htol-07.yaml").read_text())
        board_points = rig["instruments"][1].setdefault("points", [])
        board_points.append({"name": "bias_enable", "address": 20, "type": "uint16", "write": {"min": 0, "max": 1}})
        (tmp_path / "htol-07.yaml").write_text(yaml.safe_dump(rig, sort_keys=False))
        daemon = Daemon(load_config(gateway), drain_timeout=5)
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            group.create_task(daemon.run(stop), name="daemon")
            try:
                async with asyncio.timeout(20):
                    while daemon.reliability.rigs[RIG].test is None:
                        await asyncio.sleep(0.05)
                    chamber = chamber_sim.devices[1]
                    assert isinstance(chamber, WatlowF4)
                    chamber.ambient = -40.0
                    chamber.apply_write(REG_SP1, 0)  # the chamber cools far below 100 degC
                    while board.bias or not daemon.reliability.rigs[RIG].paused:
                        await asyncio.sleep(0.05)
                state = daemon.reliability.rigs[RIG].stress_state
                status: dict[str, Any] = daemon.writes_status()["actions"]  # type: ignore[assignment]
            finally:
                stop.set()
    assert state.reason == "over_temperature"
    assert status["interlocks_tripped"] == [f"{RIG}/over_temperature"]
    journal = list(read_journal(tmp_path / "state", RIG))
    paused = next(e for e in journal if e["event"] == "test_paused")
    assert paused["message"] == "test HTOL-2611-03 paused: over_temperature"
    bias = next(e for e in journal if e["event"] == "write_verified" and e["point"] == "bias_enable")
    assert (bias["source"], bias["readback"]) == ("interlock", 0.0)
