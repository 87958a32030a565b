"""Byte channels for the serial-minded drivers (Modbus RTU, SCPI/ASCII): a serial port or a raw TCP socket.

Both feed one receive buffer from the event loop (``add_reader`` on the serial port's file descriptor, a
``Protocol`` on the socket), so a driver never blocks the loop, and both report a lost device the same way:
:class:`~edge_daq.errors.DriverConnectionError` from the next :meth:`ByteChannel.wait_data` or
:meth:`ByteChannel.write`.

Why not pyserial or pyserial-asyncio: pyserial's ``Serial`` is blocking, pyserial-asyncio is an extra
dependency whose transport hides the receive buffer we need to flush before each request. Opening a tty and
setting it raw with the stdlib ``termios`` is a few lines, fully typed, and lets the kernel's input queue
be flushed (``tcflush``) right before a request, which is what keeps a late reply from being taken for the
next one.

The receive buffer is bounded (:attr:`ByteChannel.limit`): a peer that streams without end, or a reply far
longer than the protocol allows, fills it to the limit, the channel stops reading (the kernel's buffers and
TCP flow control hold back the rest) and marks itself :attr:`~ByteChannel.overflowed`; the driver then
reports the error and closes the channel, which is the only sure way back in step with such a peer.

A USB adapter that is unplugged makes the descriptor hang up (``read`` returns EIO or end of file): the
channel marks itself lost, the scheduler closes it and reopens it with backoff, and :meth:`SerialChannel.open`
reports a missing device path clearly until the adapter is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import termios
from abc import ABC, abstractmethod
from typing import Literal, Protocol

from edge_daq.errors import DriverConnectionError

Parity = Literal["N", "E", "O"]

_READ_CHUNK = 4096
DEFAULT_INPUT_LIMIT = 64 * 1024


class ByteChannel(ABC):
    """A byte pipe with a receive buffer filled by the event loop."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self._data_event = asyncio.Event()
        self._lost: str | None = None
        self.opened = False
        self.last_received = 0.0
        """Loop time of the last bytes received (for inter-frame silence)."""
        self.limit = DEFAULT_INPUT_LIMIT
        """Bytes the receive buffer holds at most; what comes beyond them is not read (see :attr:`overflowed`)."""
        self.overflowed = False
        """Set when the buffer reached :attr:`limit`; cleared when the channel is opened again."""

    @property
    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def _write(self, data: bytes) -> None: ...

    @abstractmethod
    def _flush_os_input(self) -> None: ...

    @abstractmethod
    def _pause_input(self) -> None:
        """Stop reading from the device until the channel is opened again."""

    @property
    def is_open(self) -> bool:
        return self.opened and self._lost is None

    def _reset(self) -> None:
        self.buffer.clear()
        self._data_event = asyncio.Event()
        self._lost = None
        self.overflowed = False

    def _received(self, data: bytes) -> None:
        if self.overflowed:
            return
        room = self.limit - len(self.buffer)
        if len(data) > room:
            self.buffer += data[: max(room, 0)]
            self.overflowed = True
            self._pause_input()
        else:
            self.buffer += data
        self.last_received = asyncio.get_running_loop().time()
        self._data_event.set()

    def _connection_lost(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
        self._data_event.set()

    def check(self) -> None:
        """Raise :class:`DriverConnectionError` if the channel is closed or was lost."""
        if not self.opened:
            raise DriverConnectionError(f"{self.describe} is not open")
        if self._lost is not None:
            raise DriverConnectionError(f"{self.describe}: {self._lost}")

    def discard_input(self) -> int:
        """Drop everything received so far, in our buffer and in the kernel's; returns the bytes dropped."""
        self.check()
        self._flush_os_input()
        dropped = len(self.buffer)
        self.buffer.clear()
        self._data_event.clear()
        return dropped

    async def write(self, data: bytes) -> None:
        self.check()
        await self._write(data)

    async def wait_data(self, within: float) -> bool:
        """Wait until bytes arrive (True) or ``within`` seconds pass (False); raise if the link is lost."""
        self.check()
        self._data_event.clear()
        if within <= 0:
            return False
        try:
            async with asyncio.timeout(within):
                await self._data_event.wait()
        except TimeoutError:
            return False
        self.check()
        return True


def _speed(baudrate: int) -> int:
    speed = getattr(termios, f"B{baudrate}", None)
    if not isinstance(speed, int):
        raise DriverConnectionError(f"baud rate {baudrate} is not supported by this system's serial driver")
    return speed


class SerialSettings(Protocol):
    """The serial keys of an instrument config (``modbus-rtu``, ``scpi-serial``)."""

    @property
    def port(self) -> str: ...
    @property
    def baudrate(self) -> int: ...
    @property
    def bytesize(self) -> int: ...
    @property
    def parity(self) -> Parity: ...
    @property
    def stopbits(self) -> int: ...


class SerialChannel(ByteChannel):
    """A serial port (or pseudo-terminal) in raw mode, non-blocking, opened exclusively."""

    def __init__(
        self,
        *,
        path: str,
        baudrate: int,
        bytesize: int = 8,
        parity: Parity = "N",
        stopbits: int = 1,
    ) -> None:
        super().__init__()
        self.path = path
        self.baudrate = baudrate
        self.bytesize = bytesize
        self.parity: Parity = parity
        self.stopbits = stopbits
        self._fd: int | None = None
        self._writable: asyncio.Future[None] | None = None

    @classmethod
    def for_port(cls, settings: SerialSettings) -> SerialChannel:
        """The channel of an instrument's serial port (every instrument on a port shares its settings)."""
        return cls(
            path=settings.port,
            baudrate=settings.baudrate,
            bytesize=settings.bytesize,
            parity=settings.parity,
            stopbits=settings.stopbits,
        )

    @property
    def describe(self) -> str:
        return f"serial://{self.path}"

    @property
    def bits_per_character(self) -> int:
        """Start bit, data bits, parity bit if any, stop bits: what one byte costs on the line."""
        return 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits

    async def open(self) -> None:
        await self.close()
        self._reset()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise DriverConnectionError(
                f"serial port {self.path} does not exist (adapter unplugged, or a wrong path)"
            ) from None
        except PermissionError:
            raise DriverConnectionError(
                f"no permission to open {self.path} (is the daemon's user in the dialout group?)"
            ) from None
        except OSError as exc:
            raise DriverConnectionError(f"cannot open {self.path}: {exc.strerror}") from exc
        try:
            self._configure(fd)
        except (OSError, termios.error) as exc:
            os.close(fd)
            if isinstance(exc, OSError) and exc.errno == errno.EBUSY:
                raise DriverConnectionError(f"{self.path} is in use by another program") from exc
            raise DriverConnectionError(f"cannot configure {self.path}: {exc}") from exc
        except DriverConnectionError:
            os.close(fd)
            raise
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._readable)
        self.opened = True

    def _configure(self, fd: int) -> None:
        if not os.isatty(fd):
            raise DriverConnectionError(f"{self.path} is not a serial port (not a terminal device)")
        fcntl.ioctl(fd, termios.TIOCEXCL)  # a second program opening the port fails instead of stealing bytes
        speed = _speed(self.baudrate)
        iflag, oflag, cflag, lflag, _ispeed, _ospeed, cc = termios.tcgetattr(fd)
        iflag = termios.INPCK if self.parity != "N" else 0  # a byte with a parity error reads as 0: CRC fails
        oflag = 0
        lflag = 0  # raw: no echo, no line editing, no signals
        cflag = termios.CLOCAL | termios.CREAD | (termios.CS8 if self.bytesize == 8 else termios.CS7)
        # A pseudo-terminal (a simulator, socat) has no line: Linux drops the parity bit from its settings and
        # then refuses to set it again (EINVAL at the second open), so framing bits are set on real ports only.
        if not os.ttyname(fd).startswith("/dev/pts/"):
            if self.parity != "N":
                cflag |= termios.PARENB | (termios.PARODD if self.parity == "O" else 0)
            if self.stopbits == 2:
                cflag |= termios.CSTOPB
        cc[termios.VMIN] = 0
        cc[termios.VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, speed, speed, cc])
        termios.tcflush(fd, termios.TCIOFLUSH)

    def _readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            self._hang_up(f"device lost ({exc.strerror})")
            return
        if not data:
            self._hang_up("device hung up")
            return
        self._received(data)

    def _pause_input(self) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)

    def _hang_up(self, reason: str) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
        self._connection_lost(reason)

    def _flush_os_input(self) -> None:
        if self._fd is not None:
            try:
                termios.tcflush(self._fd, termios.TCIFLUSH)
            except termios.error as exc:
                self._hang_up(f"device lost ({exc})")
                self.check()

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        loop = asyncio.get_running_loop()
        while view:
            fd = self._fd
            assert fd is not None
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                self._hang_up(f"device lost ({exc.strerror})")
                self.check()
                return
            view = view[written:]
            if view:  # the kernel's output queue is full: wait until the descriptor is writable again
                waiter: asyncio.Future[None] = loop.create_future()
                loop.add_writer(fd, waiter.set_result, None)
                try:
                    await waiter
                finally:
                    loop.remove_writer(fd)

    async def close(self) -> None:
        fd, self._fd = self._fd, None
        self.opened = False
        if fd is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(fd)
            loop.remove_writer(fd)
            with contextlib.suppress(OSError):
                fcntl.ioctl(fd, termios.TIOCNXCL)  # the exclusive flag outlives us if another descriptor is open
            os.close(fd)
        self._data_event.set()


