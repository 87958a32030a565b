"""Named, routed outputs end to end (issue 14's done-when), against real servers and real simulators.

Two rigs of Modbus simulators on real ports; the gateway has four outputs, each with its own routing:

- ``lab``: InfluxDB 1.x (``api: v1``), all data and nothing else;
- ``customer``: VictoriaMetrics (``api: v2``), only rig htol-07;
- ``mes``: Mosquitto, only events and status;
- ``archive``: line-protocol files, only rig htol-08.

Each destination is queried for exactly what its routing says. Then VictoriaMetrics stops for a while: the
others keep delivering, only its backlog grows (read from /status), and once it is back it catches up.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from edge_daq.config.loader import load_config
from edge_daq.daemon import Daemon
from edge_daq.service.metrics import PipelineView
from simulators.modbus_server import ModbusTcpServer, RegisterMapDevice
from tests.servers import InfluxDBv1Server, MosquittoServer, VictoriaMetricsServer

RIGS = ("htol-07", "htol-08")


class Chamber(RegisterMapDevice):
    highest_address = 1

    def __init__(self, temp: int) -> None:
        self.temp = temp

    def register_values(self) -> Mapping[int, int]:
        return {0: self.temp, 1: 0}


def write_files(folder: Path, ports: dict[str, int], outputs: dict[str, Any]) -> Path:
    (folder / "rigs.d").mkdir()
    for rig, port in ports.items():
        instrument = {
            "name": "chamber",
            "driver": "modbus-tcp",
            "host": "127.0.0.1",
            "port": port,
            "interval": "100ms",
            "timeout": "300ms",
            "points": [{"name": "temp", "address": 0, "type": "int16", "scale": 0.1}],
        }
        (folder / "rigs.d" / f"{rig}.yaml").write_text(yaml.safe_dump({"rig": rig, "instruments": [instrument]}))
    gateway = {
        "gateway": "gw-e2e",
        "rigs": "rigs.d/",
        "buffer": {"spool_dir": str(folder / "spool"), "fsync_interval": "20ms"},
        "outputs": outputs,
    }
    path = folder / "edge-daq.yaml"
    path.write_text(yaml.safe_dump(gateway, sort_keys=False))
    return path


async def collect(port: int, topic: str, inbox: list[aiomqtt.Message], ready: asyncio.Event) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(topic, qos=1)
        ready.set()
        async for message in client.messages:
            inbox.append(message)


def outputs_status(view: PipelineView) -> dict[str, dict[str, Any]]:
    return {entry["output"]: entry for entry in view.snapshot()["outputs"]}


def records_of(daemon: Daemon) -> dict[str, int]:
    return {stats.rig: stats.records for stats in daemon.stats.instruments}


async def until(condition: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.05)


async def test_four_routed_outputs_deliver_what_their_routing_says_and_one_outage_stays_its_own(
    influxdb_v1: InfluxDBv1Server, mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    database = f"e2e_routed_{uuid.uuid4().hex[:8]}"
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    fast = {"flush_interval": "100ms", "max_backoff": "1s"}
    with VictoriaMetricsServer(tmp_path / "vm") as vm:
        async with ModbusTcpServer({1: Chamber(215)}) as sim_07, ModbusTcpServer({1: Chamber(850)}) as sim_08:
            outputs = {
                "lab": {"type": "influxdb", "url": influxdb_v1.url, "api": "v1", "database": database}
                | {"records": ["data"], **fast},
                "customer": {"type": "influxdb", "url": vm.url, "api": "v2", "org": "c", "bucket": "b", "token": "t"}
                | {"include": {"rig": ["htol-07"]}, "timeout": "2s", **fast},
                "mes": {"type": "mqtt", "port": mosquitto.port, "topic_prefix": prefix}
                | {"records": ["events", "status"], **fast},
                "archive": {"type": "file", "dir": str(tmp_path / "archive"), "include": {"rig": "htol-08"}, **fast},
            }
            config = load_config(write_files(tmp_path, {"htol-07": sim_07.port, "htol-08": sim_08.port}, outputs))
            daemon = Daemon(config, drain_timeout=15)
            view = PipelineView(
                stats=daemon.stats,
                backlog=daemon.backlog,
                oldest_age=daemon.oldest_age,
                output_details=daemon.output_details,
            )
            inbox: list[aiomqtt.Message] = []
            ready = asyncio.Event()
            subscriber = asyncio.create_task(collect(mosquitto.port, f"{prefix}/#", inbox, ready))
            await asyncio.wait_for(ready.wait(), 5)
            stop = asyncio.Event()
            run = asyncio.create_task(daemon.run(stop))
            try:
                await until(lambda: min(records_of(daemon).values(), default=0) >= 5, 10, "five polls per rig")
                await daemon.reload(config)  # one config_change event, for the event routing
                status = outputs_status(view)
                assert {name: entry["type"] for name, entry in status.items()} == {
                    "lab": "influxdb",
                    "customer": "influxdb",
                    "mes": "mqtt",
                    "archive": "file",
                }
                assert status["customer"]["target"] == vm.url
                assert status["mes"]["routing"] == {"records": ["events", "status"]}

                # VictoriaMetrics goes away: only its own backlog grows, the others keep delivering.
                await until(lambda: outputs_status(view)["customer"]["backlog"] == 0, 10, "customer caught up")
                await asyncio.to_thread(vm.stop)
                delivered_before = {name: entry["delivered"] for name, entry in outputs_status(view).items()}
                polled_before = records_of(daemon)
                await asyncio.sleep(3)
                during = outputs_status(view)
                polled_during = {rig: count - polled_before[rig] for rig, count in records_of(daemon).items()}
                assert during["customer"]["failing"]
                assert during["customer"]["backlog"] >= 20  # 3 s of htol-07 at 10 polls per second, at least
                # ... and only htol-07's: not the htol-08 records written meanwhile, which it will not take.
                assert during["customer"]["backlog"] <= polled_during["htol-07"] + 5, (during, polled_during)
                assert polled_during["htol-08"] >= 20
                for name in ("lab", "archive"):
                    assert not during[name]["failing"], name
                    assert during[name]["delivered"] > delivered_before[name] + 20, name
                    assert during[name]["backlog"] < 20, (name, during)
                assert not during["mes"]["failing"]
                assert during["mes"]["backlog"] < 20
                await asyncio.to_thread(vm.start)  # same port: the output's probe sees it back
                await until(lambda: outputs_status(view)["customer"]["backlog"] == 0, 20, "customer caught up again")
                assert not outputs_status(view)["customer"]["failing"]
            finally:
                stop.set()
                report = await asyncio.wait_for(run, 30)
                subscriber.cancel()
                await asyncio.gather(subscriber, return_exceptions=True)
            assert report.complete, report.undelivered
        polled = records_of(daemon)

        # lab: every data record of both rigs, and no status or event.
        rows = await influxdb_v1.select('SELECT * FROM "chamber"', database=database)
        assert {rig: sum(1 for row in rows if row["rig"] == rig) for rig in RIGS} == polled
        measurements = await influxdb_v1.query("SHOW MEASUREMENTS", database=database)
        assert measurements["series"][0]["values"] == [["chamber"]]

        # customer: htol-07 only, every record of it, outage included.
        exported = await vm.export('{__name__="chamber_temp"}', min_samples=polled["htol-07"])
        assert [item["metric"]["rig"] for item in exported] == ["htol-07"]
        assert len(exported[0]["values"]) == polled["htol-07"]
        assert set(exported[0]["values"]) == {21.5}
        statuses = await vm.export('{__name__=~"edge_daq_.*"}', min_samples=1)  # the rig's status records go too
        assert {item["metric"]["rig"] for item in statuses} == {"htol-07"}

    # mes: only events and status.
    messages = [json.loads(message.payload) for message in inbox if isinstance(message.payload, bytes)]
    kinds = {message.get("measurement") for message in messages if "measurement" in message}
    assert kinds == {"edge_daq_status", "edge_daq_event"}
    events = [m for m in messages if m.get("measurement") == "edge_daq_event"]
    assert [event["fields"]["kind"] for event in events] == ["config_change"]

    # archive: htol-08 only: its data and status records, and not the gateway's event (it has no rig).
    lines = "".join(path.read_text() for path in sorted((tmp_path / "archive").glob("*.lp"))).splitlines()
    assert lines
    assert all(",rig=htol-08" in line for line in lines)
    assert sum(1 for line in lines if line.startswith("chamber,")) == polled["htol-08"]
    statuses_08 = [m for m in messages if m.get("measurement") == "edge_daq_status" and m["tags"]["rig"] == "htol-08"]
    assert sum(1 for line in lines if line.startswith("edge_daq_status,")) == len(statuses_08)


pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
