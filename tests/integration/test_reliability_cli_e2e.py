"""The operator's commands against a running daemon, as a technician types them: `edge-daq run` as a
subprocess polling a burn-in board simulator (in this process), then `edge-daq test start/pause/resume/stop`,
`edge-daq note`, `edge-daq test status`, and after the test `edge-daq life` and `edge-daq report`.

Each event must reach the rig's journal and the file output (as `edge_daq_event` lines). The board runs 3600
times faster than real time (a real second is an hour of stress) and has four DUTs fail by different modes.
"""

from __future__ import annotations

import asyncio
import csv
import json
import re
import signal
import sys
from pathlib import Path

import yaml

from edge_daq.reliability.control import request
from edge_daq.reliability.journal import read_journal
from simulators import serve
from simulators.burnin_board import REG_BIAS, BurnInBoard, Failure

EDGE_DAQ = [sys.executable, "-m", "edge_daq"]
RIG = "htol-cli"
SCALE = 3600.0
POLL = 0.1
SOCKETS = 8
FAILURES = [Failure(2, 1.0 * 3600, "open"), Failure(4, 1.4 * 3600, "short"), Failure(6, 1.8 * 3600, "latch"),
            Failure(8, 2.2 * 3600, "leak")]  # fmt: skip
RULE_OF_MODE = {"open": "open", "short": "over_current", "latch": "over_current", "leak": "drift"}


def gateway_file(folder: Path, board_port: int) -> Path:
    rig = {
        "rig": RIG,
        "duts": [{"socket": s, "serial": f"U{s:03d}", "lot": "L77", "wafer": "03", "board": "B1", "slot": s}
                 for s in range(1, SOCKETS + 1)],
        "instruments": [
            {"name": "board1", "profile": "burnin-board", "host": "127.0.0.1", "port": board_port,
             "interval": POLL, "timeout": 0.5,
             "points": [{"name": "bias_enable", "address": 20, "type": "uint16"}],
             "channels": {"count": SOCKETS, "stride": 10, "points": [
                 {"name": "i", "address": 1001, "type": "uint16", "scale": 0.1},
                 {"name": "oc", "address": 1002, "type": "bool", "bit": 0}]}},
        ],
        "stress": {"time_scale": SCALE, "all": [{"point": "board1.bias_enable", "equals": 1, "reason": "bias off"}]},
        "failures": {
            "confirm": 2,
            "rules": [
                {"name": "over_current", "field": "oc", "equals": True, "mode": "short or latch-up"},
                {"name": "open", "field": "i", "below": 1.0, "mode": "open"},
                {"name": "drift", "field": "i", "drift": 0.10, "mode": "leakage"},
            ],
        },
    }  # fmt: skip
    (folder / "rigs.d").mkdir()
    (folder / "rigs.d" / f"{RIG}.yaml").write_text(yaml.safe_dump(rig, sort_keys=False))
    gateway = folder / "gw.yaml"
    outputs = {"file": {"dir": str(folder / "archive"), "flush_interval": "100ms"}}
    gateway.write_text(
        yaml.safe_dump({"gateway": "gw-cli", "rigs": "rigs.d/", "state_dir": str(folder / "state"), "outputs": outputs})
    )
    return gateway


