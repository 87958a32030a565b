"""The rig file's actions: their targets checked by ``edge-daq check`` at their position, and the runner's
triggers (test start/stop, a DUT failure per socket, an interlock held for its duration)."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

from edge_daq.config.loader import check_files
from edge_daq.config.models import RigConfig
from edge_daq.record import Record, Series
from edge_daq.writes.action_config import WriteAction
from edge_daq.writes.actions import ActionRunner, Job, socket_point

RIG = """\
rig: r1
test:
  id: T1
  on_start: [{write: chamber.temp_sp, value: 125}]
  on_stop: [{write: chamber.temp_pv, value: 25}]
failures:
  on_failure: [{write: "board.enable{socket}", value: 0}]
  rules:
    - {name: oc, field: oc, equals: true, on_failure: [{write: "board.nosuch{socket}", value: 0}]}
interlocks:
  - name: hot
    when: {point: chamber.temp_pv, above: 150, for: 10s}
    do: [{write: oven.bias, value: 0}]
    then: pause
instruments:
  - name: chamber
    driver: modbus-tcp
    host: h
    points:
      - {name: temp_pv, address: 100, type: int16, scale: 0.1}
      - {name: temp_sp, address: 300, type: int16, scale: 0.1, write: {min: -70, max: 180}}
  - name: board
    driver: modbus-tcp
    host: h
    points:
      - {name: enable01, address: 1003, type: uint16, write: {min: 0, max: 1}}
      - {name: enable02, address: 1013, type: uint16, write: {min: 0, max: 1}}
      - {name: oc01, address: 1002, type: bool, bit: 0}
"""


def test_check_reports_each_bad_action_at_its_write(tmp_path: Path) -> None:
    rig = tmp_path / "rig.yaml"
    rig.write_text(textwrap.dedent(RIG))
    issues = [str(issue) for issue in check_files([rig])]
    assert issues == [
        f"{rig}:5:21: 'chamber.temp_pv' is not writable: give the point write: {{min: ..., max: ...}}",
        f"{rig}:9:25: no per-DUT field 'oc' (fields: none: declare channels: on an instrument)",
        f"{rig}:9:64: 'board.nosuch{{socket}}': instrument 'board' has no point 'nosuch{{socket}}'",
        f"{rig}:13:18: 'oven.bias': no instrument 'oven' in this rig",
    ]


def runner_for(rig_text: str) -> tuple[ActionRunner, list[Job], list[tuple[str, str]]]:
    import yaml

    rig = RigConfig.model_validate(yaml.safe_load(rig_text))
    pauses: list[tuple[str, str]] = []
    runner = ActionRunner(rigs=lambda: [rig], service=None, pause=lambda r, why: pauses.append((r, why)))  # type: ignore[arg-type]
    jobs: list[Job] = []
    runner._queue_job = jobs.append  # type: ignore[method-assign, assignment]
    return runner, jobs, pauses


async def test_triggers() -> None:
    runner, jobs, pauses = runner_for(RIG.replace("oven.bias", "board.enable01"))
    runner.on_event("r1", "test_started", {"message": "test T1 started"}, None)
    assert [(j.instrument, j.point, j.value) for j in jobs] == [("chamber", "temp_sp", 125.0)]

    class Dut:
        socket = 2

    jobs.clear()
    runner.on_event("r1", "failure", {"rule": "other", "message": "DUT U2 failed"}, Dut())
    assert [(j.instrument, j.point, j.value) for j in jobs] == [("board", "enable02", 0.0)]
    jobs.clear()
    runner.on_event("r1", "write_verified", {}, None)  # its own events trigger nothing
    runner.on_event("r9", "test_started", {}, None)
    assert jobs == []

    series = Series("chamber", {"rig": "r1", "instrument": "chamber"})
    second = 1_000_000_000
    for t, value in [(0, 151.0), (5, 152.0), (9, 155.0), (10, 149.0), (20, 151.0), (29, 151.0)]:
        runner.on_record(Record(series, {"temp_pv": value}, t * second))
    assert jobs == []  # never 10 s above 150 in a row
    assert pauses == []
    for t, value in [(30, 151.0), (31, 160.0), (40, 151.0)]:
        runner.on_record(Record(series, {"temp_pv": value}, t * second))
    assert [(j.point, j.source) for j in jobs] == [("enable01", "interlock")]
    assert pauses == [("r1", "hot")]
    runner.on_record(Record(series, {"temp_pv": 170.0}, 50 * second))
    assert len(jobs) == 1  # tripped once until the condition clears
    assert runner.status()["interlocks_tripped"] == ["r1/hot"]
    await asyncio.sleep(0)


def test_socket_point_keeps_the_channel_width() -> None:
    import yaml

    rig = RigConfig.model_validate(yaml.safe_load(RIG))
    action = WriteAction(write="board.enable{socket}", value=0)
    assert socket_point(rig, action, 2) == "enable02"
    assert socket_point(rig, action, 3) is None
