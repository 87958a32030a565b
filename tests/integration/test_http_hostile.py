"""Hostile traffic on the service endpoints, over real loopback sockets: a flood of idle HTTP connections beyond
the limit, malformed requests, and oversized, deep, idle or too many connections to the control socket.

The daemon must keep answering /healthz and polling, write no traceback, and only JSON log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge_daq.logs import configure_logging
from edge_daq.reliability.control import MAX_DEPTH, MAX_REQUEST, ControlServer, request
from edge_daq.service.http import HealthCheck, HttpEndpoint
from edge_daq.service.metrics import PipelineView, build_registry
from edge_daq.stats import PipelineStats
from simulators import serve
from tests.daemon_process import POLL, DaemonProcess, IdleFlood, log_lines, records_per_second, write_config
from tests.servers import free_port

MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"GET /healthz HTTP/9.9\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",  # request line over aiohttp's 8 KiB
    b"GET /healthz HTTP/1.1\r\nX: " + b"b" * 20_000 + b"\r\n\r\n",  # a header over 8 KiB
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),  # a TLS ClientHello on the plain port
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
]


@pytest.fixture
def json_log() -> io.StringIO:
    stream = io.StringIO()
    configure_logging("info", stream=stream, json=True)
    return stream


@pytest.fixture
async def endpoint() -> AsyncIterator[HttpEndpoint]:
    view = PipelineView(stats=PipelineStats())
    served = HttpEndpoint(
        listen="127.0.0.1:0",
        registry=build_registry(view, process=False),
        health=HealthCheck(view, running=lambda: True),
        status=view.snapshot,
        idle_timeout=1.0,
        max_connections=64,
    )
    view.http = served.stats
    async with served:
        yield served


async def open_idle(port: int, count: int) -> list[asyncio.StreamWriter]:
    """``count`` connections that send nothing (the ones the server closed are left to fail quietly)."""
    writers = []
    for _ in range(count):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
    return writers


def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.transport.abort()


async def healthz(url: str, within: float = 2.0) -> int:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=within)) as session,
        session.get(url + "/healthz") as response,
    ):
        return response.status


async def send_raw(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read(4096)
    except ConnectionError:
        return b""
    finally:
        writer.transport.abort()


async def test_a_flood_of_idle_connections_never_locks_out_healthz(endpoint: HttpEndpoint) -> None:
    peak = 0
    writers: list[asyncio.StreamWriter] = []
    try:
        for _ in range(15):  # 1,500 idle connections against a limit of 64
            writers += await open_idle(endpoint.port, 100)
            peak = max(peak, endpoint.stats.open_connections())
            assert await healthz(endpoint.url) == 200
        assert peak <= endpoint.max_connections
        assert endpoint.stats.connections_closed_idle >= 1500 - endpoint.max_connections
        assert endpoint.stats.connections_refused == 0
    finally:
        close_all(writers)
    # Idle connections that never sent a request are closed after idle_timeout (1 s here).
    writers = await open_idle(endpoint.port, 20)
    try:
        async with asyncio.timeout(5):
            while endpoint.stats.open_connections():
                await asyncio.sleep(0.1)
    finally:
        close_all(writers)


async def test_malformed_requests_are_counted_and_logged_once(endpoint: HttpEndpoint, json_log: io.StringIO) -> None:
    count = 200
    replies = [await send_raw(endpoint.port, MALFORMED[index % len(MALFORMED)]) for index in range(count)]
    assert await healthz(endpoint.url) == 200
    assert sum(1 for reply in replies if reply.startswith((b"HTTP/1.0 400 ", b"HTTP/1.1 400 "))) == count
    assert endpoint.stats.bad_requests == count
    lines = json_log.getvalue().splitlines()
    entries = [json.loads(line) for line in lines]  # every line JSON
    assert "Traceback" not in json_log.getvalue()
    (logged,) = [entry for entry in entries if entry["event"] == "http_bad_request"]
    assert logged["level"] == "warning"
    assert len(lines) == 1, lines
    print(f"{count} malformed requests: {len(lines)} log line(s), {endpoint.stats.bad_requests} counted")


async def test_metrics_count_the_endpoint_itself(endpoint: HttpEndpoint) -> None:
    await send_raw(endpoint.port, b"GARBAGE\r\n\r\n")
    async with aiohttp.ClientSession() as session, session.get(endpoint.url + "/metrics") as response:
        text = await response.text()
    assert "edge_daq_http_bad_requests_total 1.0" in text
    assert "edge_daq_http_connections 1.0" in text  # this one


async def test_a_failing_handler_is_a_500_and_one_json_line(json_log: io.StringIO) -> None:
    def broken_status() -> dict[str, Any]:
        raise ZeroDivisionError("a bug behind /status")

    view = PipelineView(stats=PipelineStats())
    endpoint = HttpEndpoint(
        listen="127.0.0.1:0",
        registry=build_registry(view, process=False),
        health=HealthCheck(view, running=lambda: True),
        status=broken_status,
    )
    async with endpoint, aiohttp.ClientSession() as session:
        for _ in range(5):
            async with session.get(endpoint.url + "/status") as response:
                assert response.status == 500
        assert await healthz(endpoint.url) == 200
    assert endpoint.stats.handler_errors == 5
    (line,) = json_log.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["event"] == "http_handler_failed"
    assert entry["error"].startswith("ZeroDivisionError: a bug behind /status")


def test_a_library_record_with_a_traceback_is_one_json_line(json_log: io.StringIO) -> None:
    empty: dict[str, str] = {}
    try:
        empty["missing"]
    except KeyError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved, Bearer abc.def.ghi.jkl")
    (line,) = json_log.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["event"] == "Task exception was never retrieved, Bearer ***"  # a library message is masked too
    assert entry["error"].startswith("KeyError: 'missing' (test_http_hostile.py:")
    assert (entry["level"], entry["logger"]) == ("error", "asyncio")
    assert "Traceback" not in line


# -- the control socket


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[ControlServer]:
    def handler(message: Any) -> dict[str, Any]:
        if message.get("command") == "crash":
            raise ZeroDivisionError("a bug in a command")
        return {"ok": True, "message": "done"}

    server = ControlServer(tmp_path / "control.sock", handler, idle_timeout=0.5, max_connections=4)
    await server.start()
    yield server
    await server.close()


async def exchange(path: Path, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
    try:
        writer.write(payload)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        async with asyncio.timeout(5):
            return await reader.readline()
    finally:
        writer.close()


async def test_control_socket_bounds(control: ControlServer, json_log: io.StringIO) -> None:
    deep = b"[" * 20_000 + b"]" * 20_000 + b"\n"
    assert b"nested at most" in await exchange(control.path, b'{"a":' + deep[:-1] + b"}\n")
    assert b"nested at most" in await exchange(control.path, deep)
    too_deep = b'{"a":' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}\n"
    assert b"nested at most" in await exchange(control.path, too_deep)
    assert b"at most 65536 bytes" in await exchange(control.path, b'{"text": "' + b"x" * MAX_REQUEST + b'"}\n')
    assert b"one JSON object" in await exchange(control.path, b"\xff\xfe\n")
    assert b"internal error: ZeroDivisionError" in await exchange(control.path, b'{"command": "crash"}\n')
    assert (await request(control.path, {"command": "status"}))["ok"] is True

    # Idle connections are closed; beyond the limit a connection gets its reason at once.
    held = [await asyncio.open_unix_connection(control.path) for _ in range(4)]
    assert b"more than 4 control connections" in await exchange(control.path, b'{"command": "status"}\n')
    async with asyncio.timeout(3):
        for reader, _ in held:
            assert await reader.read() == b""  # closed by the server after idle_timeout
    for _, writer in held:
        writer.close()
    assert (await request(control.path, {"command": "status"}))["ok"] is True

    log = json_log.getvalue()
    entries = [json.loads(line) for line in log.splitlines()]
    assert "Traceback" not in log
    assert "RecursionError" not in log
    assert [entry["event"] for entry in entries] == ["control_request_refused", "control_request_failed"]
    assert control.refused >= 10


# -- a real daemon under all of it at once


async def test_the_daemon_keeps_serving_and_polling_under_hostile_traffic(tmp_path: Path) -> None:
    async with serve("watlow-f4", seed=1) as first, serve("watlow-f4", seed=2) as second:
        http_port = free_port()
        gateway = write_config(tmp_path, [first.port, second.port], http_port=http_port)
        async with DaemonProcess(gateway, http_port) as daemon:
            archive = tmp_path / "archive"
            await asyncio.sleep(2)
            start = time.time_ns()
            async with IdleFlood(http_port, 1500) as opened:  # beyond the default limit of 256
                status, _ = await daemon.get("/healthz")
                assert status == 200
                _, metrics = await daemon.get("/metrics")
                malformed = 200
                for index in range(malformed):
                    await send_raw(http_port, MALFORMED[index % len(MALFORMED)])
                control = tmp_path / "state" / "control.sock"
                deep = b"[" * 20_000 + b"]" * 20_000 + b"\n"
                assert b"nested at most" in await exchange(control, deep)
                assert b"no reliability rig" in await exchange(control, b'{"rig": "x", "command": "status"}\n')
                status, _ = await daemon.get("/healthz")
                assert status == 200
            end = time.time_ns()
            assert opened == 1500
            await asyncio.sleep(1)
            assert daemon.alive
            _, after = await daemon.get("/metrics")
        assert daemon.returncode == 0
        rates = records_per_second(archive, start, end)
        assert rates["chamber0"] >= 0.95 / POLL, rates
        assert rates["chamber1"] >= 0.95 / POLL, rates
        open_fds = next(float(line.split()[1]) for line in metrics.splitlines() if line.startswith("process_open_fds"))
        assert open_fds < 256 + 64, metrics  # the connection limit held, with room for the rest
        bad = next(float(line.split()[1]) for line in after.splitlines() if line.startswith("edge_daq_http_bad_req"))
        assert bad >= malformed * 7 // 8
        entries = log_lines(daemon.log)  # every line JSON
        assert "Traceback" not in daemon.log
        http_lines = [entry for entry in entries if entry["event"].startswith("http_")]
        assert len(http_lines) == 1, http_lines
        print(
            f"hostile traffic: records/s {rates}, open fds at 1,500 idle connections {open_fds:g}, "
            f"{malformed} malformed requests -> {len(http_lines)} log line(s), {bad:g} counted, "
            f"{len(entries)} log lines in all"
        )
