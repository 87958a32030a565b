"""Readouts: the DUTs leave the chamber (stress held, exclusion ``readout``), come back with the ATE's
results, and a DUT that passed in situ but fails at a readout is failed, interval-censored between its last
passing readout (or the test start) and this one, with its bin as the mode.

The STDF files are written with Semi-ATE-STDF, a different library from the daemon's reader (pystdf); the
commands go through the real control socket and `edge-daq test readout ...` as the CLI runs them."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import os
from pathlib import Path
from typing import Any

import pytest
from Semi_ATE.STDF import FAR, HBR, MIR, MRR, PIR, PRR, SBR

from edge_daq.cli.test_cmd import run_test
from edge_daq.reliability.control import ControlServer
from edge_daq.reliability.journal import read_journal
from edge_daq.reliability.life import life_table
from edge_daq.reliability.readout import readout_rows
from edge_daq.reliability.results import ResultsError, read_results
from edge_daq.reliability.state import load_state
from tests.unit.test_reliability_config import RIG
from tests.unit.test_reliability_engine import T0, Rig, S

Part = tuple[str, bool | None, int, int]
"""PART_ID, failed (None: the PRR's pass/fail flag is marked invalid), hard bin, soft bin."""


def stdf(parts: list[Part], *, bins: dict[int, tuple[str, str]] | None = None, endian: str = "<") -> bytes:
    """An STDF V4 file written by Semi-ATE-STDF: FAR, MIR, a PIR/PRR per part, SBRs, MRR."""
    far = FAR(endian=endian)
    far.set_value("CPU_TYPE", 2 if endian == "<" else 1)  # the byte order the file declares
    out = bytearray(far.__repr__())
    mir = MIR(endian=endian)
    mir.set_value("LOT_ID", "L2611-03")
    out += mir.__repr__()
    for part_id, failed, hard, soft in parts:
        out += PIR(endian=endian).__repr__()
        prr = PRR(endian=endian)
        flags = ["0"] * 8  # bit 7 first: index 4 is bit 3 (failed), index 3 is bit 4 (pass/fail invalid)
        if failed is None:
            flags[3] = "1"
        elif failed:
            flags[4] = "1"
        for key, value in (("PART_ID", part_id), ("HARD_BIN", hard), ("SOFT_BIN", soft), ("PART_FLG", flags)):
            prr.set_value(key, value)
        out += prr.__repr__()
    for number, (pf, name) in (bins or {}).items():
        for record, prefix in ((SBR(endian=endian), "SBIN"), (HBR(endian=endian), "HBIN")):
            for key, value in (("NUM", number), ("PF", pf), ("NAM", name)):
                record.set_value(f"{prefix}_{key}", value)
            out += record.__repr__()
    out += MRR(endian=endian).__repr__()
    return bytes(out)


BINS = {1: ("P", "GOOD"), 7: ("F", "IDDQ"), 3: ("F", "VOH")}
DUTS_CSV = "socket,serial,lot\n2,U2,L1\n3,U3,L1\n"


def test_stdf_parts_pass_fail_bins_retests_and_both_byte_orders(tmp_path: Path) -> None:
    parts: list[Part] = [("U1", False, 1, 1), ("U2", True, 5, 7), ("U3", None, 1, 1), ("U4", None, 9, 3),
                         ("", False, 1, 1), ("U1", False, 1, 1), ("U5", None, 2, 65535)]  # fmt: skip
    for endian in ("<", ">"):
        path = tmp_path / f"r{endian == '<'}.stdf"
        path.write_bytes(stdf(parts, bins=BINS, endian=endian))
        results = read_results(path)
        assert results.format == "stdf"
        got = {s: (r.passed, r.bin, r.mode) for s, r in results.parts.items()}
        assert got == {
            "U1": (True, 1, "soft bin 1 GOOD"),
            "U2": (False, 7, "soft bin 7 IDDQ"),
            "U3": (True, 1, "soft bin 1 GOOD"),  # no valid flag: the soft bin's P/F
            "U4": (False, 3, "soft bin 3 VOH"),
        }
        assert (results.retested, results.unidentified, results.undetermined) == (1, 1, ["U5"])
        assert results.parts["U2"].hard_bin == 5
        assert results.parts["U2"].position.startswith("record 6 at byte ")
    packed = tmp_path / "r.stdf.gz"
    packed.write_bytes(gzip.compress(stdf(parts[:2], bins=BINS)))
    assert set(read_results(packed).parts) == {"U1", "U2"}


def cli(action: str, rig: str, target: str | None = None, **options: Any) -> argparse.Namespace:
    values = {"test_id": None, "kind": "custom", "dut": None, "reason": "", "results": None, "format": "auto"}
    values.update(options)
    return argparse.Namespace(config=None, action=action, rig=rig, readout_rig=target, **values)


async def test_readouts_hold_stress_import_results_and_censor_failures_between_readouts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = Rig(tmp_path, RIG, csv=DUTS_CSV)  # U1 (inline), U2 and U3 (the CSV)
    engine = rig.engine
    engine.start(T0)
    three = {"01": 45.0, "02": 45.0, "03": 45.0}
    for t in range(11):
        rig.poll(t, currents=three)
    server = ControlServer(rig.state_dir / "control.sock", engine.handle)
    await server.start()
    out = io.StringIO()

    async def command(*args: str, **options: Any) -> int:
        return await asyncio.to_thread(run_test, cli(*args, state_dir=rig.state_dir, **options), out)

    try:
        assert await command("readout", "start", "r1") == 0
        assert engine.in_readout
        assert engine.stress_state.reason == "readout"
        first_stress = engine.stress_state.stress_s
        # Empty sockets while the DUTs are at the ATE: no open, no stress.
        for t in range(11, 20):
            rig.poll(t, currents={"01": 0.0, "02": 0.0, "03": 0.0})
        assert engine.stress_state.stress_s == first_stress
        assert all(dut.status == "active" for dut in engine.duts.values())
        assert await command("pause", "r1") == 1  # not during a readout
        assert await command("readout", "end", "r1") == 2  # --results is required
        # U1 passes, U2 fails bin 7, U3 is missing, X9 is not in this rig.
        first = tmp_path / "168h.stdf"
        first.write_bytes(stdf([("U1", False, 1, 1), ("U2", True, 5, 7), ("X9", False, 1, 1)], bins=BINS))
        assert await command("readout", "end", "r1", results=first) == 0
        assert not engine.in_readout
        assert "1 passed, 1 failed, 1 new failures, 1 missing, 1 unknown" in out.getvalue()
        assert "missing: U3; not in this rig: X9" in out.getvalue()
        for t in range(20, 31):
            rig.poll(t, currents=three)
        # A second readout from a CSV: U1 fails now (bin 3), U3 passes; U2 failed already.
        assert await command("readout", "start", "r1") == 0
        second_stress = engine.stress_state.stress_s
        broken = tmp_path / "broken.csv"
        broken.write_text("serial,result,bin\nU1,fail,3\nU3,perhaps,1\n")
        assert await command("readout", "end", "r1", results=broken) == 1  # refused: nothing changes
        assert engine.in_readout
        assert engine.duts["U1"].status == "active"
        assert engine.status()["results_refused"] == 1
        assert "broken.csv: line 3, column result: 'perhaps' is neither pass nor fail" in capsys.readouterr().err
        good = tmp_path / "500h.csv"
        good.write_text("serial,result,bin,bin_name\nU1,fail,3,VOH\nU2,fail,7,\nU3,pass,1,\n")
        assert await command("readout", "end", "r1", results=good) == 0
        for t in range(40, 43):
            rig.poll(t, currents=three)
    finally:
        await server.close()
    engine.close(T0 + 43 * S)
    state = load_state(rig.state_dir, "r1")
    assert state is not None
    assert state.test is not None
    readouts = state.test.readouts
    assert [r["readout"] for r in readouts] == [1, 2]
    assert readouts[0]["results"]["format"] == "stdf"
    assert readouts[1]["results"]["file"] == "500h.csv"
    assert all(r["out_of_chamber_s"] > 0 for r in readouts)
    excluded = [e for e in state.stress.exclusions if e.reason == "readout"]
    assert len(excluded) == 2
    rows = {row.dut: row for row in life_table(state)}
    # U2: passed in situ, failed at readout 1: between the test start and readout 1, with its bin as the mode.
    assert (rows["U2"].status, rows["U2"].rule, rows["U2"].mode) == ("failed", "readout", "soft bin 7 IDDQ")
    assert (rows["U2"].last_good_h, rows["U2"].failed_h) == (0.0, round(first_stress / 3600, 6))
    # U1: passed readout 1, failed readout 2: between them.
    assert (rows["U1"].status, rows["U1"].mode, rows["U1"].readouts) == ("failed", "bin 3 VOH", 2)
    assert (rows["U1"].last_good_h, rows["U1"].failed_h) == (
        round(first_stress / 3600, 6),
        round(second_stress / 3600, 6),
    )
    assert (rows["U3"].status, rows["U3"].readouts, rows["U3"].readout_bin) == ("survived", 1, "1")
    assert rows["U3"].last_pass_readout_h == round(second_stress / 3600, 6)
    from edge_daq.cli.life import run_life

    listing = io.StringIO()
    life = argparse.Namespace(config=None, state_dir=rig.state_dir, rig="r1", output=tmp_path / "life.csv",
                              parquet=None, readouts=tmp_path / "readouts.csv")  # fmt: skip
    assert run_life(life, listing) == 0
    assert "5 readout results written to" in listing.getvalue()
    assert (tmp_path / "readouts.csv").read_text().splitlines()[
        0
    ] == "test_id,readout,dut,stress_h,result,bin,started,out_of_chamber_s"
    table = readout_rows(state)
    assert [(r["readout"], r["dut"], r["result"]) for r in table] == [
        (1, "U1", "pass"), (1, "U2", "fail"), (2, "U1", "fail"), (2, "U2", "fail"), (2, "U3", "pass")
    ]  # fmt: skip
    kinds = [e["event"] for e in read_journal(rig.state_dir, "r1")]
    assert kinds.count("readout_started") == kinds.count("readout_ended") == 2
    assert kinds.count("readout_result") == 6  # 3 DUTs at each readout, the missing one included
    failures = [e for e in read_journal(rig.state_dir, "r1") if e["event"] == "failure"]
    assert [(e["dut"], e["rule"], e["readout"]) for e in failures] == [("U2", "readout", 1), ("U1", "readout", 2)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            lambda: stdf([("U1", False, 1, 1)])[:79],
            "record 4 (type 5/20) at byte 69: declared length 22 runs past the end of the file (79 bytes)",
        ),
        (lambda: stdf([("U1", False, 1, 1)]) + b"\x01", "a truncated record header (1 bytes)"),
        (lambda: b"\x02\x00\x00\x0a\x02\x03" + b"\x00" * 10, "byte 5: STDF version 3; only STDF V4 is read"),
        (lambda: stdf([]), "no part results in the file"),
        (lambda: stdf([("UZZ9", False, 1, 1)]).replace(b"UZZ9", b"U\xe9\xe99"), "record at byte 69: cannot be decoded"),
        (lambda: b"serial,result\nU1,pass\nU2,maybe\n", "line 3, column result: 'maybe' is neither pass nor fail"),
        (lambda: b"serial,result,bin\nU1,pass,x7\n", "line 2, column bin: 'x7' is not a bin number"),
        (lambda: b"serial,result\nU1,pass\n\xff\xfe,fail\n", "line 3: not UTF-8 text"),
        (lambda: b"part,verdict\nU1,pass\n", "line 1: no serial column"),
        (lambda: b"serial,result\n,pass\n", "line 2, column serial: empty"),
        (lambda: b'serial,result\n"U1,pass\n', "line 2"),
        (lambda: b"", "line 1: empty file"),
        (lambda: b"\x1f\x8b\x08\x00garbage", "not a readable gzip file"),
    ],
)
def test_malformed_results_are_refused_with_their_position(tmp_path: Path, content: Any, message: str) -> None:
    path = tmp_path / "results.bin"
    path.write_bytes(content())
    with pytest.raises(ResultsError) as error:
        read_results(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_results_files_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ResultsError, match="not a regular file"):
        read_results(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ResultsError, match="not a regular file"):
        read_results(fifo)  # never opened: a FIFO would block the reader
    with pytest.raises(ResultsError, match="cannot read"):
        read_results(tmp_path / "absent.stdf")
    big = tmp_path / "big.csv"
    big.write_bytes(b"serial,result\n" + b"U1,pass\n" * 100)
    monkeypatch.setattr("edge_daq.reliability.results.MAX_CSV_BYTES", 500)
    with pytest.raises(ResultsError, match="at most 500 bytes"):
        read_results(big, format="csv")
    monkeypatch.setattr("edge_daq.reliability.results.MAX_PARTS", 3)
    many = tmp_path / "many.stdf"
    many.write_bytes(stdf([(f"U{k}", False, 1, 1) for k in range(5)]))
    with pytest.raises(ResultsError, match="more than 3 part results"):
        read_results(many)
    bomb = tmp_path / "bomb.stdf.gz"
    bomb.write_bytes(gzip.compress(b"\x00" * 4096))
    monkeypatch.setattr("edge_daq.reliability.results.MAX_STDF_BYTES", 1024)
    with pytest.raises(ResultsError, match="decompressed, more than 1024 bytes"):
        read_results(bomb)


