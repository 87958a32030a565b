"""A line-oriented server for SCPI and ASCII instruments, on TCP (a raw socket such as port 5025) and on a
pseudo-terminal (an RS-232 port), with fault injection.

Each received line (split on the device's read termination, surrounding blanks dropped) goes to the device's
:meth:`LineDevice.handle`; a returned string is sent back with the write termination, None sends nothing
(a command, not a query). Several commands on one line separated by ``;`` are handled in turn and their
replies joined with ``;``, as SCPI does. On a pseudo-terminal, a reply is delayed by the time the command and
the reply take on the line at ``baudrate`` (10 bits per character: 8N1).

Faults (``--fault``, shared syntax with the Modbus servers): ``no-answer`` (queries are swallowed),
``slow:SECONDS``, ``garbage`` (each reply is garbled: cut short and padded with noise), ``drop-after:N`` (TCP:
close the connection after N replies).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import tty
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path

import structlog

from simulators.modbus_server import Faults, ModelClock

log = structlog.get_logger(__name__)

Send = Callable[[bytes], Awaitable[None]]


class LineDevice:
    """A simulated instrument answering one command at a time."""

    read_termination = "\n"
    write_termination = "\n"

    def __init__(self, *, seed: int = 0, clock: ModelClock | None = None) -> None:
        self.seed = seed
        self.clock = clock or ModelClock()

    def handle(self, command: str) -> str | None:
        raise NotImplementedError


class LineServer:
    """Serves one :class:`LineDevice` on TCP and/or a pseudo-terminal."""

    def __init__(
        self,
        device: LineDevice,
        *,
        tcp: tuple[str, int] | None = None,
        link: str | Path | None = None,
        baudrate: int = 9600,
        faults: Faults | None = None,
        latency: float = 0.0,
        seed: int = 0,
    ) -> None:
        if tcp is None and link is None:
            raise ValueError("give a TCP address, a pseudo-terminal link path or both")
        self.device = device
        self.tcp = tcp
        self.link = Path(link) if link is not None else None
        self.baudrate = baudrate
        self.faults = faults or Faults()
        self.latency = latency
        self.commands = 0
        self.replies = 0
        self._noise = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("not serving TCP")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        if self.tcp is not None:
            self._server = await asyncio.start_server(self._serve_tcp, *self.tcp)
        if self.link is not None:
            master, slave = os.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)
            self._master, self._slave = master, slave
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
            self.link.symlink_to(os.ttyname(slave))
            self._queue = asyncio.Queue()
            asyncio.get_running_loop().add_reader(master, self._master_readable)
            self._spawn(self._serve_pty(), name=f"line-pty {self.link}")

    def _spawn(self, coroutine: Coroutine[object, object, None], *, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
            self._master = None
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> LineServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- transports

    def _master_readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except OSError:
            return  # no client has the port open (EIO), or nothing to read
        self._queue.put_nowait(data)

    async def _serve_pty(self) -> None:
        buffer = b""
        while True:
            buffer += await self._queue.get()
            buffer = await self._lines(buffer, self._send_pty, serial=True)

    async def _send_pty(self, data: bytes) -> None:
        if self._master is not None:
            with contextlib.suppress(BlockingIOError):
                os.write(self._master, data)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        replies_before = self.replies

        async def send(data: bytes) -> None:
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()

        buffer = b""
        try:
            while chunk := await reader.read(4096):
                buffer = await self._lines(buffer + chunk, send, serial=False)
                drop_after = self.faults.drop_after
                if drop_after is not None and self.replies - replies_before >= drop_after:
                    return
        except (asyncio.CancelledError, ConnectionError):
            pass  # our close(), or the client went away
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    # -- the dialogue

    async def _lines(self, buffer: bytes, send: Send, *, serial: bool) -> bytes:
        terminator = self.device.read_termination.encode()
        while (end := buffer.find(terminator)) >= 0:
            line, buffer = buffer[:end], buffer[end + len(terminator) :]
            text = line.decode("ascii", "replace").strip()
            if not text:
                continue
            replies = [reply for part in text.split(";") if (reply := self._handle(part.strip())) is not None]
            if not replies or self.faults.silent_all:
                continue
            reply = ";".join(replies)
            if self.faults.garbage:
                cut = reply[: self._noise.randrange(max(1, len(reply)))]
                reply = cut + "".join(chr(self._noise.randrange(33, 127)) for _ in range(3))
            data = (reply + self.device.write_termination).encode("ascii", "replace")
            delay = self.latency + self.faults.reply_delay
            if serial:
                delay += (len(line) + len(terminator) + len(data)) * 10 / self.baudrate
            if delay > 0:
                await asyncio.sleep(delay)
            await send(data)
            self.replies += 1
        return buffer

    def _handle(self, command: str) -> str | None:
        if not command:
            return None
        self.commands += 1
        try:
            return self.device.handle(command)
        except Exception:
            log.exception("line_device_error", command=command)
            return None
