"""Modbus TCP driver (``driver: modbus-tcp``), with its own MBAP framing.

Sample (rig file)::

    - name: chamber
      driver: modbus-tcp
      host: 10.0.4.17
      port: 502
      unit: 1
      interval: 2s
      timeout: 500ms
      points:
        - {name: temp_pv, table: holding, address: 100, type: int16, scale: 0.1}

Every instrument (unit id) behind one ``host:port`` shares one :class:`ModbusTcpLink`, that is one TCP
connection with one request in flight at a time (Modbus TCP gateways often cannot pipeline).

Why our own framing rather than pymodbus's client (which edge-daq used until the driver-overhead benchmark
showed it was the bottleneck: ``bench/driver_overhead.py`` measured edge-daq on pymodbus 3.16 at 0.70-0.77 of a
bare pymodbus loop, with most of a poll's CPU in pymodbus's transaction manager, framer and PDU objects): a
read is one 12-byte request and one reply whose registers the codec unpacks straight from the bytes, and the
protocol part is small. The framing also fixes what had to be worked around in pymodbus 3.16: it resent on
timeout with the same transaction id, closed a shared connection on its own after a few unanswered requests
(so one dead unit behind a gateway cut off its neighbours), took its response timeout from a connection-wide
setting, and let a request whose connection was closed by the server run into its timeout.

Here:

- Each request gets the next transaction id (1 to 65535, then 1 again). A reply is matched to its request by
  transaction id; a reply with no pending request (the late answer to a read that timed out, or a duplicate)
  is dropped and counted in the link's ``late_replies``.
- Devices that answer every request with transaction id 0 are common enough to be served, but only such
  devices: the first reply on a connection tells. If it echoes the request's id, the server echoes, and a
  reply with id 0 on that connection is never an answer (it is dropped as late). If it carries id 0 while
  exactly one request is in flight and none has timed out on the connection yet, it answers that request and
  the server is taken to answer with 0. Since a late reply of such a server cannot be told from the next
  request's answer, a timeout on that connection closes it (the scheduler reopens it at the next poll); and
  a reply with id 0 after a timeout, while the server has not yet shown which kind it is, closes it as well.
- The response timeout is the polling instrument's ``timeout``, one timer per request. Nothing is resent; the
  scheduler owns retries and decides when a link is closed and reopened.
- A reply must come from the unit asked, with the function code asked (or its exception bit set) and the byte
  count of the count asked; anything else is a protocol error of that read. A header that is not Modbus
  (protocol id not 0, a length Modbus cannot have) means the stream is out of step: the connection is closed
  at once. So does a request that times out with part of a frame in the buffer (half a frame then silence,
  or a length field longer than the frame, which would swallow the next replies): the next poll starts on a
  fresh connection instead of waiting for bytes that will never complete the frame.
- When the connection is closed by the server or the network, the request in flight fails at once as a lost
  connection, not after its timeout.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import struct
from collections.abc import Callable, Sequence
from typing import cast

from edge_daq.drivers.base import DriverPlugin
from edge_daq.drivers.modbus.config import ModbusTcpConfig
from edge_daq.drivers.modbus.planner import ReadRequest, is_bit_table
from edge_daq.drivers.modbus.reads import EXCEPTION_NAMES, ModbusInstrument, ModbusLink
from edge_daq.errors import (
    DeviceError,
    DriverConnectionError,
    DriverProtocolError,
    DriverTimeoutError,
)
from edge_daq.stats import LinkStats

MBAP_HEADER = struct.Struct(">HHHB")
"""Transaction id, protocol id (0), length of what follows (unit id and PDU), unit id."""
_READ_ADU = struct.Struct(">HHHBBHH")  # the header, then function code, address, count: a whole read request
_MAX_LENGTH = 254  # unit id + the largest PDU (253 bytes)
_HEADER_SIZE = 6  # the MBAP header up to and including its length field
_TRANSACTION_IDS = 0xFFFF


class NoReply(enum.Enum):
    """What a pending request's future holds when no reply came: the caller raises the matching error."""

    TIMED_OUT = enum.auto()
    CONNECTION_LOST = enum.auto()
    OUT_OF_STEP = enum.auto()


Outcome = bytes | NoReply


