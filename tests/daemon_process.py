"""A real `edge-daq run` as a child process, and what the supervision and hostile-input tests read from it:
records per second per instrument in the file output (by acquisition time), its JSON log lines, its HTTP
endpoint."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import yaml

POLL = 0.1
"""Seconds between polls of each instrument: 10 records per second each."""


def write_config(
    folder: Path,
    chamber_ports: list[int],
    *,
    http_port: int,
    outputs: dict[str, Any] | None = None,
    reliability: bool = True,
    spool: bool = False,
) -> Path:
    """A gateway file and one rig (with reliability keys unless told) polling a Watlow F4 simulator per port,
    each on its own link, with a file output in ``folder/archive`` besides ``outputs``, and with ``spool`` a
    spool in ``folder/spool``."""
    rig: dict[str, Any] = {
        "rig": "sup",
        "instruments": [
            {"name": f"chamber{index}", "profile": "watlow-f4", "host": "127.0.0.1", "port": port,
             "interval": POLL, "timeout": 0.5}
            for index, port in enumerate(chamber_ports)
        ],
    }  # fmt: skip
    if reliability:
        rig["test"] = {"id": "T-SUP", "kind": "HTOL"}
    (folder / "rigs.d").mkdir(exist_ok=True)
    (folder / "rigs.d" / "sup.yaml").write_text(yaml.safe_dump(rig, sort_keys=False))
    gateway = folder / "gateway.yaml"
    every_output = {"file": {"dir": str(folder / "archive"), "flush_interval": "100ms"}, **(outputs or {})}
    gateway.write_text(
        yaml.safe_dump(
            {
                "gateway": "gw-sup",
                "rigs": "rigs.d/",
                "state_dir": str(folder / "state"),
                "http": {"listen": f"127.0.0.1:{http_port}"},
                "outputs": every_output,
                **({"buffer": {"spool_dir": str(folder / "spool")}} if spool else {}),
            }
        )
    )
    return gateway


def records_per_second(archive: Path, start_ns: int, end_ns: int) -> dict[str, float]:
    """Records per second of each instrument whose acquisition time lies in ``[start_ns, end_ns)``."""
    counts: Counter[str] = Counter()
    for path in archive.glob("*.lp"):
        for line in path.read_bytes().splitlines():
            head, _, rest = line.partition(b" ")
            measurement, _, tags = head.partition(b",")
            if measurement.startswith(b"edge_daq_") or not rest:
                continue
            time_ns = int(rest.rsplit(b" ", 1)[1])
            if not start_ns <= time_ns < end_ns:
                continue
            for tag in tags.split(b","):
                if tag.startswith(b"instrument="):
                    counts[tag.removeprefix(b"instrument=").decode()] += 1
    seconds = (end_ns - start_ns) / 1e9
    return {instrument: round(count / seconds, 2) for instrument, count in sorted(counts.items())}


class DaemonProcess:
    """``async with DaemonProcess(gateway, http_port) as daemon:`` runs `edge-daq run --log-json` until the
    block ends (SIGTERM), then :attr:`returncode` and :attr:`log` (stderr) are set."""

    def __init__(self, gateway: Path, http_port: int) -> None:
        self.gateway = gateway
        self.url = f"http://127.0.0.1:{http_port}"
        self.returncode: int | None = None
        self.log = ""
        self._process: asyncio.subprocess.Process | None = None
        self._stderr = gateway.parent / "daemon.log"

    async def __aenter__(self) -> DaemonProcess:
        with self._stderr.open("wb") as stderr:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "edge_daq",
                "run",
                "-c",
                str(self.gateway),
                "--log-json",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
                env={key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"},
            )
        async with asyncio.timeout(30):
            while (await self.get("/healthz"))[0] is None:
                assert self._process.returncode is None, self.read_log()[-3000:]
                await asyncio.sleep(0.1)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._process is not None
        if self._process.returncode is None:
            self._process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            await self._process.wait()
        self.returncode = self._process.returncode
        self.log = self.read_log()

    def reload(self) -> None:
        """SIGHUP: the daemon reads its files again."""
        assert self._process is not None
        self._process.send_signal(signal.SIGHUP)

    async def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: nothing is flushed; the block's end then does nothing."""
        assert self._process is not None
        self._process.kill()
        async with asyncio.timeout(30):
            await self._process.wait()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def read_log(self) -> str:
        return self._stderr.read_text(errors="replace")

    async def get(self, path: str) -> tuple[int | None, Any]:
        """(status, JSON body or text) of a GET, or (None, error) if the daemon does not answer."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
                session.get(self.url + path) as response,
            ):
                if response.content_type == "application/json":
                    return response.status, await response.json()
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            return None, str(error)


def log_lines(log: str) -> list[dict[str, Any]]:
    """Every line of a JSON log; fails on the first line that is not a JSON object."""
    entries = []
    for number, line in enumerate(log.splitlines(), 1):
        entry = json.loads(line)  # a traceback or a plain-text line fails here
        assert isinstance(entry, dict), f"line {number}: {line!r}"
        entries.append(entry)
    return entries


_FLOOD = """
import socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(count):
    try:
        held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
    except OSError:
        pass
print(len(held), flush=True)
sys.stdin.read()  # hold them until the test closes our stdin
"""


class IdleFlood:
    """``async with IdleFlood(port, count) as opened:`` holds ``count`` idle connections to ``port`` from a child
    process (not from the test's event loop, which runs the simulators the daemon polls)."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> int:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _FLOOD,
            str(self.port),
            str(self.count),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self._process.stdout is not None
        async with asyncio.timeout(60):
            return int(await self._process.stdout.readline())

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._process is not None
        assert self._process.stdin is not None
        self._process.stdin.close()
        async with asyncio.timeout(30):
            await self._process.wait()
