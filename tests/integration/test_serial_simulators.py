"""The serial-side simulators: their command line over a real pseudo-terminal, dialogues and fault specs."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from edge_daq.config.loader import check_files
from simulators.espec_p300 import EspecP300
from simulators.keysight_daq970a import KeysightDaq970a, parse_channels
from simulators.modbus_server import Faults, ModelClock

REPO = Path(__file__).resolve().parents[2]


def test_new_fault_specs() -> None:
    faults = Faults.parse(["crc-error:2", "garbage", "no-answer:3"])
    assert faults.corrupts_crc(2)
    assert not faults.corrupts_crc(1)
    assert faults.describe() == ["no-answer:3", "crc-error:2", "garbage"]
    with pytest.raises(ValueError, match="fault"):
        Faults.parse(["garbage:1"])


def ask(device: EspecP300, command: str) -> str:
    reply = device.handle(command)
    assert reply is not None
    return reply


def test_espec_dialogue_and_errors() -> None:
    chamber = EspecP300(clock=ModelClock(0), temperature=60.0)
    assert ask(chamber, "TEMP?").split(",")[1:] == ["60.0", "100.0", "-10.0"]
    assert chamber.handle("TEMP, S85.0 H120.0") == "OK:TEMP, S85.0 H120.0"
    assert ask(chamber, "TEMP?").split(",")[1:3] == ["85.0", "120.0"]
    assert chamber.handle("TEMP, S400") == "NA:DATA OUT OF RANGE"
    assert chamber.handle("FOO?") == "NA:CMD ERR"
    assert chamber.handle("MODE, STANDBY") == "OK:MODE, STANDBY"
    assert ask(chamber, "MON?").endswith(",STANDBY,0")


def test_daq970a_scan_list_and_open_thermocouple() -> None:
    assert parse_channels("(@101:103,110)") == [101, 102, 103, 110]
    daq = KeysightDaq970a(clock=ModelClock(0), open_channels=(102,))
    daq.handle("CONF:TEMP TC,K,(@101:102)")
    daq.handle("FORM:READ:CHAN ON")
    reading = daq.handle("READ?")
    assert reading is not None
    values = reading.split(",")
    assert values[1::2] == ["101", "102"]
    assert float(values[2]) > 9e37
    assert daq.handle("SYST:ERR?") == '0,"No error"'
    daq.handle("ROUT:SCAN (@999)")
    assert (
        daq.handle(
            "SYST:ERR?",
        )
        == '-224,"Illegal parameter value"'
    )


def test_example_serial_lab_checks_clean() -> None:
    assert check_files([REPO / "config/examples/serial-lab.yaml"]) == []


async def test_cli_serves_rtu_on_a_pty_for_mbpoll(tmp_path: Path) -> None:
    if shutil.which("mbpoll") is None:
        pytest.fail("mbpoll is not installed (Debian package mbpoll)", pytrace=False)
    link = tmp_path / "ttyF4"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.cli", "watlow-f4", "--pty", str(link), "--units", "1,2",
        "--baudrate", "19200", "--parity", "E",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(20):
            line = (await process.stdout.readline()).decode()
        assert "Modbus RTU on pty" in line
        assert "19200 8E1" in line
        mbpoll = await asyncio.create_subprocess_exec(
            "mbpoll", "-m", "rtu", "-b", "19200", "-P", "even", "-a", "1", "-r", "1", "-c", "1", "-1", str(link),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(20):
            out, err = await mbpoll.communicate()
        assert "[1]: \t5270" in out.decode(), err.decode()
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await process.wait()
    assert process.returncode == 0
    assert not link.exists()
