"""The transport under the simulated serial instruments: a pseudo-terminal (an RS-232 or RS-485 port that a
client opens like ``/dev/ttyUSB0``) and/or a TCP port (a raw socket, or a serial device server).

The pseudo-terminal is a pair made with :func:`os.openpty`; the endpoint serves the master side and puts a
symlink at ``link`` to the slave side. It keeps its own descriptor on the slave open so that a client may close
and reopen the port without the master seeing a hang-up; :meth:`SerialEndpoint.close` closes the master,
which is what a client sees when a USB adapter is pulled.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import tty
from abc import ABC, abstractmethod
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Self


class SerialEndpoint(ABC):
    def __init__(self, *, link: str | Path | None, tcp: tuple[str, int] | None) -> None:
        if link is None and tcp is None:
            raise ValueError("give a pseudo-terminal link path, a TCP address or both")
        self.link = Path(link) if link is not None else None
        self.tcp = tcp
        self._master: int | None = None
        self._slave: int | None = None
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._tcp_server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._tcp_server is None or not self._tcp_server.sockets:
            raise RuntimeError("not serving TCP")
        port: int = self._tcp_server.sockets[0].getsockname()[1]
        return port

    @property
    def slave_name(self) -> str:
        if self._slave is None:
            raise RuntimeError("no pseudo-terminal")
        return os.ttyname(self._slave)

    @abstractmethod
    async def _serve_pty(self) -> None:
        """Serve the pseudo-terminal: read with :meth:`_receive_pty`, answer with :meth:`_send_pty`."""

    @abstractmethod
    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one TCP connection, inside :meth:`_connection` so that :meth:`close` can end it."""

    async def start(self) -> None:
        if self.link is not None:
            self._open_pty(self.link)
        if self.tcp is not None:
            host, port = self.tcp
            self._tcp_server = await asyncio.start_server(self._serve_tcp, host, port)

    def _open_pty(self, link: Path) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # until the client sets its own mode, nothing is echoed or translated
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(os.ttyname(slave))
        self._queue = asyncio.Queue()
        asyncio.get_running_loop().add_reader(master, self._master_readable)
        self._spawn(self._serve_pty(), name=f"pty {link}")

    def _spawn(self, coroutine: Coroutine[object, object, None], *, name: str) -> None:
        # Owned: kept in self._tasks until done, cancelled and awaited by close().
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[None]:
        """Track the current TCP handler so that close() cancels it; its cancellation ends it quietly."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            yield
        except asyncio.CancelledError:
            pass  # our close(): end the handler normally (asyncio reports cancelled stream callbacks)
        finally:
            self._tasks.discard(task)

    async def close(self) -> None:
        """Close the pseudo-terminal (the client sees its device vanish), remove the link, stop TCP."""
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
        if self._tcp_server is not None:
            self._tcp_server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tcp_server is not None:
            await self._tcp_server.wait_closed()
            self._tcp_server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _master_readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except OSError:
            return  # nothing to read, or no client has the slave open right now (EIO)
        self._queue.put_nowait(data)

    async def _receive_pty(self, within: float | None = None) -> bytes | None:
        """The next bytes from the client, or None after ``within`` seconds without any."""
        try:
            async with asyncio.timeout(within):
                return await self._queue.get()
        except TimeoutError:
            return None

    async def _send_pty(self, data: bytes) -> None:
        if self._master is not None:
            with contextlib.suppress(BlockingIOError):
                os.write(self._master, data)


async def wait_line_time(seconds: float) -> None:
    """Wait ``seconds`` of emulated wire time to within a few hundredths of a millisecond.

    ``asyncio.sleep`` overshoots by half a millisecond on average (the selector rounds its timeout up to whole
    milliseconds), which at 115200 baud would make the simulated line slower than a real one. So the loop's timer
    waits whole milliseconds ending at least one short of the deadline, and the rest passes in loop turns: a
    simulator may spend a millisecond of CPU per frame on being exact.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    if (timed := math.floor((seconds - 0.001) * 1000.0) / 1000.0) > 0:
        await asyncio.sleep(timed)
    while loop.time() < deadline:  # noqa: ASYNC110 - polling the clock is the point: no event to wait for
        await asyncio.sleep(0)
