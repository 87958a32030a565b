"""The local control channel: a Unix socket in the state folder, one JSON object per line each way.

Local only by construction (a file-system socket, mode 0600: the daemon's user and root). Requests::

    {"rig": "htol-07", "command": "test", "action": "start", "id": "HTOL-2611-03", "kind": "HTOL"}
    {"rig": "htol-07", "command": "test", "action": "pause"}        # resume, stop
    {"rig": "htol-07", "command": "note", "text": "board 3 reseated"}
    {"rig": "htol-07", "command": "remove", "dut": "U0007", "reason": "cracked package"}
    {"rig": "htol-07", "command": "status"}
    {"rig": "htol-07", "command": "readout", "action": "start"}
    {"rig": "htol-07", "command": "readout", "action": "end", "results": "/abs/path.stdf", "format": "auto"}

Replies: ``{"ok": true, "message": ...}`` or ``{"ok": false, "error": ...}``.

Bounded like every input: a request line is at most ``MAX_REQUEST`` bytes and ``MAX_DEPTH`` levels deep
(parsed in a worker thread, never on the event loop), a connection idle for ``IDLE_TIMEOUT`` is closed, and at
most ``MAX_CONNECTIONS`` are served at once. A refused request gets its reason; refusals are counted and
logged at most once per ``LOG_QUIET`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import pwd
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("edge_daq.reliability.control")

MAX_REQUEST = 64 * 1024
MAX_DEPTH = 16
IDLE_TIMEOUT = 30.0
MAX_CONNECTIONS = 16
LOG_QUIET = 60.0
CLIENT_TIMEOUT = 5.0

Handler = Callable[[Mapping[str, Any]], dict[str, Any] | Awaitable[dict[str, Any]]]
"""A command's handler: it answers at once, or with an awaitable for work done off the loop (a readout's results
file, a write to an instrument). ``request["peer"]`` is the caller as the kernel reports it (``SO_PEERCRED``:
uid, gid, pid, user), never what the client claims."""
PEER_KEY = "peer"
_UCRED = struct.Struct("3i")  # pid, uid, gid


def peer_of(writer: asyncio.StreamWriter) -> dict[str, Any]:
    """The connected process's credentials from the kernel; blocking (a user name lookup): call in a thread."""
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return {"uid": None, "user": "unknown"}
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = f"uid {uid}"
    return {"uid": uid, "gid": gid, "pid": pid, "user": user}


class RequestError(ValueError):
    """A request line that is not one acceptable JSON object; the message is the reply's ``error``."""


def parse_request(line: bytes) -> dict[str, Any]:
    """One request line as a JSON object, at most ``MAX_DEPTH`` deep. Blocking on large input: call in a thread."""
    try:
        request = json.loads(line)
    except RecursionError:
        raise RequestError(f"a request may be nested at most {MAX_DEPTH} levels deep") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise RequestError("expected one JSON object per line") from None
    if not isinstance(request, dict):
        raise RequestError("expected one JSON object per line")
    if _deeper_than(request, MAX_DEPTH):
        raise RequestError(f"a request may be nested at most {MAX_DEPTH} levels deep")
    return request


def _deeper_than(document: object, limit: int) -> bool:
    level: list[object] = [document]
    for _ in range(limit):
        level = [
            child
            for node in level
            if isinstance(node, dict | list)
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


class ControlServer:
    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.Server | None = None
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.connections = 0
        self.refused = 0
        """Requests and connections refused (malformed, too large or deep, idle, over the limit)."""
        self._logged_at: float | None = None

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
        self.connections += 1
        peer: dict[str, Any] = {}
        try:
            if self.connections > self.max_connections:
                await self._reply(writer, self._refuse(f"more than {self.max_connections} control connections"))
                return
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        line = await reader.readline()
                except TimeoutError:
                    self._refuse(f"idle for {self.idle_timeout:g} s")
                    return
                except ValueError:  # the line outgrew the reader's limit
                    await self._reply(writer, self._refuse(f"a request line is at most {MAX_REQUEST} bytes"))
                    return
                if not line:
                    return
                if not peer:
                    peer = await asyncio.to_thread(peer_of, writer)
                await self._reply(writer, await self._answer(line, peer))
        except ConnectionError as error:
            self._refuse(f"connection failed: {error}")
        except TimeoutError:
            self._refuse(f"a reply was not read for {self.idle_timeout:g} s")
        finally:
            self.connections -= 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, line: bytes, peer: Mapping[str, Any] | None = None) -> dict[str, Any]:
        try:
            request = await asyncio.to_thread(parse_request, line)
        except RequestError as error:
            return self._refuse(str(error))
        request[PEER_KEY] = dict(peer or {})  # what the kernel says, whatever the client sent
        try:
            reply = self._handler(request)
            return await reply if inspect.isawaitable(reply) else reply
        except Exception as error:  # a bug in a command must not end the connection's task with a traceback
            log.error("control_request_failed", command=str(request.get("command"))[:40], error=repr(error)[:300])
            return {"ok": False, "error": f"internal error: {type(error).__name__}"}

    def _refuse(self, reason: str) -> dict[str, Any]:
        self.refused += 1
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= LOG_QUIET:
            self._logged_at = now
            log.warning("control_request_refused", reason=reason[:200], refused=self.refused)
        return {"ok": False, "error": reason}

    async def _reply(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        writer.write(json.dumps(reply, default=str).encode() + b"\n")
        async with asyncio.timeout(self.idle_timeout):  # a client that never reads its replies
            await writer.drain()


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
