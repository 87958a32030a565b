"""Scripted hostile instruments on real loopback sockets: each request line (SCPI) or request frame (Modbus TCP)
goes to a script that decides what, and when, to answer."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

LineScript = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]
"""Called with each received line (without its ``\\n``) and the connection's writer."""

FrameScript = Callable[[int, int, int, int, int, asyncio.StreamWriter], Awaitable[None]]
"""Called with (transaction, unit, function, address, count) of each Modbus TCP read request, and the writer."""


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def tcp_server(handle: Handler) -> AsyncIterator[int]:
    """A TCP server on a free loopback port that runs ``handle`` for each connection; yields the port."""
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # a cancelled handler ends quietly: asyncio.start_server would log its CancelledError
        finally:
            tasks.discard(task)
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        for task in list(tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.wait_closed()


@asynccontextmanager
async def line_server(script: LineScript) -> AsyncIterator[int]:
    """A TCP server that hands each ``\\n``-terminated line to ``script``; yields its port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            await script(line.rstrip(b"\r\n"), writer)

    async with tcp_server(handle) as port:
        yield port


@asynccontextmanager
async def modbus_server(script: FrameScript) -> AsyncIterator[int]:
    """A TCP server that reads whole 12-byte Modbus TCP read requests and hands each to ``script``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await reader.readexactly(12)
            transaction, _, _, unit, function, address, count = struct.unpack(">HHHBBHH", request)
            await script(transaction, unit, function, address, count, writer)

    async with tcp_server(handle) as port:
        yield port


def mbap_reply(transaction: int, unit: int, values: list[int], function: int = 3) -> bytes:
    """A whole read-registers reply frame."""
    pdu = struct.pack(f">BB{len(values)}H", function, 2 * len(values), *values)
    return struct.pack(">HHHB", transaction, 0, len(pdu) + 1, unit) + pdu


async def stream_forever(writer: asyncio.StreamWriter, chunk: bytes) -> None:
    """Send ``chunk`` again and again, as fast as the peer reads, until the connection closes."""
    while not writer.is_closing():
        writer.write(chunk)
        await writer.drain()
