"""Processing end to end against the real InfluxDB 1.6.7 and real Modbus simulators: computed points (per
channel, with a failure rule on one), report by exception, and aggregation across an outage and a SIGKILL.

Every expectation is computed from the raw output of the same run (every poll, into a database of its own),
with plain code written for the test, not with edge_daq.processing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import statistics
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from edge_daq.config.loader import load_config
from edge_daq.daemon import Daemon
from simulators import serve
from tests.servers import InfluxDBv1Server, free_port, wait_for_port

EDGE_DAQ = Path(sys.executable).with_name("edge-daq")
_databases = itertools.count()
SOCKETS = 4
POLL = 0.1
SECOND = 1_000_000_000


def _influx(url: str, database: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "influxdb",
        "url": url,
        "api": "v1",
        "database": database,
        "flush_interval": "100ms",
        "max_backoff": "300ms",
        "timeout": "2s",
        **extra,
    }


@contextlib.asynccontextmanager
async def running(gateway: Path) -> AsyncIterator[Daemon]:
    daemon = Daemon(load_config(gateway), drain_timeout=10)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await asyncio.wait_for(daemon.running.wait(), 5)
        yield daemon
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def until(condition: Any, within: float = 15.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.05)


async def rows_of(influxdb: InfluxDBv1Server, database: str, measurement: str) -> list[dict[str, Any]]:
    return await influxdb.select(f'SELECT * FROM "{measurement}" GROUP BY *', database=database)


# -- computed points and report by exception


BANDS = {"i": ("abs", 0.2), "p": ("rel", 0.01)}
DEFAULT_BAND = ("abs", 0.0015)
HEARTBEAT = 1.0


def expected_sent(rows: list[dict[str, Any]], fields: list[str]) -> set[tuple[str, int, str]]:
    """(socket, time, field) a deadband sends, from the raw rows of one measurement, by the plain rule."""
    sent: set[tuple[str, int, str]] = set()
    last: dict[tuple[str, str], tuple[Any, int]] = {}
    for row in sorted(rows, key=lambda row: int(row["time"])):
        socket, now = row.get("socket") or "", int(row["time"])
        for name in fields:
            value = row.get(name)
            if value is None:
                continue
            previous = last.get((socket, name))
            if previous is not None and now - previous[1] < HEARTBEAT * SECOND:
                if isinstance(value, bool | str):
                    if value == previous[0]:
                        continue
                else:
                    kind, band = BANDS.get(name, DEFAULT_BAND)
                    limit = band * abs(previous[0]) if kind == "rel" else band
                    if abs(value - previous[0]) <= limit:
                        continue
            last[(socket, name)] = (value, now)
            sent.add((socket, now, name))
    return sent


async def test_computed_points_per_channel_a_rule_on_one_and_a_deadband_output(
    influxdb_v1: InfluxDBv1Server, tmp_path: Path
) -> None:
    raw, reduced = f"proc_raw_{next(_databases)}", f"proc_db_{next(_databases)}"
    async with serve("burnin-board", seed=5, sockets=SOCKETS) as board:
        rig = {
            "rig": "htol-proc",
            "test": {"id": "T-PROC", "kind": "HTOL"},
            "duts": [{"socket": s, "serial": f"U{s:03d}"} for s in range(1, SOCKETS + 1)],
            "instruments": [
                {
                    "name": "board1",
                    "profile": "burnin-board",
                    "host": "127.0.0.1",
                    "port": board.port,
                    "interval": POLL,
                    "timeout": 0.5,
                    "measurement": "dut",
                    "channels": {
                        "count": SOCKETS,
                        "stride": 10,
                        "points": [
                            {"name": "v", "table": "holding", "address": 1000, "type": "uint16", "scale": 0.001},
                            {"name": "i", "table": "holding", "address": 1001, "type": "uint16", "scale": 0.1},
                            {"name": "oc", "table": "holding", "address": 1002, "type": "bool", "bit": 0},
                        ],
                    },
                    "computed": [
                        {"name": "p", "expr": "v * i / 1000", "unit": "W"},  # per socket
                        {"name": "headroom", "expr": "oc_limit - 50"},  # on the board's own record
                        {"name": "hot", "expr": "p > 0.14"},
                    ],
                }
            ],
            # A rule on a computed field: socket 1's power is over 0.1 W on every poll (3.3 V x ~45 mA).
            "failures": {"confirm": 2, "rules": [{"name": "overpower", "field": "p", "above": 0.1, "mode": "power"}]},
        }
        (tmp_path / "rigs.d").mkdir()
        (tmp_path / "rigs.d" / "rig.yaml").write_text(yaml.safe_dump(rig))
        deadband = {
            "abs": DEFAULT_BAND[1],
            "heartbeat": f"{HEARTBEAT}s",
            "fields": {k: {v[0]: v[1]} for k, v in BANDS.items()},
        }
        gateway = tmp_path / "edge-daq.yaml"
        gateway.write_text(
            yaml.safe_dump(
                {
                    "gateway": "gw-proc",
                    "rigs": "rigs.d/",
                    "state_dir": str(tmp_path / "state"),
                    "outputs": {
                        "raw": _influx(influxdb_v1.url, raw),
                        "reduced": _influx(influxdb_v1.url, reduced, deadband=deadband),
                    },
                    "log": {"level": "warning"},
                }
            )
        )
        async with running(gateway) as daemon:
            await until(lambda: daemon.ring.appended >= 30 * (SOCKETS + 1) + 30)
        stats = {output.output: output for output in daemon.stats.outputs}
    raw_rows = await rows_of(influxdb_v1, raw, "dut")
    per_socket = [row for row in raw_rows if row.get("socket")]
    assert len(per_socket) >= 30 * SOCKETS
    for row in per_socket:  # computed per channel from that channel's own readings
        assert row["p"] == row["v"] * row["i"] / 1000
        assert row["hot"] == (row["p"] > 0.14)
        assert row.get("headroom") is None
    board_rows = [row for row in raw_rows if not row.get("socket")]
    assert board_rows
    assert all(row["headroom"] == row["oc_limit"] - 50 for row in board_rows)
    events = await rows_of(influxdb_v1, raw, "edge_daq_event")
    failures = {row["dut"] for row in events if row.get("rule") == "overpower"}
    assert failures == {f"U{s:03d}" for s in range(1, SOCKETS + 1)}, events[:5]

    # The deadband output: exactly what the rule implies, value by value, judged on the raw rows.
    fields = ["v", "i", "oc", "p", "hot", "oc_limit", "board_temp", "bias_enable", "headroom"]
    reduced_rows = await rows_of(influxdb_v1, reduced, "dut")
    sent = {
        (row.get("socket") or "", int(row["time"]), name)
        for row in reduced_rows
        for name in fields
        if row.get(name) is not None
    }
    expected = expected_sent(raw_rows, fields)
    assert sent == expected
    raw_values = sum(1 for row in raw_rows for name in fields if row.get(name) is not None)
    print(f"\ndeadband: {len(sent)} of {raw_values} values sent ({100 * len(sent) / raw_values:.1f} %)")
    assert len(sent) < raw_values * 0.6  # the noise is filtered out
    # Events and status records always pass.
    assert len(await rows_of(influxdb_v1, reduced, "edge_daq_event")) == len(events)
    assert len(await rows_of(influxdb_v1, reduced, "edge_daq_status")) == len(
        await rows_of(influxdb_v1, raw, "edge_daq_status")
    )
    assert stats["reduced"].values_in > stats["reduced"].values_sent > 0


# -- aggregation across a database outage and a SIGKILL


AGG_FIELDS = ("temp_pv", "power_pct", "temp_sp", "mode")


def _run(gateway: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([str(EDGE_DAQ), "run", "-c", str(gateway)], stdout=out, stderr=subprocess.STDOUT)


async def test_aggregation_across_an_outage_and_a_sigkill_gives_every_window_once(
    influxdb_v1: InfluxDBv1Server, tmp_path: Path
) -> None:
    raw, cloud = f"agg_raw_{next(_databases)}", f"agg_cloud_{next(_databases)}"
    sim_port = free_port()
    sim = subprocess.Popen(  # noqa: ASYNC220 - starting a child is quick
        [str(EDGE_DAQ), "simulate", "watlow-f4", "--tcp", f"127.0.0.1:{sim_port}", "--seed", "3"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rig = {
        "rig": "htol-agg",
        "instruments": [
            {"name": "chamber", "profile": "watlow-f4", "host": "127.0.0.1", "port": sim_port, "unit": 1,
             "interval": "50ms", "timeout": "500ms", "measurement": "chamber"},
        ],
    }  # fmt: skip
    (tmp_path / "rigs.d").mkdir()
    (tmp_path / "rigs.d" / "rig.yaml").write_text(yaml.safe_dump(rig))
    aggregate = {"every": "1s", "grace": "300ms", "stats": ["mean", "min", "max", "count", "last"]}
    gateway = tmp_path / "edge-daq.yaml"
    gateway.write_text(
        yaml.safe_dump(
            {
                "gateway": "gw-agg",
                "rigs": "rigs.d/",
                "http": {"listen": f"127.0.0.1:{free_port()}"},
                "state_dir": str(tmp_path / "state"),
                "buffer": {"spool_dir": str(tmp_path / "spool"), "fsync_interval": "50ms"},
                "outputs": {
                    "raw": _influx(influxdb_v1.url, raw),
                    "cloud": _influx(influxdb_v1.url, cloud, aggregate=aggregate),
                },
                "log": {"level": "warning"},
            }
        )
    )
    log = tmp_path / "daemon.log"

    async def raw_records() -> int:
        if raw not in await influxdb_v1.databases():
            return 0
        rows = await influxdb_v1.select('SELECT count("temp_pv") FROM "chamber"', database=raw)
        return int(rows[0]["count"]) if rows else 0

    async def grown_by(count: int, within: float = 20.0) -> None:
        target = await raw_records() + count
        async with asyncio.timeout(within):
            while await raw_records() < target:
                await asyncio.sleep(0.1)

    try:
        await asyncio.to_thread(wait_for_port, sim_port)
        daemon = _run(gateway, log)
        await grown_by(40)  # 2 s of polls delivered
        await asyncio.to_thread(influxdb_v1.stop)  # an outage of both outputs, windows closing meanwhile
        await asyncio.sleep(2.0)
        await asyncio.to_thread(influxdb_v1.start)
        await grown_by(20)  # the backlog is being delivered...
        daemon.send_signal(signal.SIGKILL)  # ...when the daemon is killed
        await asyncio.to_thread(daemon.wait)
        daemon = _run(gateway, log)
        await grown_by(60)
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(daemon.wait, 30) == 0, log.read_text()[-3000:]
    finally:
        if not influxdb_v1.running:
            await asyncio.to_thread(influxdb_v1.start)
        sim.terminate()
        sim.wait()
    raw_rows = await rows_of(influxdb_v1, raw, "chamber")
    windows: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in raw_rows:
        time_ns = int(row["time"])
        windows[time_ns - time_ns % SECOND].append(row)
    cloud_rows = {int(row["time"]): row for row in await rows_of(influxdb_v1, cloud, "chamber")}
    assert len(windows) >= 8, log.read_text()[-3000:]
    # Every window of the raw data has exactly one aggregate, with the statistics of exactly the raw records in
    # it (none lost, none computed twice from part of its records), but those still open at the stop: within the
    # grace of the last record acquired.
    assert set(cloud_rows) <= set(windows)
    last = max(int(row["time"]) for row in raw_rows)
    still_open = {start for start in windows if start + SECOND + 300_000_000 > last}
    assert set(windows) - set(cloud_rows) <= still_open, sorted(set(windows) - set(cloud_rows))
    assert len(still_open) <= 2
    for start, rows in windows.items():
        if start not in cloud_rows:
            continue
        aggregate_row = cloud_rows[start]
        rows.sort(key=lambda row: int(row["time"]))
        for name in AGG_FIELDS:
            values = [float(row[name]) for row in rows]
            assert aggregate_row[f"{name}_count"] == len(values), (start, name)
            assert aggregate_row[f"{name}_mean"] == statistics.fmean(values) or abs(
                aggregate_row[f"{name}_mean"] - statistics.fmean(values)
            ) <= 1e-9 * max(1.0, abs(statistics.fmean(values)))
            assert aggregate_row[f"{name}_min"] == min(values)
            assert aggregate_row[f"{name}_max"] == max(values)
            assert aggregate_row[f"{name}_last"] == values[-1]
    raw_values = sum(len([k for k, v in row.items() if v is not None and k not in ("time",)]) for row in raw_rows)
    print(f"\naggregation: {len(cloud_rows)} windows from {len(raw_rows)} raw records ({raw_values} values)")


# -- the documented lab/cloud example on the HTOL example rig


EXAMPLES = Path(__file__).resolve().parents[2] / "config"
SCALE = 10  # the rig's intervals and the window, 10 times shorter: the same polls per window


async def test_lab_cloud_example_sends_under_5_percent_of_the_raw_values_to_the_cloud(
    influxdb_v1: InfluxDBv1Server, tmp_path: Path
) -> None:
    lab, cloud = f"lab_{next(_databases)}", f"cloud_{next(_databases)}"
    rig = yaml.safe_load((EXAMPLES / "rigs.d" / "htol-07.yaml").read_text())
    gateway = yaml.safe_load((EXAMPLES / "examples" / "lab-cloud.yaml").read_text())
    every = float(gateway["outputs"]["cloud"]["aggregate"]["every"].removesuffix("m")) * 60 / SCALE
    async with serve("watlow-f4", seed=1) as chamber, serve("burnin-board", seed=2) as board:
        ports = {"chamber": chamber.port, "board1": board.port}
        for instrument in rig["instruments"]:
            instrument["port"] = ports[instrument["name"]]
            instrument["interval"] = float(str(instrument["interval"]).removesuffix("s")) / SCALE
        (tmp_path / "rigs.d").mkdir()
        (tmp_path / "rigs.d" / "htol-07.yaml").write_text(yaml.safe_dump(rig))
        (tmp_path / "rigs.d" / "htol-07-duts.csv").write_text((EXAMPLES / "rigs.d" / "htol-07-duts.csv").read_text())
        gateway.update(rigs="rigs.d/", state_dir=str(tmp_path / "state"), http={"listen": f"127.0.0.1:{free_port()}"})
        gateway["buffer"]["spool_dir"] = str(tmp_path / "spool")
        gateway["log"] = {"level": "warning"}
        outputs = gateway["outputs"]
        outputs["lab"] = _influx(influxdb_v1.url, lab)
        aggregate = {**outputs["cloud"]["aggregate"], "every": every, "grace": 0.5}
        outputs["cloud"] = _influx(influxdb_v1.url, cloud, records=outputs["cloud"]["records"], aggregate=aggregate)
        (tmp_path / "edge-daq.yaml").write_text(yaml.safe_dump(gateway))

        async def windows() -> int:
            if cloud not in await influxdb_v1.databases():
                return 0
            return len(await influxdb_v1.select('SELECT "temp_pv_mean" FROM "chamber"', database=cloud))

        async with running(tmp_path / "edge-daq.yaml"):
            async with asyncio.timeout(30):  # the first window (a partial one), then a whole one
                while await windows() < 2:
                    await asyncio.sleep(0.2)
    every_ns = round(every * SECOND)
    cloud_values: dict[int, int] = defaultdict(int)
    lab_values: dict[int, int] = defaultdict(int)
    for database, counts in ((cloud, cloud_values), (lab, lab_values)):
        for measurement in ("chamber", "board1", "edge_daq_status"):
            result = await influxdb_v1.query(f'SELECT * FROM "{measurement}" GROUP BY *', database=database)
            for series in result.get("series", []):  # grouped by every tag: the columns are time and fields
                for row in series["values"]:
                    counts[row[0] - row[0] % every_ns] += sum(1 for value in row[1:] if value is not None)
    whole = sorted(cloud_values)[1:]  # the first window began before the daemon did
    assert whole, (cloud_values, lab_values)
    ratio = sum(cloud_values[w] for w in whole) / sum(lab_values[w] for w in whole)
    print(f"\nlab/cloud: the cloud got {100 * ratio:.2f} % of the raw values in {len(whole)} whole window(s)")
    assert ratio <= 0.05
