"""SIGHUP reload of a running daemon (a real process, with simulators on real ports and its own NOTIFY_SOCKET)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from edge_daq.config.loader import load_config
from simulators import serve

INTERVAL_NS = 100_000_000


def rig_file(ports: list[int]) -> str:
    lines = ["rig: oven", "tags: {lot: L1}", "instruments:"]
    for index, port in enumerate(ports):
        name = "chamber" if index == 0 else f"chamber{index + 1}"
        lines.append(f"  - {{name: {name}, profile: watlow-f4, host: 127.0.0.1, port: {port}, interval: 100ms}}")
    return "\n".join(lines) + "\n"


class Notifications:
    """The daemon's sd_notify messages, read from a datagram socket of the test's own."""

    def __init__(self, path: Path) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.socket.setblocking(False)
        self.messages: list[str] = []

    async def wait_for(self, text: str, *, after: int = 0, within: float = 15.0) -> int:
        """Index of the first message from ``after`` on that contains ``text``."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            while True:
                for index in range(after, len(self.messages)):
                    if text in self.messages[index]:
                        return index
                data = await loop.sock_recv(self.socket, 4096)
                self.messages.append(data.decode())

    def close(self) -> None:
        self.socket.close()


def lines_of(archive: Path, measurement: str) -> list[str]:
    lines = [line for file in sorted(archive.glob("*.lp")) for line in file.read_text().splitlines()]
    return [line for line in lines if line.startswith(measurement + ",")]


async def wait_for_lines(archive: Path, measurement: str, count: int, within: float = 15.0) -> None:
    async with asyncio.timeout(within):
        while len(lines_of(archive, measurement)) < count:
            await asyncio.sleep(0.1)


