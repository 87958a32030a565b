"""/healthz, /metrics and /status served on a free loopback port, and `edge-daq status` reading them."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from edge_daq import __version__
from edge_daq.cli.status import (
    EXIT_HEALTHY,
    EXIT_UNHEALTHY,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    run_status,
    status_command,
    status_url,
)
from edge_daq.service.http import HealthCheck, HttpEndpoint
from edge_daq.service.metrics import PipelineView, build_registry
from edge_daq.stats import InstrumentStats, OutputStats, PipelineStats

NOW = 10_000.0  # the view's monotonic clock


@dataclass
class FakeRing:
    capacity: int = 1000
    dropped: int = 7
    records: int = 250
    bytes: int = 51_200

    def __len__(self) -> int:
        return self.records


def known_stats() -> PipelineStats:
    chamber = InstrumentStats(
        rig="htol-07", instrument="chamber", link="tcp 10.0.4.17:502", polls=120, failures=2, records=118, late=3
    )
    chamber.failed_points = 4
    chamber.skipped = 1
    chamber.last_success_monotonic = NOW - 1.5
    for latency in (0.004, 0.004, 0.03, 7.0):  # buckets le=0.005 (2), le=0.05 (1), le=10 (1)
        chamber.latency.observe(latency)
    chamber.lateness.observe(0.001)
    board = InstrumentStats(
        rig="htol-07", instrument="board", link="tcp 10.0.4.17:502", polls=40, failures=40, consecutive_failures=40
    )
    board.last_error = "no answer from unit 2"
    influx = OutputStats(output="influxdb", delivered=100, rejected=2, lost=5, retries=9, batches=4)
    influx.failing_since = NOW - 30.0
    influx.last_error = "connection refused"
    archive = OutputStats(output="file", delivered=118, batches=3)
    return PipelineStats(started_wall=1_700_000_000.0, instruments=[chamber, board], outputs=[influx, archive])


@pytest.fixture
def view() -> PipelineView:
    backlogs = {"influxdb": 160, "file": 0}
    ages = {"influxdb": 31.25, "file": None}
    return PipelineView(
        stats=known_stats(),
        ring=FakeRing(),
        backlog=backlogs.__getitem__,
        oldest_age=ages.__getitem__,
        gateway="gw-lab2-01",
        clock=lambda: NOW,
    )


class Running:
    def __init__(self) -> None:
        self.value = True

    def __call__(self) -> bool:
        return self.value


@pytest.fixture
def running() -> Running:
    return Running()


@pytest.fixture
async def endpoint(view: PipelineView, running: Running) -> AsyncIterator[HttpEndpoint]:
    health = HealthCheck(view, running=running, output_failing_limit=300.0)
    async with HttpEndpoint(
        listen="127.0.0.1:0", registry=build_registry(view), health=health, status=view.snapshot
    ) as served:
        yield served


async def get(endpoint: HttpEndpoint, path: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(endpoint.url + path) as response:
        return response.status, response.headers["Content-Type"], await response.text()


async def test_healthz(endpoint: HttpEndpoint, view: PipelineView, running: Running) -> None:
    async with aiohttp.ClientSession() as session:

        async def healthz() -> tuple[int, dict[str, Any]]:
            async with session.get(endpoint.url + "/healthz") as response:
                return response.status, await response.json()

        status, body = await healthz()
        assert (status, body["status"], body["reason"]) == (200, "ok", "1/2 instruments up")

        # influxdb has been failing for 30 s: buffered, still healthy; past the limit it is not.
        assert view.stats.outputs[0].failing_since is not None
        view.stats.outputs[0].failing_since -= 300.0
        status, body = await healthz()
        assert (status, body["status"]) == (503, "unhealthy")
        assert body["reason"] == "output influxdb failing for 330 s: connection refused"
        view.stats.outputs[0].failing_since = None

        view.stats.instruments[0].consecutive_failures = 1
        status, body = await healthz()
        assert (status, body["reason"]) == (503, "no instrument is up (0/2)")

        running.value = False
        status, body = await healthz()
        assert (status, body["reason"]) == (503, "the pipeline is not running")


async def test_healthz_while_starting_and_without_instruments(endpoint: HttpEndpoint, view: PipelineView) -> None:
    for instrument in view.stats.instruments:
        instrument.polls = instrument.consecutive_failures = 0
    view.stats.outputs[0].failing_since = None
    assert (await get(endpoint, "/healthz"))[0] == 200
    view.stats.instruments.clear()
    status, _, text = await get(endpoint, "/healthz")
    assert status == 200
    assert '"0/0 instruments up"' in text


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        sample: Sample
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


CHAMBER = (("instrument", "chamber"), ("link", "tcp 10.0.4.17:502"), ("rig", "htol-07"))
BOARD = (("instrument", "board"), ("link", "tcp 10.0.4.17:502"), ("rig", "htol-07"))
INFLUX = (("output", "influxdb"),)


def bucket(le: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((*CHAMBER, ("le", le))))


FILE = (("output", "file"),)


async def test_metrics(endpoint: HttpEndpoint) -> None:
    status, content_type, text = await get(endpoint, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    found = samples(text)
    expected = {
        ("edge_daq_build_info", (("version", __version__),)): 1.0,
        ("edge_daq_start_time_seconds", ()): 1_700_000_000.0,
        ("edge_daq_polls_total", CHAMBER): 120.0,
        ("edge_daq_polls_total", BOARD): 40.0,
        ("edge_daq_poll_failures_total", CHAMBER): 2.0,
        ("edge_daq_poll_failures_total", BOARD): 40.0,
        ("edge_daq_failed_points_total", CHAMBER): 4.0,
        ("edge_daq_records_total", CHAMBER): 118.0,
        ("edge_daq_records_total", BOARD): 0.0,
        ("edge_daq_late_cycles_total", CHAMBER): 3.0,
        ("edge_daq_skipped_cycles_total", CHAMBER): 1.0,
        ("edge_daq_up", CHAMBER): 1.0,
        ("edge_daq_up", BOARD): 0.0,
        ("edge_daq_consecutive_failures", BOARD): 40.0,
        ("edge_daq_poll_latency_seconds_bucket", bucket("0.001")): 0.0,
        ("edge_daq_poll_latency_seconds_bucket", bucket("0.005")): 2.0,
        ("edge_daq_poll_latency_seconds_bucket", bucket("0.02")): 2.0,
        ("edge_daq_poll_latency_seconds_bucket", bucket("0.05")): 3.0,
        ("edge_daq_poll_latency_seconds_bucket", bucket("5.0")): 3.0,
        ("edge_daq_poll_latency_seconds_bucket", bucket("10.0")): 4.0,
        ("edge_daq_poll_latency_seconds_bucket", bucket("+Inf")): 4.0,
        ("edge_daq_poll_latency_seconds_count", CHAMBER): 4.0,
        ("edge_daq_poll_latency_seconds_sum", CHAMBER): pytest.approx(7.038),
        ("edge_daq_schedule_lateness_seconds_bucket", bucket("0.001")): 1.0,
        ("edge_daq_schedule_lateness_seconds_count", CHAMBER): 1.0,
        ("edge_daq_poll_latency_seconds_count", BOARD): 0.0,
        ("edge_daq_records_delivered_total", INFLUX): 100.0,
        ("edge_daq_records_delivered_total", FILE): 118.0,
        ("edge_daq_records_rejected_total", INFLUX): 2.0,
        ("edge_daq_records_lost_total", (("output", "influxdb"), ("reason", "ring_full"))): 5.0,
        ("edge_daq_records_lost_total", (("output", "influxdb"), ("reason", "corrupt"))): 0.0,
        ("edge_daq_retries_total", INFLUX): 9.0,
        ("edge_daq_batches_delivered_total", FILE): 3.0,
        ("edge_daq_backlog_records", INFLUX): 160.0,
        ("edge_daq_backlog_records", FILE): 0.0,
        ("edge_daq_oldest_undelivered_age_seconds", INFLUX): 31.25,
        ("edge_daq_oldest_undelivered_age_seconds", FILE): 0.0,
        ("edge_daq_failing", INFLUX): 1.0,
        ("edge_daq_failing", FILE): 0.0,
        ("edge_daq_failing_seconds", INFLUX): 30.0,
        ("edge_daq_failing_seconds", FILE): 0.0,
        ("edge_daq_ring_records", ()): 250.0,
        ("edge_daq_ring_capacity", ()): 1000.0,
        ("edge_daq_ring_dropped_total", ()): 7.0,
    }
    assert {key: found.get(key) for key in expected} == expected
    # The process collector shares the registry; the global registry is not used.
    assert ("process_open_fds", ()) in found
    assert all(name.startswith(("edge_daq_", "process_", "python_")) for name, _ in found)


async def test_status_document(endpoint: HttpEndpoint) -> None:
    status, content_type, _ = await get(endpoint, "/status")
    assert (status, content_type) == (200, "application/json; charset=utf-8")
    async with aiohttp.ClientSession() as session, session.get(endpoint.url + "/status") as response:
        document = await response.json()
    assert document["gateway"] == "gw-lab2-01"
    assert document["started"] == "2023-11-14T22:13:20+00:00"
    assert document["health"] == {"healthy": True, "reason": "1/2 instruments up"}
    chamber, board = document["instruments"]
    assert (chamber["polls"], chamber["up"]) == (120, True)
    assert chamber["last_success_age_seconds"] == 1.5
    assert chamber["latency"]["counts"][:5] == [0, 0, 2, 0, 0]
    assert board["last_error"] == "no answer from unit 2"
    influx, archive = document["outputs"]
    assert (influx["backlog"], influx["oldest_age_seconds"]) == (160, 31.25)
    assert (influx["failing"], influx["failing_for_seconds"]) == (True, 30.0)
    assert (archive["failing"], archive["failing_since"]) == (False, None)
    assert document["ring"] == {"records": 250, "capacity": 1000, "bytes": 51_200, "dropped": 7}


async def test_edge_daq_status_prints_the_tables(endpoint: HttpEndpoint, running: Running) -> None:
    out = io.StringIO()
    assert await asyncio.to_thread(run_status, endpoint.url, out) == EXIT_HEALTHY
    text = out.getvalue()
    assert "gateway gw-lab2-01" in text
    assert "healthy: 1/2 instruments up" in text
    lines = text.splitlines()
    chamber = next(line for line in lines if "chamber" in line)
    # p99 of (4 ms, 4 ms, 30 ms, 7 s) lies in the le=10 bucket.
    assert cells(chamber) == ["htol-07", "chamber", "tcp 10.0.4.17:502", "up", "120", "2", "3", "1", "≤ 10 s", ""]
    board = next(line for line in lines if "board" in line)
    assert cells(board)[3] == "DOWN"
    assert cells(board)[-1] == "no answer from unit 2"
    influx = next(line for line in lines if "influxdb" in line)
    assert cells(influx)[:7] == ["influxdb", "100", "2", "5", "9", "160", "31s"]
    assert cells(influx)[7].endswith("(30s)")
    assert "Ring queue: 250 / 1,000 records (25.0 %), 7 dropped" in text

    running.value = False
    out = io.StringIO()
    assert await asyncio.to_thread(run_status, endpoint.url, out) == EXIT_UNHEALTHY
    assert "UNHEALTHY: the pipeline is not running" in out.getvalue()


def cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("│").split("│")]


def test_edge_daq_status_without_a_daemon() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = io.StringIO()
    assert run_status(f"http://127.0.0.1:{port}", out) == EXIT_UNREACHABLE
    assert f"cannot reach the daemon at http://127.0.0.1:{port}" in out.getvalue()


async def test_an_address_in_use_is_a_clear_error(endpoint: HttpEndpoint, view: PipelineView) -> None:
    second = HttpEndpoint(
        listen=f"127.0.0.1:{endpoint.port}", registry=build_registry(view), health=lambda: (True, ""), status=dict
    )
    with pytest.raises(OSError, match=rf"cannot listen on 127.0.0.1:{endpoint.port} .*another edge-daq running"):
        async with second:
            pass


def test_status_url(tmp_path: Path) -> None:
    assert status_url(url="http://gw-lab2-01:9108/") == "http://gw-lab2-01:9108"
    gateway = tmp_path / "edge-daq.yaml"
    gateway.write_text("gateway: gw\nhttp: {listen: '0.0.0.0:9200'}\n", encoding="utf-8")
    assert status_url(config=gateway) == "http://127.0.0.1:9200"
    gateway.write_text("gateway: gw\nhttp: {listen: '[::]:9108'}\n", encoding="utf-8")
    assert status_url(config=gateway) == "http://[::1]:9108"
    gateway.write_text("gateway: gw\n", encoding="utf-8")
    assert status_url(config=gateway) == "http://127.0.0.1:9108"


def test_edge_daq_status_with_an_unreadable_gateway_file(tmp_path: Path) -> None:
    out = io.StringIO()
    assert status_command(url=None, config=tmp_path / "missing.yaml", out=out) == EXIT_USAGE
    assert "cannot read http.listen from" in out.getvalue()
    broken = tmp_path / "broken.yaml"
    broken.write_text("http: {listen: nonsense}\n", encoding="utf-8")
    assert status_command(url=None, config=broken, out=io.StringIO()) == EXIT_USAGE


def test_process_metrics_do_not_need_proc_stat() -> None:
    """The unit's ProcSubset=pid hides /proc/stat, where prometheus-client reads the boot time."""
    from edge_daq.service.metrics import _ProcessCollector

    boot_time = _ProcessCollector(registry=None)._boot_time()
    with open("/proc/stat", encoding="ascii") as stat:
        btime = next(int(line.split()[1]) for line in stat if line.startswith("btime "))
    assert abs(boot_time - btime) < 2