async def edge_daq(*args: str) -> tuple[int, str, str]:
    """Run one `edge-daq` command to its end: exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        *EDGE_DAQ, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def event_lines(archive: Path) -> list[str]:
    return [
        line for path in sorted(archive.glob("*.lp")) for line in path.read_text().splitlines()
        if line.startswith("edge_daq_event,")
    ]  # fmt: skip


async def test_operator_commands_against_a_running_daemon(tmp_path: Path) -> None:
    async with serve("burnin-board", seed=5, time_scale=SCALE, sockets=SOCKETS, bias=False, failures=FAILURES) as sim:
        board = sim.devices[1]
        assert isinstance(board, BurnInBoard)
        gateway = gateway_file(tmp_path, sim.port)
        config = ("-c", str(gateway))
        socket = tmp_path / "state" / "control.sock"
        with (tmp_path / "daemon.log").open("w") as log:
            daemon = await asyncio.create_subprocess_exec(
                *EDGE_DAQ, "run", *config, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL
            )
        try:
            async with asyncio.timeout(20):
                while not socket.exists():
                    assert daemon.returncode is None, (tmp_path / "daemon.log").read_text()
                    await asyncio.sleep(0.05)

            # Nothing to pause before a test starts: an error on stderr and exit code 1.
            assert await edge_daq("test", "pause", RIG, *config) == (1, "", "edge-daq: no test is running\n")
            assert (await edge_daq("test", "start", "nosuchrig", "--id", "T1", *config))[0] == 1
            code, out, err = await edge_daq("test", "start", RIG, "--id", "T1", "--kind", "HTOL", *config)
            assert (code, out, err) == (0, "test T1 running\n", "")
            # Right after the start (bias off: no stress time yet) the report says so and exits 0.
            code, out, err = await edge_daq("report", RIG, *config, "--plot", str(tmp_path / "early.png"))
            assert (code, err) == (0, ""), err
            assert "no device-hours yet" in out, out
            code, _, err = await edge_daq("test", "start", RIG, "--id", "T2", *config)
            assert (code, err) == (1, "edge-daq: test T1 is already running: stop it first\n")
            assert await edge_daq("test", "pause", RIG, *config) == (0, "test T1 paused\n", "")
            assert await edge_daq("note", RIG, "board 3 reseated", *config) == (0, "note recorded\n", "")
            assert await edge_daq("test", "resume", RIG, *config) == (0, "test T1 running\n", "")

            board.apply_write(REG_BIAS, 1)  # the board ages from here on, as stress time accrues
            async with asyncio.timeout(15):
                while (await request(socket, {"rig": RIG, "command": "status"}))["status"]["duts"].get("failed") != 4:
                    await asyncio.sleep(0.1)
            code, out, err = await edge_daq("test", "status", RIG, *config)
            assert (code, err) == (0, "")
            status = json.loads(out)
            assert (status["test"]["id"], status["test"]["kind"], status["test"]["state"]) == ("T1", "HTOL", "running")
            assert status["duts"] == {"active": 4, "failed": 4}
            assert status["stress_h"] > 2.2
            assert await edge_daq("test", "stop", RIG, *config) == (0, "test T1 stopped\n", "")
            assert (await edge_daq("test", "stop", RIG, *config))[0] == 1
        finally:
            if daemon.returncode is None:
                daemon.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                await daemon.wait()
        assert daemon.returncode == 0, (tmp_path / "daemon.log").read_text()

    # Every event is in the journal, in order, and in the file output as an edge_daq_event line.
    journal = list(read_journal(tmp_path / "state", RIG))
    lifecycle = [e["event"] for e in journal if e["event"] in ("test_started", "test_paused", "note", "test_resumed",
                                                              "test_stopped")]  # fmt: skip
    assert lifecycle == ["test_started", "test_paused", "note", "test_resumed", "test_stopped"]
    note = next(e for e in journal if e["event"] == "note")
    assert (note["message"], note["test_id"], note["rig"]) == ("board 3 reseated", "T1", RIG)
    failures = {e["dut"]: e for e in journal if e["event"] == "failure"}
    assert set(failures) == {f"U{f.socket:03d}" for f in FAILURES}
    for failure in FAILURES:
        event = failures[f"U{failure.socket:03d}"]
        assert (event["rule"], event["lot"], event["socket"]) == (RULE_OF_MODE[failure.mode], "L77", failure.socket)
    lines = event_lines(tmp_path / "archive")
    kinds = [kind for line in lines for kind in re.findall(r",event=(\w+)[, ]", line)]
    for event in journal:
        assert event["event"] in kinds, (event, kinds)
    assert len(kinds) == len(journal)
    (note_line,) = (line for line in lines if ",event=note" in line)
    assert 'message="board 3 reseated"' in note_line
    assert ",rig=htol-cli" in note_line
    assert 'test_id="T1"' in note_line
    assert sum(",event=failure," in line and ",dut=U00" in line for line in lines) == 4

    # The life table and the Weibull report, from the state the daemon left (no daemon needed).
    life = tmp_path / "life.csv"
    code, out, err = await edge_daq("life", RIG, *config, "-o", str(life))
    assert (code, err) == (0, "")
    assert out == f"8 DUTs (4 failed, 4 survived, 0 removed) written to {life}\n"
    with life.open(newline="") as stream:
        rows = {row["dut"]: row for row in csv.DictReader(stream)}
    assert len(rows) == SOCKETS
    for socket_number in range(1, SOCKETS + 1):
        row = rows[f"U{socket_number:03d}"]
        injected = next((f for f in FAILURES if f.socket == socket_number), None)
        assert (row["test_id"], row["test_kind"], row["lot"], row["slot"]) == ("T1", "HTOL", "L77", str(socket_number))
        if injected is None:
            assert (row["status"], row["failed_h"]) == ("survived", "")
            assert float(row["censored_h"]) > 2.2
        else:
            assert (row["status"], row["rule"]) == ("failed", RULE_OF_MODE[injected.mode])
            assert float(row["last_good_h"]) < float(row["failed_h"]) <= float(row["detected_h"])
            # The engine sees bias on (and the failure) at the next poll: within two polls of the board's clock.
            assert abs(float(row["failed_h"]) - injected.at_stress_s / 3600) <= 2 * POLL * SCALE / 3600, row
    plot = tmp_path / "weibull.png"
    code, out, err = await edge_daq("report", RIG, *config, "--plot", str(plot))
    assert (code, err) == (0, ""), err
    assert out.startswith("rig htol-cli, test T1 (HTOL): 8 DUTs, 4 failed, ")
    assert "failure rate at 60% confidence (chi-squared): " in out
    assert "failure rate at 90% confidence (chi-squared): " in out
    assert "Weibull (MLE, interval/right-censored): beta = " in out
    assert out.endswith(f"probability plot written to {plot}\n")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