async def start_daemon(gateway: Path, notify_socket: Path) -> asyncio.subprocess.Process:
    """``edge-daq run`` as systemd starts it: its notifications to ``notify_socket``, its log on stderr."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_daq",
        "run",
        "-c",
        str(gateway),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NOTIFY_SOCKET": str(notify_socket)},
    )


async def test_sighup_adds_an_instrument_without_a_gap_and_refuses_an_invalid_config(tmp_path: Path) -> None:
    notifications = Notifications(tmp_path / "notify.sock")
    archive = tmp_path / "archive"
    rigs = tmp_path / "rigs.d"
    rigs.mkdir()
    gateway = tmp_path / "edge-daq.yaml"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        http_port = probe.getsockname()[1]
    gateway.write_text(
        f"gateway: gw1\nhttp: {{listen: '127.0.0.1:{http_port}'}}\n"
        f"outputs:\n  file: {{dir: {archive}, flush_interval: 100ms}}\n"
    )
    async with serve("watlow-f4", seed=1) as first, serve("watlow-f4", seed=2) as second:
        (rigs / "oven.yaml").write_text(rig_file([first.port]))
        daemon = await start_daemon(gateway, tmp_path / "notify.sock")
        try:
            await notifications.wait_for("READY=1")
            await wait_for_lines(archive, "chamber", 5)

            # Add an instrument: it appears, and the untouched one keeps polling through the reload.
            (rigs / "oven.yaml").write_text(rig_file([first.port, second.port]))
            new_hash = load_config(gateway).hash
            daemon.send_signal(signal.SIGHUP)
            reloading = await notifications.wait_for("RELOADING=1")
            assert "MONOTONIC_USEC=" in notifications.messages[reloading]
            await notifications.wait_for("READY=1", after=reloading)
            await wait_for_lines(archive, "chamber2", 5)

            # An invalid config is refused; both instruments go on under the old one.
            (rigs / "oven.yaml").write_text(
                rig_file([first.port, second.port]).replace("interval: 100ms", "interval: soon")
            )
            daemon.send_signal(signal.SIGHUP)
            rejected = await notifications.wait_for("reload rejected: 2 problem(s)", after=reloading + 1)
            before = len(lines_of(archive, "chamber2"))
            await wait_for_lines(archive, "chamber2", before + 5)
            assert rejected
        finally:
            daemon.send_signal(signal.SIGTERM)
            _, log = await asyncio.wait_for(daemon.communicate(), 20)
            notifications.close()
    assert daemon.returncode == 0, log.decode()[-2000:]

    # The untouched instrument's records continue without a gap across both reloads.
    times = [int(line.rsplit(" ", 1)[1]) for line in lines_of(archive, "chamber")]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert max(gaps) < 3 * INTERVAL_NS, max(gaps)
    # The reload is an event in the data, with the new configuration's hash.
    events = lines_of(archive, "edge_daq_event")
    assert len(events) == 1
    assert 'kind="config_change"' in events[0]
    assert f'config_hash="{new_hash}"' in events[0]
    assert "links_started=1i" in events[0]
    # The refused config is reported with its positions, in the log.
    rejections = [json.loads(line) for line in log.decode().splitlines() if "reload_rejected" in line]
    assert len(rejections) == 1
    assert any(":4:" in issue and "expected a duration" in issue for issue in rejections[0]["issues"])


# Rig files that killed the running daemon at SIGHUP (issue 13), with where and what the rejection says.
HOSTILE_RIGS = [
    ("rig: oven\x1b\n", ":1:10: control character U+001B"),
    ("rig: oven\ntags: {lot: L\x7f1}\n", ":2:14: control character U+007F"),
    ("rig: oven\ntags: {lot: " + "9" * 4301 + "}\n", ":2:13: a number of more than 100 digits"),
    ("rig: oven\ntags: " + "[" * 1000 + "]" * 1000 + "\n", ":2:70: lists and mappings are nested more than 64"),
]


async def test_sighup_onto_a_hostile_rig_file_is_rejected_and_polling_goes_on(tmp_path: Path) -> None:
    notifications = Notifications(tmp_path / "notify.sock")
    archive = tmp_path / "archive"
    rigs = tmp_path / "rigs.d"
    rigs.mkdir()
    gateway = tmp_path / "edge-daq.yaml"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        http_port = probe.getsockname()[1]
    gateway.write_text(
        f"gateway: gw1\nhttp: {{listen: '127.0.0.1:{http_port}'}}\n"
        f"outputs:\n  file: {{dir: {archive}, flush_interval: 100ms}}\n"
    )
    async with serve("watlow-f4", seed=1) as chamber:
        (rigs / "oven.yaml").write_text(rig_file([chamber.port]))
        daemon = await start_daemon(gateway, tmp_path / "notify.sock")
        try:
            seen = await notifications.wait_for("READY=1")
            await wait_for_lines(archive, "chamber", 3)
            for text, _ in HOSTILE_RIGS:
                (rigs / "oven.yaml").write_bytes(text.encode())
                daemon.send_signal(signal.SIGHUP)
                seen = await notifications.wait_for("reload rejected: 1 problem(s)", after=seen + 1)
                # Still polling under the old configuration after each rejection.
                before = len(lines_of(archive, "chamber"))
                await wait_for_lines(archive, "chamber", before + 3)
            assert daemon.returncode is None
            # Counted, and visible in /metrics and /status.
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{http_port}/metrics") as response:
                    metrics = await response.text()
                async with session.get(f"http://127.0.0.1:{http_port}/status") as response:
                    reloads = (await response.json())["reloads"]
            assert f'edge_daq_reloads_total{{result="rejected"}} {len(HOSTILE_RIGS)}.0' in metrics
            assert 'edge_daq_reloads_total{result="failed"} 0.0' in metrics
            assert (reloads["applied"], reloads["rejected"], reloads["failed"]) == (0, len(HOSTILE_RIGS), 0)
            assert reloads["last_error"].startswith(f"{rigs / 'oven.yaml'}{HOSTILE_RIGS[-1][1]}")
        finally:
            daemon.send_signal(signal.SIGTERM)
            _, log = await asyncio.wait_for(daemon.communicate(), 20)
            notifications.close()
    assert daemon.returncode == 0, log.decode()[-2000:]
    assert "Traceback" not in log.decode()
    rejections = [json.loads(line) for line in log.decode().splitlines() if "reload_rejected" in line]
    assert [len(rejection["issues"]) for rejection in rejections] == [1] * len(HOSTILE_RIGS)
    for rejection, (_, where) in zip(rejections, HOSTILE_RIGS, strict=True):
        assert rejection["issues"][0].startswith(f"{rigs / 'oven.yaml'}{where}"), rejection["issues"]


async def test_a_reload_that_raises_is_logged_once_each_time_and_reloads_go_on(tmp_path: Path) -> None:
    import structlog.testing

    from edge_daq.daemon import Daemon
    from edge_daq.service.lifecycle import reload_on_request
    from edge_daq.service.notify import Notifier

    gateway = tmp_path / "edge-daq.yaml"
    gateway.write_text(f"gateway: gw1\noutputs:\n  file: {{dir: {tmp_path / 'archive'}}}\n")
    # A real daemon that is not running: its reload raises RuntimeError, as during a drain.
    daemon = Daemon(load_config(gateway))
    notifications = Notifications(tmp_path / "notify.sock")
    requested = asyncio.Event()
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    with notifier, structlog.testing.capture_logs() as logs:
        reloads = asyncio.create_task(reload_on_request(daemon, gateway, requested, notifier, lambda: "ok"))
        try:
            requested.set()
            first = await notifications.wait_for("reload failed: RuntimeError; ok")
            requested.set()
            second = await notifications.wait_for("reload failed: RuntimeError; ok", after=first + 1)
            gateway.write_text("gateway: gw1\x1b\n")
            requested.set()
            await notifications.wait_for("reload rejected: 1 problem(s); ok", after=second + 1)
            assert not reloads.done()
        finally:
            reloads.cancel()
            await asyncio.wait([reloads])
            notifications.close()
    failures = [entry for entry in logs if entry["event"] == "reload_failed"]
    assert [entry["reason"] for entry in failures] == ["RuntimeError: the daemon is not running"] * 2
    assert all(entry["log_level"] == "error" and entry["running"] == daemon.config.hash[:12] for entry in failures)
    assert [entry["event"] for entry in logs].count("reload_rejected") == 1
    counts = daemon.stats.reloads
    assert (counts.applied, counts.rejected, counts.failed) == (0, 1, 2)
