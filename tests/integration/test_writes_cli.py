"""`edge-daq write` against a running daemon, as a technician types it: the F4 simulator's set point and an
independent Modbus server's register, each read back; refusals with their reasons; a caller without access to
the control socket; the write events in the rig's journal and in InfluxDB, with who and why."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from edge_daq.reliability.journal import read_journal
from simulators import serve
from simulators.watlow_f4 import REG_SP1, WatlowF4
from tests.integration.test_writes import pymodbus_server
from tests.servers import InfluxDBv1Server

EDGE_DAQ = [sys.executable, "-m", "edge_daq"]
RIG = "chamber-07"
NOBODY = 65534


def gateway_file(folder: Path, f4_port: int, other_port: int, influx_url: str) -> Path:
    rig = {
        "rig": RIG,
        "tags": {"test": "HTOL"},
        "instruments": [
            {"name": "chamber", "driver": "modbus-tcp", "host": "127.0.0.1", "port": f4_port, "interval": 0.2,
             "points": [{"name": "temp_pv", "address": 100, "type": "int16", "scale": 0.1},
                        {"name": "temp_sp", "address": 300, "type": "int16", "scale": 0.1,
                         "write": {"min": -70, "max": 180, "step": 0.5}}]},
            {"name": "other", "driver": "modbus-tcp", "host": "127.0.0.1", "port": other_port, "interval": 0.2,
             "points": [{"name": "sp", "address": 10, "type": "float32", "byte_order": "CDAB",
                         "write": {"min": 0, "max": 100}}]},
        ],
    }  # fmt: skip
    (folder / "rigs.d").mkdir()
    (folder / "rigs.d" / f"{RIG}.yaml").write_text(yaml.safe_dump(rig, sort_keys=False))
    outputs = {"influxdb": {"url": influx_url, "api": "v1", "database": "writes", "flush_interval": "100ms"}}
    gateway = folder / "gw.yaml"
    gateway.write_text(
        yaml.safe_dump({"gateway": "gw-w", "rigs": "rigs.d/", "state_dir": str(folder / "state"), "outputs": outputs})
    )
    return gateway


async def edge_daq(*args: str, **options: Any) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *EDGE_DAQ, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, **options
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_edge_daq_write_through_the_running_daemon(tmp_path: Path, influxdb_v1: InfluxDBv1Server) -> None:
    async with serve("watlow-f4", seed=3, time_scale=0) as sim, pymodbus_server() as other_port:
        f4 = sim.devices[1]
        assert isinstance(f4, WatlowF4)
        gateway = gateway_file(tmp_path, sim.port, other_port, influxdb_v1.url)
        socket = tmp_path / "state" / "control.sock"
        config = ("--state-dir", str(tmp_path / "state"))  # the CLI needs only the socket's folder
        with (tmp_path / "daemon.log").open("w") as log:
            daemon = await asyncio.create_subprocess_exec(
                *EDGE_DAQ, "run", "-c", str(gateway), stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL
            )
        try:
            async with asyncio.timeout(20):
                while not socket.exists():
                    assert daemon.returncode is None, (tmp_path / "daemon.log").read_text()
                    await asyncio.sleep(0.05)
            assert socket.stat().st_mode & 0o777 == 0o600

            write = ("write", RIG, "chamber", "temp_sp")
            async with asyncio.timeout(20):  # the links connect at their first poll
                while (result := await edge_daq(*write, "85", "--reason", "soak at 85", *config))[0] != 0:
                    assert "is not connected" in result[2], result
                    await asyncio.sleep(0.2)
            assert result == (0, "85.0\n", "")
            assert f4.register_values()[REG_SP1] == 850
            # An independent Modbus server (pymodbus), with the gateway file as a technician would pass it.
            assert await edge_daq("write", RIG, "other", "sp", "42.5", "-c", str(gateway)) == (0, "42.5\n", "")

            code, out, err = await edge_daq(*write, "500", *config)
            assert (code, out) == (1, "")
            assert "500 is outside the write limits -70..180" in err
            code, _, err = await edge_daq(*write, "85.2", *config)
            assert code == 1
            assert "step 0.5" in err
            code, _, err = await edge_daq("write", RIG, "chamber", "temp_pv", "20", *config)
            assert code == 1
            assert "not writable" in err
            code, _, err = await edge_daq("write", "nosuchrig", "chamber", "temp_sp", "20", *config)
            assert code == 1
            assert "unknown rig 'nosuchrig'" in err
            if os.geteuid() == 0:  # another user: the socket's mode 0600 keeps it out (socat: a client it can run)
                process = await asyncio.create_subprocess_exec(
                    "socat", "-", f"UNIX-CONNECT:{socket}", user=NOBODY, cwd="/",
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                line = b'{"command": "write", "rig": "%s", "instrument": "chamber", "point": "temp_sp", "value": 20}\n'
                out_bytes, err_bytes = await process.communicate(line % RIG.encode())
                assert process.returncode != 0
                assert out_bytes == b""
                assert b"Permission denied" in err_bytes
            assert f4.register_values()[REG_SP1] == 850  # none of the refused writes reached the simulator

            async with asyncio.timeout(15):
                while not (rows := await influx_events(influxdb_v1)) or len(rows) < 2:
                    await asyncio.sleep(0.2)
        finally:
            if daemon.returncode is None:
                daemon.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                await daemon.wait()
        assert daemon.returncode == 0, (tmp_path / "daemon.log").read_text()

    journal = [event for event in read_journal(tmp_path / "state", RIG) if event["event"].startswith("write_")]
    first = [event for event in journal if event.get("point") == "temp_sp" and event.get("new") == 85.0]
    assert [event["event"] for event in first] == ["write_requested", "write_done", "write_verified"]
    verified = first[-1]
    assert verified["who"].startswith("root (uid 0" if os.geteuid() == 0 else "")
    assert "uid" in verified["who"]
    assert (verified["why"], verified["old"], verified["readback"]) == ("soak at 85", 125.0, 85.0)
    refused = [event for event in journal if event["event"] == "write_refused"]
    assert len(refused) == 3  # the unknown rig has no journal: the log has it

    chamber = next(row for row in rows if row["point"] == "temp_sp")
    assert (chamber["why"], chamber["readback"], chamber["rig"], chamber["test"]) == ("soak at 85", 85.0, RIG, "HTOL")
    assert "uid" in chamber["who"]


async def influx_events(influx: InfluxDBv1Server) -> list[dict[str, Any]]:
    try:
        return await influx.select(
            "SELECT * FROM edge_daq_event WHERE \"event\" = 'write_verified' GROUP BY *", database="writes"
        )
    except Exception:  # the database does not exist before the first batch
        return []