class _ChannelProtocol(asyncio.Protocol):
    def __init__(self, channel: TcpChannel) -> None:
        self.channel = channel
        self.connection = channel.connections
        """Which of the channel's connections this is: a closed one's late callbacks must not reach the next."""

    @property
    def current(self) -> bool:
        return self.connection == self.channel.connections

    def data_received(self, data: bytes) -> None:
        if self.current:
            self.channel._received(data)

    def eof_received(self) -> bool | None:
        if self.current:
            self.channel._connection_lost("the peer closed the connection")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.current:
            self.channel._connection_lost("connection lost" if exc is None else f"connection lost ({exc})")


class TcpChannel(ByteChannel):
    """A raw TCP socket: a serial device server (RTU over TCP) or a SCPI raw socket (port 5025)."""

    def __init__(self, *, host: str, port: int, connect_timeout: float, scheme: str = "tcp") -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.scheme = scheme
        self._transport: asyncio.Transport | None = None
        self.connections = 0
        """Incremented at each open and close."""

    @property
    def describe(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    async def open(self) -> None:
        await self.close()
        self._reset()
        self.connections += 1
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, _ = await loop.create_connection(lambda: _ChannelProtocol(self), self.host, self.port)
        except (OSError, TimeoutError) as exc:
            reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise DriverConnectionError(f"cannot connect to {self.describe}: {reason}") from exc
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._transport = transport
        self.opened = True

    def _flush_os_input(self) -> None:
        """Bytes still in the kernel's socket buffer reach :meth:`_received` on the next loop turn; the
        drivers cope by matching replies to their request, not by trusting the first bytes."""

    def _pause_input(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    async def _write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        self.opened = False
        self.connections += 1
        if transport is not None:
            transport.abort()
        self._data_event.set()
