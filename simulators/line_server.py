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
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from simulators.modbus_server import Faults, ModelClock
from simulators.serial_endpoint import SerialEndpoint

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


class LineServer(SerialEndpoint):
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
        super().__init__(link=link, tcp=tcp)
        self.device = device
        self.baudrate = baudrate
        self.faults = faults or Faults()
        self.latency = latency
        self.commands = 0
        self.replies = 0
        self._noise = random.Random(seed)

    async def _serve_pty(self) -> None:
        buffer = b""
        while True:
            buffer += await self._queue.get()
            buffer = await self._lines(buffer, self._send_pty, serial=True)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        replies_before = self.replies

        async def send(data: bytes) -> None:
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()

        buffer = b""
        with self._connection():
            try:
                while chunk := await reader.read(4096):
                    buffer = await self._lines(buffer + chunk, send, serial=False)
                    drop_after = self.faults.drop_after
                    if drop_after is not None and self.replies - replies_before >= drop_after:
                        return
            except ConnectionError:
                pass  # the client went away
            finally:
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
