"""Serial instruments through the whole daemon into a real InfluxDB.

Two Watlow F4 units on one Modbus RTU line and a Keithley 2400 on an RS-232 line (both pseudo-terminals
timed at their baud rates), and an Espec P300 chamber over its ASCII protocol on TCP, configured with the
shipped profiles exactly as a technician would.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from edge_daq.config.loader import load_config
from edge_daq.daemon import Daemon
from simulators import create_line_server, create_rtu_server
from tests.servers import InfluxDBv1Server

_database_names = itertools.count()


async def test_rtu_and_scpi_instruments_land_in_influxdb(influxdb_v1: InfluxDBv1Server, tmp_path: Path) -> None:
    database = f"serial_e2e_{next(_database_names)}"
    f4_line, smu_line = tmp_path / "ttyUSB0", tmp_path / "ttyUSB1"
    chambers = create_rtu_server("watlow-f4", link=f4_line, units=[1, 2], seed=1, time_scale=0, baudrate=19200)
    smu = create_line_server("keithley-2400", link=smu_line, baudrate=9600, seed=1, time_scale=0, voltage=3.3)
    espec = create_line_server("espec-p300", tcp=("127.0.0.1", 0), seed=1, time_scale=0)
    async with chambers, smu, espec:
        (tmp_path / "rigs.d").mkdir()
        (tmp_path / "rigs.d" / "tc.yaml").write_text(
            "rig: tc-e2e\ntags: {test: TC}\ninstruments:\n"
            f"  - {{name: chamber1, profile: watlow-f4, driver: modbus-rtu, port: {f4_line}, unit: 1,"
            " interval: 300ms, timeout: 300ms}\n"
            f"  - {{name: chamber2, profile: watlow-f4, driver: modbus-rtu, port: {f4_line}, unit: 2,"
            " interval: 300ms, timeout: 300ms}\n"
            f"  - {{name: smu, profile: keithley-2400, port: {smu_line}, baudrate: 9600, interval: 500ms}}\n"
            f"  - {{name: espec, profile: espec-p300, host: 127.0.0.1, port: {espec.port}, interval: 500ms}}\n"
        )
        gateway = tmp_path / "edge-daq.yaml"
        gateway.write_text(
            "gateway: gw-serial\n"
            f"outputs:\n  influxdb: {{url: {influxdb_v1.url}, api: v1, database: {database}, flush_interval: 100ms}}\n"
        )
        daemon = Daemon(load_config(gateway))
        stop = asyncio.Event()
        run = asyncio.create_task(daemon.run(stop))
        async with asyncio.timeout(20):
            while min(stats.records for stats in daemon.stats.instruments) < 3:
                await asyncio.sleep(0.1)
        stop.set()
        report = await asyncio.wait_for(run, 20)
    assert report.complete
    assert all(stats.failures == 0 for stats in daemon.stats.instruments), daemon.stats.instruments

    for chamber in ("chamber1", "chamber2"):
        rows = await influxdb_v1.select(f'SELECT * FROM "{chamber}"', database=database)
        assert len(rows) >= 3
        assert rows[-1]["model_code"] == 5270
        assert rows[-1]["temp_sp"] == 125.0
        assert rows[-1]["temp_pv"] == pytest.approx(23.0, abs=0.2)
        assert rows[-1]["rig"] == "tc-e2e"
        assert rows[-1]["test"] == "TC"

    smu_rows = await influxdb_v1.select('SELECT * FROM "smu"', database=database)
    assert smu_rows[-1]["v"] == pytest.approx(3.3)
    assert 0 < smu_rows[-1]["i"] < 0.105  # through the DUT, under the compliance
    assert smu_rows[-1]["scpi_errors"] == 0

    espec_rows = await influxdb_v1.select('SELECT * FROM "espec"', database=database)
    assert espec_rows[-1]["temp_pv"] == pytest.approx(23.0, abs=1.0)
    assert espec_rows[-1]["temp_sp"] == 85.0
    assert espec_rows[-1]["mode"] in {"OFF", "STANDBY", "CONSTANT", "RUN"}
    keys = await influxdb_v1.query('SHOW FIELD KEYS FROM "espec"', database=database)
    types = dict(keys["series"][0]["values"])
    assert types == {
        "temp_pv": "float",
        "temp_sp": "float",
        "temp_high": "float",
        "temp_low": "float",
        "humi_pv": "float",
        "humi_sp": "float",
        "mode": "string",
    }