async def test_supervised_components_in_healthz_status_and_metrics(view: PipelineView) -> None:
    from edge_daq.service.supervisor import Component

    view.stats.outputs[0].failing_since = None
    restarting = Component(name="output influxdb", kind="output", state="restarting", restarts=3)
    restarting.failing_since = time.monotonic() - 10
    restarting.last_error = "TypeError: boom (influxdb.py:1 in write)"
    stopped = Component(name="link tcp 10.0.4.9:502", kind="link", state="stopped", restarts=2)
    components = [Component(name="spool", kind="spool"), restarting, stopped]
    view.components = lambda: components
    health = HealthCheck(view, running=lambda: True, component_failing_limit=60.0)
    async with HttpEndpoint(
        listen="127.0.0.1:0", registry=build_registry(view, process=False), health=health, status=view.snapshot
    ) as served:
        status, _, body = await get(served, "/healthz")
        assert status == 200
        assert "restarting output influxdb failing for 10 s (3 restarts): TypeError: boom" in body
        _, _, text = await get(served, "/metrics")
        found = samples(text)
        _, _, document = await get(served, "/status")

        restarting.failing_since -= 60  # failing for longer than the limit
        status, _, body = await get(served, "/healthz")
        assert status == 503
        assert "component output influxdb failing for 70 s" in body
    spool = (("component", "spool"), ("kind", "spool"))
    output = (("component", "output influxdb"), ("kind", "output"))
    link = (("component", "link tcp 10.0.4.9:502"), ("kind", "link"))
    assert found[("edge_daq_component_restarts_total", output)] == 3.0
    assert found[("edge_daq_component_restarts_total", link)] == 2.0  # a stopped one keeps its counter
    assert found[("edge_daq_component_up", spool)] == 1.0
    assert found[("edge_daq_component_up", output)] == 0.0
    assert ("edge_daq_component_up", link) not in found
    assert found[("edge_daq_component_failing_seconds", output)] == pytest.approx(10, abs=1)
    listed = {component["component"]: component for component in json.loads(document)["components"]}
    assert set(listed) == {"spool", "output influxdb"}
    assert listed["output influxdb"]["failing"] is True
    assert listed["output influxdb"]["restarts"] == 3
    assert listed["spool"]["failing"] is False