class _MbapProtocol(asyncio.Protocol):
    """Splits the byte stream into MBAP frames and hands each to the request waiting for its transaction id."""

    def __init__(self, link: ModbusTcpLink) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[Outcome]] = {}
        self.buffer = bytearray()
        self.closed = False
        self.zero_ids: bool | None = None
        """Whether the server answers every request with transaction id 0; None until its first reply."""
        self.timed_out = False
        """A request on this connection timed out (its reply may still come)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's TCP transport is not a subclass of asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while len(buffer) > _HEADER_SIZE:
            transaction, protocol, length = struct.unpack_from(">HHH", buffer)
            if protocol != 0 or not 2 <= length <= _MAX_LENGTH:
                self.resynchronise()
                return
            end = _HEADER_SIZE + length
            if len(buffer) < end:
                return
            frame = bytes(buffer[_HEADER_SIZE:end])  # unit id, then the PDU
            del buffer[:end]
            waiter = self.pending.pop(transaction, None)
            if waiter is not None:
                self.zero_ids = False if self.zero_ids is None else self.zero_ids
            elif transaction == 0 and self.zero_ids is not False and self.pending:
                if self.timed_out and self.zero_ids is None:
                    # A late answer or the answer to the request in flight: no way to tell, start afresh.
                    self.link.stats.late_replies += 1
                    self.resynchronise(garbled=False)
                    return
                if len(self.pending) == 1:
                    self.zero_ids = True
                    waiter = self.pending.pop(next(iter(self.pending)))
            if waiter is None or waiter.done():
                self.link.stats.late_replies += 1
            else:
                waiter.set_result(frame)

    def resynchronise(self, *, garbled: bool = True) -> None:
        """Out of step with the server: fail what is pending and close; the next poll opens a new connection."""
        if garbled:
            self.link.stats.garbled_frames += 1
        self.link.stats.reconnects += 1
        self.closed = True
        self._fail_all(NoReply.OUT_OF_STEP)
        self.buffer.clear()
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_all(NoReply.CONNECTION_LOST)

    def _fail_all(self, outcome: NoReply) -> None:
        pending, self.pending = self.pending, {}
        for waiter in pending.values():
            if not waiter.done():
                waiter.set_result(outcome)


def _expire(pending: dict[int, asyncio.Future[Outcome]], transaction: int) -> None:
    waiter = pending.pop(transaction, None)
    if waiter is not None and not waiter.done():
        waiter.set_result(NoReply.TIMED_OUT)


class ModbusTcpLink(ModbusLink):
    """One TCP connection to a Modbus server or gateway, shared by every unit id behind it."""

    def __init__(self, *, host: str, port: int, connect_timeout: float) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self._protocol: _MbapProtocol | None = None
        self._lock = asyncio.Lock()
        self._transaction = 0
        self.stats = LinkStats(link=self.describe)
        """``late_replies``: replies that matched no pending request (answers after a timeout, duplicates),
        dropped; ``garbled_frames``: headers that were not Modbus TCP and frames that stalled half-way, each of
        which closed the connection."""

    @property
    def describe(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def is_open(self) -> bool:
        return self._protocol is not None and not self._protocol.closed

    async def open(self) -> None:
        await self.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, protocol = await loop.create_connection(lambda: _MbapProtocol(self), self.host, self.port)
        except (OSError, TimeoutError) as exc:
            reason = f"no answer in {self.connect_timeout:g} s" if isinstance(exc, TimeoutError) else exc.strerror
            raise DriverConnectionError(f"cannot connect to {self.describe}: {reason or exc}") from exc
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # A gateway that vanishes without a FIN is noticed even while no request is pending.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._protocol = protocol

    async def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()

    async def read(self, request: ReadRequest, *, unit: int, response_timeout: float) -> bytes:
        """Execute one planned read and return the reply's data bytes (registers big endian, or packed bits)."""
        function = request.function_code
        async with self._lock:
            protocol = self._connected("")
            frame = await self._transact(
                protocol,
                lambda transaction: _READ_ADU.pack(transaction, 0, 6, unit, function, request.address, request.count),
                response_timeout,
            )
            if frame is NoReply.TIMED_OUT and self._after_timeout(protocol):
                raise DriverTimeoutError(
                    f"{self.describe} unit {unit}: no complete reply within {response_timeout:g} s "
                    "(part of a frame, then silence: out of step, reconnecting)"
                )
        if type(frame) is bytes and len(frame) > 2 and frame[0] == unit and frame[1] == function:
            expected = (request.count + 7) // 8 if is_bit_table(request.table) else 2 * request.count
            if frame[2] == expected and len(frame) == 3 + expected:
                return frame[3:]
        raise self._failure(frame, request, unit, response_timeout)

    async def exchange(self, pdu: bytes, *, unit: int, reply_length: int, response_timeout: float) -> bytes:
        """Send one request PDU (a write) and return the reply PDU from the unit asked; nothing is resent."""
        asked = f"FC{pdu[0]:02d}"
        async with self._lock:
            protocol = self._connected(f" ({asked} not sent)")
            frame = await self._transact(
                protocol,
                lambda transaction: MBAP_HEADER.pack(transaction, 0, len(pdu) + 1, unit) + pdu,
                response_timeout,
            )
            if frame is NoReply.TIMED_OUT:
                self._after_timeout(protocol)
        where = f"{self.describe} unit {unit}"
        if frame is NoReply.TIMED_OUT:
            raise DriverTimeoutError(f"{where}: no response within {response_timeout:g} s ({asked})")
        if frame is NoReply.CONNECTION_LOST:
            raise DriverConnectionError(f"{self.describe}: connection lost ({asked} unanswered)")
        if isinstance(frame, NoReply):
            raise DriverProtocolError(f"{self.describe}: reply is not Modbus TCP or out of step; reconnecting")
        if len(frame) < 2 or frame[0] != unit:
            raise DriverProtocolError(f"{where}: reply from another unit to {asked}")
        if frame[1] & 0x7F != pdu[0]:
            raise DriverProtocolError(f"{where}: reply with function code {frame[1]} to {asked}")
        return frame[1:]

    def _connected(self, detail: str) -> _MbapProtocol:
        protocol = self._protocol
        if protocol is None or protocol.closed or protocol.transport is None:
            raise DriverConnectionError(f"{self.describe} is not connected{detail}")
        return protocol

    async def _transact(self, protocol: _MbapProtocol, adu: Callable[[int], bytes], response_timeout: float) -> Outcome:
        """Send the ADU built for the next transaction id and wait for its reply (or why there is none)."""
        assert protocol.transport is not None
        self._transaction = transaction = self._transaction % _TRANSACTION_IDS + 1
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Outcome] = loop.create_future()
        pending = protocol.pending
        pending[transaction] = waiter
        protocol.transport.write(adu(transaction))
        # One timer rather than asyncio.timeout: no task cancellation on the common path (driver overhead).
        timer = loop.call_later(response_timeout, _expire, pending, transaction)
        try:
            return await waiter
        finally:
            timer.cancel()
            if pending.get(transaction) is waiter:
                del pending[transaction]

    def _after_timeout(self, protocol: _MbapProtocol) -> bool:
        """Resynchronise if the timeout shows the stream out of step; True if part of a frame was pending."""
        protocol.timed_out = True
        if protocol.buffer:
            # Part of a frame that did not complete in a whole response timeout: the stream is out of step (a
            # length field longer than its frame, or a server that stopped half-way). Waiting only lets the
            # stale part swallow the next replies.
            protocol.resynchronise()
            return True
        if protocol.zero_ids:
            # A late reply of a server that answers with id 0 would be taken for the next request's.
            protocol.resynchronise(garbled=False)
        return False

    def _failure(self, frame: Outcome, request: ReadRequest, unit: int, response_timeout: float) -> Exception:
        where = f"{self.describe} unit {unit}"
        asked = f"FC{request.function_code:02d} at {request.address} count {request.count}"
        if frame is NoReply.TIMED_OUT:
            return DriverTimeoutError(f"{where}: no response within {response_timeout:g} s ({asked})")
        if frame is NoReply.CONNECTION_LOST:
            return DriverConnectionError(f"{self.describe}: connection lost ({asked} unanswered)")
        if isinstance(frame, NoReply):
            return DriverProtocolError(f"{self.describe}: reply is not Modbus TCP or out of step; reconnecting")
        if frame[0] != unit:
            return DriverProtocolError(f"{where}: reply from unit {frame[0]} to {asked}")
        if len(frame) == 3 and frame[1] == request.function_code | 0x80:
            code = frame[2]
            name = EXCEPTION_NAMES.get(code, "unknown exception")
            return DeviceError(f"{where}: exception {code:02d} ({name}) for {asked}")
        if frame[1] != request.function_code:
            return DriverProtocolError(f"{where}: reply with function code {frame[1]} to {asked}")
        return DriverProtocolError(f"{where}: reply of {len(frame) - 1} bytes does not fit {asked}")


class ModbusTcpInstrument(ModbusInstrument[ModbusTcpConfig, ModbusTcpLink]):
    """A Modbus TCP unit: the shared plan and poll over an MBAP connection."""


class ModbusTcpPlugin(DriverPlugin[ModbusTcpConfig, ModbusTcpLink]):
    def link_key(self, config: ModbusTcpConfig) -> str:
        return f"tcp://{config.host}:{config.port}"

    def open_link(self, configs: Sequence[ModbusTcpConfig]) -> ModbusTcpLink:
        first = configs[0]
        # The slowest instrument on the endpoint bounds how long a connect may take.
        return ModbusTcpLink(
            host=first.host, port=first.port, connect_timeout=max(config.timeout for config in configs)
        )

    def make_instrument(self, config: ModbusTcpConfig) -> ModbusTcpInstrument:
        return ModbusTcpInstrument(config)


PLUGIN = ModbusTcpPlugin()
