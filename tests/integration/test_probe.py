"""``edge-daq probe`` against the simulators: decoded tables, timings and the hints for the usual mistakes."""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import struct
from pathlib import Path

import pytest

from edge_daq.cli import probe as probe_cli
from edge_daq.cli.probe import _probe, add_arguments, format_registers
from simulators import create_line_server, create_rtu_server


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


async def probe(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = await _probe(parse(*argv), out)
    return code, out.getvalue()


def test_every_order_and_both_bases() -> None:
    high, low = struct.unpack(">HH", struct.pack(">f", 1.5))
    text = format_registers([low, high], start=100)
    assert "         100          101" in text
    cdab_row = next(line for line in text.splitlines() if "float32" in line)
    assert cdab_row.split()[3] == "1.5"  # columns: from, type, ABCD, CDAB, ...


async def test_probe_rtu_reads_and_hints(tmp_path: Path) -> None:
    link = tmp_path / "tty"
    async with create_rtu_server("watlow-f4", link=link, time_scale=0, units=[1]):
        code, text = await probe("--rtu", str(link), "--unit", "1", "--address", "0", "--count", "3")
        assert code == 0
        assert "5270" in text
        assert "1496" in text
        code, text = await probe("--rtu", str(link), "--unit", "7", "--timeout", "0.2")
        assert code == 1
        assert "no reply: check the unit id, the baud rate and parity" in text
        code, text = await probe("--rtu", str(link), "--address", "5000")
        assert code == 1
        assert "check address_base" in text
    code, text = await probe("--rtu", str(tmp_path / "gone"))
    assert code == 1
    assert "does not exist" in text


async def test_probe_scpi_shows_replies_with_timing() -> None:
    async with create_line_server("keithley-2400", tcp=("127.0.0.1", 0), time_scale=0) as server:
        code, text = await probe("--scpi-tcp", f"127.0.0.1:{server.port}", "-q", "*IDN?", "-q", ":SYST:ERR?")
        assert code == 0
        assert "KEITHLEY" in text
        assert " ms)" in text
        code, text = await probe("--scpi-tcp", f"127.0.0.1:{server.port}", "-q", ":OUTP ON", "--timeout", "0.2")
        assert code == 1
        assert "check the terminations" in text
    await asyncio.sleep(0)


def closed_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port: int = listener.getsockname()[1]
    return port  # closed again: a connection is refused


async def test_a_refused_connection_names_the_port_tried_and_the_host_port_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = closed_port()
    # Without a port, the option's default is tried (502 for --tcp: a closed free port stands in for it here).
    monkeypatch.setitem(probe_cli._DEFAULT_PORTS, "tcp", (port, "Modbus TCP"))
    code, text = await probe("--tcp", "127.0.0.1", "--address", "100")
    assert code == 1
    assert f"tried port {port}, the Modbus TCP default, as --tcp 127.0.0.1 gives no port" in text
    assert "write --tcp 127.0.0.1:PORT" in text
    code, text = await probe("--scpi-tcp", f"127.0.0.1:{port}", "-q", "*IDN?")
    assert code == 1
    assert f"tried port {port} of 127.0.0.1: check the host, the port (--scpi-tcp HOST:PORT)" in text


def test_host_and_port_forms() -> None:
    assert probe_cli._host_port("10.0.4.17", 502) == ("10.0.4.17", 502)
    assert probe_cli._host_port("10.0.4.17:1502", 502) == ("10.0.4.17", 1502)
    assert probe_cli._host_port("[::1]:1502", 502) == ("::1", 1502)
    assert probe_cli._host_port("[::1]", 502) == ("::1", 502)
    assert probe_cli._host_port("::1", 502) == ("::1", 502)
