"""Recovery is prompt: delivery resumes within seconds of InfluxDB coming back, however long the backoff grew.

A real InfluxDB 1.x of the test's own is killed and restarted on the same port, or frozen with SIGSTOP (its
socket still accepts connections, nothing answers), while a real daemon polls a simulator into it. The delay
measured is from the moment InfluxDB is reachable again (its /ping answers, or SIGCONT) to the first batch it
acknowledged. Each test also checks that the backoff under way at that moment would have waited longer than
the target without the probe, so that it cannot pass by luck.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import yaml

import simulators
from edge_daq import delivery
from edge_daq.buffer.ring import RingBuffer
from edge_daq.config.loader import load_config
from edge_daq.daemon import Daemon
from edge_daq.delivery import OutputRunner
from edge_daq.record import Record, Series
from edge_daq.sinks.file import FileOutput, FileOutputConfig
from edge_daq.sinks.influxdb import InfluxDBOutput, InfluxDBOutputConfig
from edge_daq.sinks.mqtt import MqttOutput, MqttOutputConfig
from edge_daq.stats import OutputStats
from tests.servers import InfluxDBv1Server, MosquittoServer, VictoriaMetricsServer

SERIES = Series("m", {"rig": "rec", "instrument": "i"})
TARGET = 5.0  # seconds from "reachable again" to the first acknowledged write

Fault = Literal["kill", "sigstop"]


@pytest.fixture
def influxdb(tmp_path: Path) -> Iterator[InfluxDBv1Server]:
    """An InfluxDB of this test alone: it is killed and frozen."""
    with InfluxDBv1Server(tmp_path / "influxdb") as server:
        yield server


@dataclass
class BackoffLog:
    """Every backoff the runners chose: (loop time it began, seconds)."""

    waits: list[tuple[float, float]]

    def end_of_wait_under_way(self, at: float) -> float:
        """When the backoff under way at ``at`` would have ended without a probe (0 if none was under way)."""
        return max((began + delay for began, delay in self.waits if began <= at), default=0.0)


@pytest.fixture
def backoffs(monkeypatch: pytest.MonkeyPatch) -> BackoffLog:
    log = BackoffLog([])
    next_delay = delivery.Backoff.next_delay

    def logged(self: delivery.Backoff) -> float:
        delay = next_delay(self)
        log.waits.append((asyncio.get_running_loop().time(), delay))
        return delay

    monkeypatch.setattr(delivery.Backoff, "next_delay", logged)
    return log


def write_gateway(folder: Path, *, influx_url: str, sim_port: int, write_timeout: str) -> Path:
    rig = {
        "rig": "rec",
        "instruments": [
            {"name": "chamber", "profile": "watlow-f4", "host": "127.0.0.1", "port": sim_port, "interval": "100ms"}
        ],
    }
    (folder / "rigs.d").mkdir(exist_ok=True)
    (folder / "rigs.d" / "rec.yaml").write_text(yaml.safe_dump(rig))
    gateway = {
        "gateway": "gw-rec",
        "rigs": "rigs.d/",
        "buffer": {"spool_dir": str(folder / "spool")},
        # The default max_backoff (5 m): only the probe stands between a long outage and a long wait.
        "outputs": {
            "influxdb": {
                "url": influx_url,
                "api": "v1",
                "database": "recovery",
                "flush_interval": "100ms",
                "timeout": write_timeout,
            }
        },
        "log": {"level": "warning"},
    }
    path = folder / "edge-daq.yaml"
    path.write_text(yaml.safe_dump(gateway))
    return path


@contextlib.asynccontextmanager
async def running_daemon(folder: Path, influxdb: InfluxDBv1Server, *, write_timeout: str) -> AsyncIterator[Daemon]:
    async with simulators.serve("watlow-f4", seed=3) as sim:
        daemon = Daemon(
            load_config(write_gateway(folder, influx_url=influxdb.url, sim_port=sim.port, write_timeout=write_timeout))
        )
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        try:
            await asyncio.wait_for(daemon.running.wait(), 10)
            yield daemon
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)


async def until(condition: Callable[[], bool], within: float) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.01)


@dataclass(frozen=True)
class Recovery:
    outage: float  # seconds InfluxDB was unreachable
    delay: float  # seconds from reachable again to the first acknowledged write
    plain_wait: float  # seconds the backoff under way would still have waited, from reachable again


async def outage_and_recovery(
    daemon: Daemon, influxdb: InfluxDBv1Server, backoffs: BackoffLog, *, fault: Fault, outage: float, margin: float
) -> Recovery:
    """Take InfluxDB away for at least ``outage`` seconds, then until a backoff with at least ``margin`` seconds
    left is under way; bring it back and time the first acknowledged write."""
    loop = asyncio.get_running_loop()
    output = daemon.stats.outputs[0]
    await until(lambda: output.batches >= 3, within=20)
    went_away = loop.time()
    if fault == "kill":
        influxdb.send_signal(signal.SIGKILL)
        await asyncio.to_thread(influxdb.stop)  # reaps the killed process; the port is kept for the restart
    else:
        influxdb.send_signal(signal.SIGSTOP)
        await until(lambda: process_state(influxdb.pid) == "T", within=5)
    await asyncio.sleep(outage)
    await until(lambda: backoffs.end_of_wait_under_way(loop.time()) - loop.time() >= margin, within=600)
    batches = output.batches
    if fault == "kill":
        await asyncio.to_thread(influxdb.start)  # returns once /ping answers (it is polled every 50 ms)
    else:
        influxdb.send_signal(signal.SIGCONT)
    reachable = loop.time()
    await until(lambda: output.batches > batches, within=600)
    return Recovery(
        outage=reachable - went_away,
        delay=loop.time() - reachable,
        plain_wait=backoffs.end_of_wait_under_way(reachable) - reachable,
    )


# A write to a frozen server fails by its timeout: 1 s, so that the backoff grows about as fast as with a kill.
WRITE_TIMEOUT: dict[Fault, str] = {"kill": "10s", "sigstop": "1s"}


@pytest.mark.parametrize("fault", ["kill", "sigstop"])
async def test_short_outage_after_a_long_backoff_resumes_within_seconds(
    influxdb: InfluxDBv1Server, backoffs: BackoffLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: Fault
) -> None:
    # The first backoff of the outage is already 10-20 s: without the probe the write would wait that long.
    monkeypatch.setattr(delivery, "INITIAL_BACKOFF", 20.0)
    async with running_daemon(tmp_path, influxdb, write_timeout=WRITE_TIMEOUT[fault]) as daemon:
        recovery = await outage_and_recovery(daemon, influxdb, backoffs, fault=fault, outage=3.0, margin=TARGET + 3)
        output = daemon.stats.outputs[0]
        await until(lambda: output.pending_records == 0, within=30)  # and the backlog follows
    print(recovery)
    assert recovery.plain_wait > TARGET
    assert recovery.delay <= TARGET


@pytest.mark.slow
async def test_long_outage_with_the_default_backoff_resumes_within_seconds(
    influxdb: InfluxDBv1Server, backoffs: BackoffLog, tmp_path: Path
) -> None:
    # Killed for 20 s or more (the default backoff's ceiling is 8-16 s by then), until a backoff with 8 s or more
    # left is under way (SIGSTOP: the quick variant).
    async with running_daemon(tmp_path, influxdb, write_timeout=WRITE_TIMEOUT["kill"]) as daemon:
        recovery = await outage_and_recovery(daemon, influxdb, backoffs, fault="kill", outage=20.0, margin=TARGET + 3)
    print(recovery)
    assert recovery.plain_wait > TARGET
    assert recovery.delay <= TARGET


# --- the probe of each InfluxDB api, against real servers ------------------------------------------------------


def process_state(pid: int | None) -> str:
    """The state letter of a process in /proc (``T``: stopped)."""
    assert pid is not None
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def influx_output(url: str, api: str, **keys: object) -> InfluxDBOutput:
    if api == "v1":
        config = InfluxDBOutputConfig(url=url, api="v1", database="probe", timeout=1.0, **keys)  # type: ignore[arg-type]
    else:
        config = InfluxDBOutputConfig(url=url, api="v2", org="o", bucket="b", token="t", timeout=1.0, **keys)  # type: ignore[arg-type]
    return InfluxDBOutput(config)


async def test_influxdb_probe_tells_up_frozen_and_down(influxdb: InfluxDBv1Server) -> None:
    for api in ("v1", "v2"):  # the same /ping for both apis
        output = influx_output(influxdb.url, api)
        assert await output.probe() is True
    output = influx_output(influxdb.url, "v1")
    influxdb.send_signal(signal.SIGSTOP)
    try:
        await until(lambda: process_state(influxdb.pid) == "T", within=5)  # a signal is delivered, not at once
        started = time.monotonic()
        assert await output.probe() is False  # the socket accepts, nothing answers
        assert time.monotonic() - started < 1.5  # within the (1 s) timeout
    finally:
        influxdb.send_signal(signal.SIGCONT)
    assert await output.probe() is True
    influxdb.stop()
    assert await output.probe() is False  # nothing listens


async def test_influxdb_v2_probe_against_victoria_metrics(victoria_metrics: VictoriaMetricsServer) -> None:
    assert await influx_output(victoria_metrics.url, "v2").probe() is True


# --- MQTT: the probe is the reconnect; the file output: its folder can be written again -------------------------


async def test_mqtt_output_resumes_within_seconds_of_the_broker_restarting(
    mosquitto_private: MosquittoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "INITIAL_BACKOFF", 20.0)  # without the probe: a wait of 10-20 s
    broker = mosquitto_private
    config = MqttOutputConfig(port=broker.port, topic_prefix="recovery", timeout=1.0, flush_interval=0.05)
    output = MqttOutput(config, gateway="gw-rec")
    assert await output.probe() is True  # connects
    ring = RingBuffer(1000)
    stats = OutputStats(output.name)
    runner = OutputRunner(output, ring.reader(output.name), config, stats)
    task = asyncio.create_task(runner.run())
    try:
        ring.append(Record(SERIES, {"n": 0}, 1))
        await until(lambda: stats.delivered == 1, within=10)
        await asyncio.to_thread(broker.stop)
        ring.append(Record(SERIES, {"n": 1}, 2))
        await until(lambda: stats.failing_since is not None, within=10)
        assert await output.probe() is False
        await asyncio.sleep(2)
        await asyncio.to_thread(broker.start)  # returns once the port accepts
        reachable = time.monotonic()
        await until(lambda: stats.delivered == 2, within=30)
        delay = time.monotonic() - reachable
    finally:
        runner.begin_drain()
        await asyncio.wait_for(task, 10)
    print(f"mqtt: first write {delay:.2f} s after the broker was back")
    assert delay <= TARGET


async def test_file_probe_tells_whether_the_folder_can_be_written(tmp_path: Path) -> None:
    assert await FileOutput(FileOutputConfig(dir=tmp_path / "archive")).probe() is True
    (tmp_path / "not-a-folder").write_text("")
    assert await FileOutput(FileOutputConfig(dir=tmp_path / "not-a-folder" / "archive")).probe() is False
