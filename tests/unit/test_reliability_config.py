"""DUTs (inline and CSV), repeated channels and the reliability keys: loading, expansion, positioned errors."""

from __future__ import annotations

from pathlib import Path

from edge_daq.config.loader import check_files, load_config
from edge_daq.record import FieldValue
from edge_daq.reliability import expand
from edge_daq.reliability.config import DUT_CSV_COLUMNS
from edge_daq.scheduling import FIELD_NAME_TAG, MEASUREMENT_TAG, RecordBuilder

RIG = """\
rig: r1
tags: {lot: RIGLOT}
test: {id: T1, kind: HTOL}
duts:
  - {socket: 1, serial: U1, lot: L1, wafer: 7, x: 3, y: 4, board: B1, slot: 2, bin: 1}
duts_csv: duts.csv
instruments:
  - name: chamber
    profile: watlow-f4
    host: 127.0.0.1
  - name: board
    profile: burnin-board
    host: 127.0.0.1
    channels:
      count: 3
      stride: 10
      points:
        - {name: v, address: 1000, type: uint16, scale: 0.001}
        - {name: i, address: 1001, type: uint16, scale: 0.1}
stress:
  all:
    - {point: board.bias_enable, equals: 1, reason: bias off}
    - {point: chamber.temp_pv, within: 2, of: chamber.temp_sp}
  milestones: [168h]
failures:
  rules:
    - {name: open, field: i, below: 1.0}
"""


def write(tmp_path: Path, rig: str, csv: str = "socket,serial,lot,date_code\n3,U3,L2,2611\n") -> Path:
    (tmp_path / "rigs.d").mkdir(exist_ok=True)
    (tmp_path / "rigs.d" / "r1.yaml").write_text(rig)
    (tmp_path / "rigs.d" / "duts.csv").write_text(csv)
    gateway = tmp_path / "gw.yaml"
    gateway.write_text(f"gateway: gw\nrigs: rigs.d/\nstate_dir: {tmp_path / 'state'}\n")
    return gateway


def test_duts_and_channels_give_one_record_per_dut_tagged_with_its_identity(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, RIG))
    rig = config.rigs[0]
    assert [(d.socket, d.serial) for d in rig.duts] == [(1, "U1"), (3, "U3")]
    assert config.gateway.state_path == tmp_path / "state"
    board = rig.instruments[1]
    names = [point.name for point in board.points]  # type: ignore[attr-defined]
    assert {"bias_enable", "v01", "i01", "v03", "i03"} <= set(names)
    assert "i04" not in names
    assert "v32" not in names
    address = {point.name: point.address for point in board.points}  # type: ignore[attr-defined]
    assert (address["v01"], address["i03"]) == (1000, 1021)

    builder = RecordBuilder(board, {"rig": "r1", "lot": "RIGLOT"})
    fields: dict[str, FieldValue] = dict.fromkeys(names, 1.0)
    records = {record.tags.get("socket"): record for record in builder.build(fields, 7)}
    assert set(records) == {None, "01", "02", "03"}
    first = records["01"]
    assert first.fields == {"v": 1.0, "i": 1.0}
    assert first.measurement == "board"
    assert {k: first.tags[k] for k in ("dut", "serial", "lot", "wafer", "x", "y", "board", "slot", "bin")} == {
        "dut": "U1", "serial": "U1", "lot": "L1", "wafer": "7", "x": "3", "y": "4", "board": "B1", "slot": "2",
        "bin": "1",
    }  # fmt: skip
    assert FIELD_NAME_TAG not in first.tags
    assert records["03"].tags["date_code"] == "2611"
    assert "dut" not in records["02"].tags  # an empty socket is still read, without identity
    assert records[None].tags["lot"] == "RIGLOT"
    assert "v01" not in records[None].fields


def test_reserved_tags_match_the_record_builder() -> None:
    assert (expand.FIELD_TAG, expand.MEASUREMENT_TAG) == (FIELD_NAME_TAG, MEASUREMENT_TAG)


def test_errors_point_at_the_yaml_and_csv_cells(tmp_path: Path) -> None:
    rig = (
        RIG.replace("point: board.bias_enable", "point: board.bias_enabel")
        .replace("field: i,", "field: current,")
        .replace("serial: U1, lot", "serial: U1, lto")
    )
    gateway = write(tmp_path, rig, csv="socket,serial,colour\n1,U9,red\n")
    issues = [str(issue).replace(str(tmp_path), "") for issue in check_files([gateway])]
    assert f"/rigs.d/duts.csv:1:15: unknown DUT column 'colour'; known: {', '.join(DUT_CSV_COLUMNS)}" in issues
    assert any(i.startswith("/rigs.d/r1.yaml:5:29: unknown key 'lto'") for i in issues), issues
    # A second pass with a valid DUT file: the references are checked against the expanded points.
    gateway = write(tmp_path, rig.replace("lto", "lot"))
    issues = [str(issue).replace(str(tmp_path), "") for issue in check_files([gateway])]
    assert any("r1.yaml:22:15: instrument 'board' has no point 'bias_enabel' (did you mean 'bias_enable'?)" in i
               for i in issues), issues  # fmt: skip
    assert any("r1.yaml:27:27: no per-DUT field 'current' (fields: i, v)" in i for i in issues), issues


def test_a_socket_used_twice_and_a_dut_outside_the_channels(tmp_path: Path) -> None:
    gateway = write(tmp_path, RIG, csv="socket,serial\n1,U7\n9,U9\n3,U1\n")
    messages = [issue.message for issue in check_files([gateway])]
    assert any("socket 1 of 'board' already holds a DUT" in m for m in messages), messages
    assert any("serial 'U1' is already used" in m for m in messages), messages
    assert any("DUT 'U9' is in socket 9, outside channels 1..3" in m for m in messages), messages


def test_the_example_rig_checks_clean() -> None:
    root = Path(__file__).parents[2] / "config"
    assert check_files([root / "edge-daq.yaml"]) == []
    rig = load_config(root / "edge-daq.yaml").rigs[0]
    assert len(rig.duts) == 32
    assert rig.stress is not None
    assert rig.failures is not None
