"""Hostile instruments against the real daemon (issue 13): a SCPI server that sends 10 MB without a terminator
at every query, one that streams without end, one whose 40 KB line meets the README's regex, all on one
daemon next to a well-behaved Modbus simulator. The daemon's RSS must stay within 20 MB of its level before the
hostility, the well-behaved instrument must keep at least 95 % of its rate, and the links' counters must reach
/metrics. Also: ``points_failed`` is logged once per episode, not at every poll."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from edge_daq.drivers.scpi.config import ScpiTcpConfig
from edge_daq.drivers.scpi.driver import TCP_PLUGIN, ScpiInstrument
from edge_daq.record import Record
from edge_daq.scheduling import LinkScheduler, RecordBuilder, ScheduledInstrument
from edge_daq.stats import InstrumentStats
from simulators import serve
from tests.hostile_servers import line_server, stream_forever
from tests.servers import free_port

GOOD_INTERVAL = 0.1
README_REGEX = "(?P<pv>[^,]+),(?P<sp>[^,]+)"


class Hostility:
    """Flipped by the test: until then the hostile servers answer like instruments."""

    def __init__(self) -> None:
        self.active = False

    async def flood(self, line: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"7" * 10_000_000 if self.active else b"1.5\n")

    async def stream(self, line: bytes, writer: asyncio.StreamWriter) -> None:
        if self.active:
            await stream_forever(writer, b"7" * 65536)
        writer.write(b"1.5\n")

    async def long_line(self, line: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"x" * 40_000 + b"\n" if self.active else b"1,2\n")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with session.get(url) as response:
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def good_timestamps(archive: Path) -> list[int]:
    stamps = [
        int(line.rsplit(" ", 1)[1])
        for path in sorted(archive.glob("*.lp"))
        for line in path.read_text().splitlines()
        if line.startswith("good,")
    ]
    return sorted(stamps)


def write_config(tmp_path: Path, *, good: int, flood: int, stream: int, long_line: int, http_port: int) -> Path:
    rigs = tmp_path / "rigs.d"
    rigs.mkdir()
    scpi = "driver: scpi-tcp, host: 127.0.0.1, interval: 200ms, timeout: 1s"
    (rigs / "hostile.yaml").write_text(
        "rig: hostile\ninstruments:\n"
        f"  - {{name: good, profile: watlow-f4, host: 127.0.0.1, port: {good}, interval: {GOOD_INTERVAL}}}\n"
        f"  - {{name: flood, {scpi}, port: {flood}, points: [{{name: v, query: 'V?'}}]}}\n"
        f"  - {{name: stream, {scpi}, port: {stream}, points: [{{name: v, query: 'V?'}}]}}\n"
        f"  - {{name: long_line, {scpi}, port: {long_line}, points: [{{query: 'TEMP?', regex: '{README_REGEX}'}}]}}\n"
    )
    gateway = tmp_path / "edge-daq.yaml"
    gateway.write_text(
        f"gateway: gw-hostile\nhttp: {{listen: '127.0.0.1:{http_port}'}}\n"
        f"outputs:\n  file: {{dir: {tmp_path / 'archive'}, flush_interval: 200ms}}\n"
    )
    return gateway


async def test_hostile_scpi_servers_leave_memory_and_the_other_instruments_alone(tmp_path: Path) -> None:
    hostility = Hostility()
    http_port = free_port()
    metrics_url = f"http://127.0.0.1:{http_port}/metrics"
    async with (
        serve("watlow-f4", seed=2) as chamber,
        line_server(hostility.flood) as flood,
        line_server(hostility.stream) as stream,
        line_server(hostility.long_line) as long_line,
        aiohttp.ClientSession() as session,
    ):
        gateway = write_config(
            tmp_path, good=chamber.port, flood=flood, stream=stream, long_line=long_line, http_port=http_port
        )
        with (tmp_path / "daemon.log").open("wb") as log:
            daemon = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edge_daq", "run", "-c", str(gateway), "--log-json",
                stdout=asyncio.subprocess.DEVNULL, stderr=log,
                env={key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"},
            )  # fmt: skip
        try:
            async with asyncio.timeout(30):
                while True:
                    await asyncio.sleep(0.2)
                    try:
                        metrics = await scrape(session, metrics_url)
                    except aiohttp.ClientError:
                        continue
                    if any(name == "edge_daq_records_total" and ("instrument", "long_line") in labels
                           and value > 3 for (name, labels), value in metrics.items()):  # fmt: skip
                        break
            await asyncio.sleep(1.0)  # settled: every link connected, the first records written
            baseline = 0
            for _ in range(10):
                baseline = max(baseline, rss_bytes(daemon.pid))
                await asyncio.sleep(0.1)

            hostility.active = True
            hostile_from = time.time_ns()
            peak = baseline
            healthz: list[float] = []
            deadline = time.monotonic() + 8.0
            while time.monotonic() < deadline:
                peak = max(peak, rss_bytes(daemon.pid))
                if len(healthz) < 4 * (8.0 - (deadline - time.monotonic())):  # about four a second
                    asked = time.monotonic()
                    async with session.get(f"http://127.0.0.1:{http_port}/healthz") as response:
                        await response.read()
                    healthz.append(time.monotonic() - asked)
                await asyncio.sleep(0.05)
            hostile_until = time.time_ns()
            metrics = await scrape(session, metrics_url)
            async with session.get(f"http://127.0.0.1:{http_port}/status") as response:
                links = {link["link"]: link for link in (await response.json())["links"]}
            assert daemon.returncode is None, "the daemon died"
        finally:
            daemon.send_signal(signal.SIGTERM)
            await asyncio.wait_for(daemon.wait(), 60)

    growth = peak - baseline
    stamps = [stamp for stamp in good_timestamps(tmp_path / "archive") if hostile_from <= stamp <= hostile_until]
    expected = (hostile_until - hostile_from) / 1e9 / GOOD_INTERVAL
    gaps = [(later - earlier) / 1e9 for earlier, later in itertools.pairwise(stamps)]
    print(
        f"RSS baseline {baseline / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB, growth {growth / 2**20:.1f} MiB; "
        f"good instrument: {len(stamps)} records of {expected:.1f} expected ({len(stamps) / expected:.1%}), "
        f"longest gap {max(gaps):.3f} s; /healthz slowest of {len(healthz)}: {max(healthz) * 1000:.1f} ms"
    )

    def counter(name: str, **labels: str) -> float:
        return sum(
            value
            for (sample, sample_labels), value in metrics.items()
            if sample == name and set(labels.items()) <= set(sample_labels)
        )

    assert growth <= 20 * 2**20
    assert len(stamps) >= 0.95 * expected - 1
    assert max(gaps) < 3 * GOOD_INTERVAL
    assert max(healthz) < 0.5  # it took 10 s while Python's re ran the README regex on the loop
    assert counter("edge_daq_link_garbled_frames_total", link=f"scpi+tcp://127.0.0.1:{flood}") >= 1
    assert counter("edge_daq_link_garbled_frames_total", link=f"scpi+tcp://127.0.0.1:{stream}") >= 1
    assert counter("edge_daq_link_reconnects_total", link=f"scpi+tcp://127.0.0.1:{flood}") >= 1
    assert links[f"scpi+tcp://127.0.0.1:{stream}"]["garbled_frames"] >= 1  # /status shows them as well
    assert counter("edge_daq_failed_points_total", instrument="long_line") >= 2  # the regex does not match
    log_lines = [
        json.loads(line) for line in (tmp_path / "daemon.log").read_text().splitlines() if line.startswith("{")
    ]
    assert not [line for line in log_lines if "Traceback" in json.dumps(line)]
    # Once per episode: the 40 KB line fails its points at every poll (5 a second), logged once.
    assert len([line for line in log_lines if line["event"] == "points_failed"]) == 1


@pytest.fixture
def captured_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with structlog.testing.capture_logs() as logs:
        yield logs


async def test_points_failed_is_logged_once_per_episode_when_the_message_varies(
    captured_logs: list[MutableMapping[str, Any]],
) -> None:
    """Each reply carries a different reading inside the error message: one log line per episode, the
    details in the counters."""
    polls = itertools.count()

    async def script(line: bytes, writer: asyncio.StreamWriter) -> None:
        poll = next(polls)
        healthy = 12 <= poll < 16  # an episode of failures, a recovery, and a second episode
        writer.write(b"1,2\n" if healthy else f"{poll},{poll},{poll}\n".encode())

    async with line_server(script) as port:
        config = ScpiTcpConfig.model_validate({
            "name": "smu", "driver": "scpi-tcp", "host": "127.0.0.1", "port": port, "interval": 0.02,
            "timeout": 0.5, "points": [{"query": ":READ?", "fields": ["v", "i"]}],
        })  # fmt: skip
        stats = InstrumentStats(rig="r", instrument="smu", link="x")
        member = ScheduledInstrument(instrument=ScpiInstrument(config), builder=RecordBuilder(config, {}), stats=stats)  # type: ignore[arg-type]
        records: list[Record] = []
        scheduler = LinkScheduler(link=TCP_PLUGIN.open_link([config]), instruments=[member], emit=records.append)
        async with asyncio.TaskGroup() as group:
            task = group.create_task(scheduler.run(), name="scpi")
            try:
                async with asyncio.timeout(15):
                    while stats.polls < 24:
                        await asyncio.sleep(0.01)
            finally:
                task.cancel()
    events = [entry["event"] for entry in captured_logs if str(entry["event"]).startswith("points_")]
    assert events == ["points_failed", "points_recovered", "points_failed"]
    assert stats.failed_points >= 2 * 18
