"""The local control channel: a Unix socket in the state folder, one JSON object per line each way.

Local only by construction (a file-system socket, mode 0600: the daemon's user and root). Requests::

    {"rig": "htol-07", "command": "test", "action": "start", "id": "HTOL-2611-03", "kind": "HTOL"}
    {"rig": "htol-07", "command": "test", "action": "pause"}        # resume, stop
    {"rig": "htol-07", "command": "note", "text": "board 3 reseated"}
    {"rig": "htol-07", "command": "remove", "dut": "U0007", "reason": "cracked package"}
    {"rig": "htol-07", "command": "status"}

Replies: ``{"ok": true, "message": ...}`` or ``{"ok": false, "error": ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("edge_daq.reliability.control")

MAX_REQUEST = 64 * 1024
CLIENT_TIMEOUT = 5.0

Handler = Callable[[Mapping[str, Any]], dict[str, Any]]


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left over by a daemon that did not stop cleanly
        self._server = await asyncio.start_unix_server(self._serve, path=self.path, limit=MAX_REQUEST)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    reply = self._handler(request) if isinstance(request, dict) else {"ok": False, "error": "not JSON"}
                except json.JSONDecodeError:
                    reply = {"ok": False, "error": "expected one JSON object per line"}
                writer.write(json.dumps(reply, default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as error:
            log.warning("control_connection_failed", error=str(error))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def request(path: Path, message: Mapping[str, Any], *, within: float = CLIENT_TIMEOUT) -> dict[str, Any]:
    """Send one request to the running daemon and return its reply; OSError if it does not listen."""
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(json.dumps(message).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    if not line:
        raise ConnectionError("the daemon closed the control connection without a reply")
    reply: dict[str, Any] = json.loads(line)
    return reply
