"""The engine on synthetic records: stress clock, exclusions, failures, restart, events and the control channel."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest

from edge_daq.cli.life import run_life
from edge_daq.cli.report import run_report
from edge_daq.cli.test_cmd import run_note, run_test
from edge_daq.config.loader import load_config
from edge_daq.record import Record, Series
from edge_daq.reliability.control import ControlServer
from edge_daq.reliability.engine import EVENT_MEASUREMENT, RigEngine
from edge_daq.reliability.journal import read_journal, read_state
from edge_daq.scheduling import STATUS_MEASUREMENT
from tests.unit.test_reliability_config import RIG, write

S = 1_000_000_000
T0 = 1_700_000_000 * S


class Rig:
    """A RigEngine on the test rig, fed by hand; records it emits are kept."""

    def __init__(self, tmp_path: Path, rig: str = RIG, **files: str) -> None:
        self.config = load_config(write(tmp_path, rig, **files))
        self.state_dir = tmp_path / "state"
        self.emitted: list[Record] = []
        self.engine = self.new_engine()

    def new_engine(self) -> RigEngine:
        return RigEngine(
            rig=self.config.rigs[0],
            gateway=self.config.gateway,
            config_hash=self.config.hash,
            state_dir=self.state_dir,
            emit_record=self.emitted.append,
        )

    def poll(self, t: float, *, temp: float = 125.0, bias: int = 1, currents: dict[str, float] | None = None) -> None:
        time_ns = T0 + int(t * S)
        base = {"rig": "r1", "gateway": "gw"}
        feed = self.engine.on_record
        feed(Record(Series("chamber", {**base, "instrument": "chamber"}), {"temp_pv": temp, "temp_sp": 125.0}, time_ns))
        feed(Record(Series("board", {**base, "instrument": "board"}), {"bias_enable": bias}, time_ns))
        for socket, current in (currents or {"01": 45.0, "03": 45.0}).items():
            tags = {**base, "instrument": "board", "socket": socket}
            feed(Record(Series("board", tags), {"i": current, "v": 3.3}, time_ns))


def test_stress_accrues_only_while_the_condition_holds_and_every_gap_is_an_interval(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    engine = rig.engine
    engine.start(T0)  # the YAML's test starts
    for t in range(11):  # 10 s in tolerance
        rig.poll(t)
    for t in range(11, 15):  # out of tolerance from 11 s
        rig.poll(t, temp=120.0)
    for t in range(15, 21):
        rig.poll(t, bias=0 if t < 17 else 1)
    state = engine.stress_state
    assert state.stress_s == pytest.approx(11 + 3)  # 0..11 (the state judged at 10 holds until 11) and 17..20
    reasons = [(e.reason, (e.end_ns or 0) - e.start_ns) for e in state.exclusions]
    assert ("chamber.temp_pv out of tolerance", 4 * S) in reasons
    assert ("bias off", 2 * S) in reasons
    # An instrument that stops answering is an exclusion of its own, from its failing status on.
    status = Series(STATUS_MEASUREMENT, {"rig": "r1", "instrument": "chamber"})
    engine.on_record(Record(status, {"ok": False}, T0 + 21 * S))
    rig.poll(22)
    assert state.reason == "instrument silent: chamber"
    engine.on_record(Record(status, {"ok": True}, T0 + 23 * S))
    rig.poll(23)
    assert state.reason is None
    assert state.stress_s == pytest.approx(15)  # and 20..21, until the failing status
    events = [record.tags["event"] for record in rig.emitted if record.measurement == EVENT_MEASUREMENT]
    assert events[:2] == ["config_loaded", "test_started"]
    assert "exclusion_started" in events


def test_restart_keeps_the_clock_and_records_the_downtime(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.engine.start(T0)
    for t in range(6):
        rig.poll(t)
    rig.engine.close(T0 + 5 * S)
    restarted = rig.new_engine()
    rig.engine = restarted
    assert restarted.stress_state.stress_s == pytest.approx(5)
    restarted.start(T0 + 65 * S)
    down = restarted.stress_state.exclusions[-2]
    assert (down.reason, down.start_ns, down.end_ns) == ("daemon down", T0 + 5 * S, T0 + 65 * S)
    for t in range(66, 70):
        rig.poll(t)
    assert restarted.stress_state.stress_s == pytest.approx(5 + 3)
    kinds = [event["event"] for event in read_journal(rig.state_dir, "r1")]
    assert "interruption" in kinds
    assert kinds.count("test_started") == 1


def test_a_failure_is_confirmed_back_dated_and_attributed(tmp_path: Path) -> None:
    rig = Rig(tmp_path, RIG.replace("- {name: open, field: i, below: 1.0}", "- {name: open, field: i, below: 1.0}\n"
                                    "    - {name: drift, field: i, drift: 0.1, mode: leakage}"))  # fmt: skip
    rig.engine.start(T0)
    for t in range(5):
        rig.poll(t)
    rig.poll(5, currents={"01": 45.0, "03": 60.0})  # +33 %: first violation
    rig.poll(6, currents={"01": 45.0, "03": 60.0})  # confirmed (confirm: 2)
    rig.poll(7, bias=0, currents={"01": 0.0, "03": 0.0})  # bias off: no judgement, no open
    rig.poll(8, currents={"01": 45.5, "03": 61.0})
    duts = rig.engine.duts
    assert duts["U1"].status == "active"
    failure = duts["U3"].failure
    assert failure is not None
    assert (failure.rule, failure.mode, failure.value) == ("drift", "leakage", 60.0)
    assert (failure.time_ns, failure.detected_ns, failure.last_good_ns) == (T0 + 5 * S, T0 + 6 * S, T0 + 4 * S)
    assert failure.stress_s == pytest.approx(5)
    assert failure.limit == "|x/x0 - 1| > 0.1 (x0 = 45)"
    event = next(e for e in read_journal(rig.state_dir, "r1") if e["event"] == "failure")
    assert (event["dut"], event["lot"], event["date_code"], event["socket"]) == ("U3", "L2", "2611", 3)
    assert event["before"]["i"] == 45.0
    assert event["after"]["i"] == 60.0


def args(**values: Any) -> argparse.Namespace:
    return argparse.Namespace(config=None, **values)


async def test_lifecycle_and_notes_over_the_control_socket(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.engine.start(T0)
    server = ControlServer(rig.state_dir / "control.sock", rig.engine.command)
    await server.start()
    out = io.StringIO()
    common = {"state_dir": rig.state_dir, "rig": "r1"}
    try:
        test = {"test_id": None, "kind": "custom", "dut": None, "reason": ""}
        assert await asyncio.to_thread(run_test, args(action="start", **{**test, "test_id": "T2"}, **common), out) == 1
        assert await asyncio.to_thread(run_test, args(action="pause", **test, **common), out) == 0
        assert rig.engine.paused
        assert await asyncio.to_thread(run_note, args(text="board 3 reseated", **common), out) == 0
        assert await asyncio.to_thread(run_test, args(action="resume", **test, **common), out) == 0
        removed = {**test, "dut": "U1", "reason": "cracked"}
        assert await asyncio.to_thread(run_test, args(action="remove", **removed, **common), out) == 0
        assert await asyncio.to_thread(run_test, args(action="stop", **test, **common), out) == 0
        assert await asyncio.to_thread(run_test, args(action="status", **test, **common), out) == 0
    finally:
        await server.close()
    kinds = [event["event"] for event in read_journal(rig.state_dir, "r1") if "exclusion" not in event["event"]]
    assert kinds[-5:] == ["test_paused", "note", "test_resumed", "dut_removed", "test_stopped"]
    assert json.loads(out.getvalue()[out.getvalue().index("{") :])["test"]["state"] == "stopped"
    state = read_state(rig.state_dir, "r1")
    assert state is not None
    assert state["duts"]["U1"]["status"] == "removed"


def test_life_table_and_report_from_a_state(tmp_path: Path) -> None:
    import random

    serials = {f"{s:02d}": f"W{s}" for s in range(1, 41)}
    inline = "- {socket: 1, serial: U1, lot: L1, wafer: 7, x: 3, y: 4, board: B1, slot: 2, bin: 1}"
    rig = Rig(tmp_path, RIG.replace("count: 3", "count: 40").replace(inline, "[]"))
    (tmp_path / "rigs.d" / "duts.csv").write_text(
        "socket,serial,lot\n" + "".join(f"{s},W{s},L9\n" for s in range(1, 41))
    )
    rig.config = load_config(tmp_path / "gw.yaml")  # again, with the 40 DUTs of the new CSV
    rig.engine = rig.new_engine()
    rig.engine.start(T0)
    draw = random.Random(5)
    lives = {socket: draw.weibullvariate(30.0, 1.5) for socket in serials}
    for t in range(60):
        currents = {socket: (0.0 if t >= life else 45.0) for socket, life in lives.items()}
        rig.poll(t, currents=currents)
    rig.engine.close(T0 + 60 * S)
    csv_path, plot = tmp_path / "life.csv", tmp_path / "plot.png"
    common = {"state_dir": rig.state_dir, "rig": "r1"}
    assert run_life(args(output=csv_path, parquet=None, **common), io.StringIO()) == 0
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("dut,instrument,socket,serial,lot,sublot,wafer,x,y,date_code,board,slot,bin,test_id")
    assert len(lines) == 41
    failed = sum(1 for line in lines if ",failed," in line)
    assert failed == sum(1 for life in lives.values() if life < 58)
    out = io.StringIO()
    report = args(confidence=0.9, ea=0.7, use_temp=55.0, stress_temp=125.0, plot=plot, **common)
    assert run_report(report, out) == 0
    text = out.getvalue()
    assert "FIT" in text
    assert "beta =" in text
    assert "Arrhenius AF = 77.6" in text
    assert plot.read_bytes()[:4] == b"\x89PNG"
