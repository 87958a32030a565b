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
        daemon = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge_daq",
            "run",
            "-c",
            str(gateway),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock")},
        )
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