async def test_a_readout_survives_a_restart_and_stress_stays_held(tmp_path: Path) -> None:
    rig = Rig(tmp_path, RIG, csv=DUTS_CSV)
    rig.engine.start(T0)
    for t in range(6):
        rig.poll(t)
    assert rig.engine.command({"command": "readout", "action": "start"}, T0 + 5 * S)["ok"]
    held = rig.engine.stress_state.stress_s
    rig.engine.close(T0 + 6 * S)
    rig.engine = rig.new_engine()
    rig.engine.start(T0 + 60 * S)  # down for 54 s in the middle of the readout
    for t in range(61, 65):
        rig.poll(t, currents={"01": 0.0, "03": 0.0})
    assert rig.engine.in_readout
    assert rig.engine.stress_state.reason == "readout"
    assert rig.engine.stress_state.stress_s == held
    results = tmp_path / "r.csv"
    results.write_text("serial;result;bin\nU1;pass;1\nU2;pass;1\nU3;fail;9\n")  # semicolons, as Excel writes them
    reply = rig.engine.handle({"command": "readout", "action": "end", "results": str(results)})
    assert not isinstance(reply, dict)
    answer = await reply
    assert answer["ok"], answer
    assert answer["summary"]["new_failures"] == 1
    assert rig.engine.duts["U3"].failure is not None
    assert rig.engine.duts["U3"].failure.mode == "bin 9"
    repeated = rig.engine.handle({"command": "readout", "action": "end", "results": str(results)})
    assert not isinstance(repeated, dict)
    assert "no readout is under way" in (await repeated)["error"]
    for t in range(65, 70):
        rig.poll(t)
    assert rig.engine.stress_state.stress_s > held
