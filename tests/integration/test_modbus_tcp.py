"""The Modbus TCP driver against real pymodbus servers on free loopback ports, and against scripted servers for
the faults no real server produces (garbled headers, wrong units, transaction id 0, a close mid-request)."""

from __future__ import annotations

import asyncio
import itertools
import re
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_daq import drivers
from edge_daq.drivers.modbus.config import ModbusTcpConfig
from edge_daq.drivers.modbus.tcp import PLUGIN, ModbusTcpInstrument, ModbusTcpLink
from edge_daq.errors import DeviceError, DriverConnectionError, DriverProtocolError, DriverTimeoutError
from edge_daq.record import Record
from edge_daq.scheduling import LinkScheduler, RecordBuilder, ScheduledInstrument
from edge_daq.stats import InstrumentStats
from tests.hostile_servers import FrameScript, mbap_reply, modbus_server
from tests.modbus_wire import ORDERS, encode


# Telegraf's layouts, letter by letter (see test_modbus_codec.py for the known vectors).
def runs(registers: Mapping[int, int]) -> list[SimData]:
    """Contiguous runs of defined registers; every other address answers exception 02."""
    blocks: list[SimData] = []
    run: list[int] = []
    start = previous = -2
    for address in sorted(registers):
        if address != previous + 1 and run:
            blocks.append(SimData(start, values=run, datatype=DataType.REGISTERS))
            run = []
        if not run:
            start = address
        run.append(registers[address])
        previous = address
    if run:
        blocks.append(SimData(start, values=run, datatype=DataType.REGISTERS))
    return blocks


class Server:
    """A pymodbus TCP server on loopback with known register contents; records every request it receives."""

    def __init__(
        self,
        *,
        holding: Mapping[int, int] | None = None,
        inputs: Mapping[int, int] | None = None,
        coils: Sequence[bool] = (False,) * 16,
        discretes: Sequence[bool] = (False,) * 16,
        unit: int = 1,
        other_units: Mapping[int, Mapping[int, int]] | None = None,
    ) -> None:
        device = SimDevice(
            id=unit,
            simdata=(
                [SimData(0, values=list(coils), datatype=DataType.BITS)],
                [SimData(0, values=list(discretes), datatype=DataType.BITS)],
                runs(holding or {0: 0}),
                runs(inputs or {0: 0}),
            ),
        )
        # More unit ids behind the same endpoint, as behind a Modbus TCP gateway (one shared register block).
        self.devices = [device] + [
            SimDevice(id=other, simdata=runs(registers)) for other, registers in (other_units or {}).items()
        ]
        self.requests: list[tuple[int, int, int]] = []  # (function code, address, count)
        self.port = 0
        self._server: ModbusTcpServer | None = None

    def _trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.requests.append((pdu.function_code, pdu.address, pdu.count))
        return pdu

    async def start(self) -> None:
        # Port 0 the first time; the same port again after a stop, as a restarted instrument would.
        server = ModbusTcpServer(self.devices, address=("127.0.0.1", self.port), trace_pdu=self._trace)
        await server.serve_forever(background=True)
        self.port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._server = server

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]


@asynccontextmanager
async def serving(**contents: Any) -> AsyncIterator[Server]:
    server = Server(**contents)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def config(port: int, points: list[dict[str, Any]], **keys: Any) -> ModbusTcpConfig:
    return ModbusTcpConfig.model_validate(
        {"name": "chamber", "driver": "modbus-tcp", "host": "127.0.0.1", "port": port, "timeout": "500ms"}
        | keys
        | {"points": points}
    )


@asynccontextmanager
async def connected(cfg: ModbusTcpConfig) -> AsyncIterator[tuple[ModbusTcpLink, ModbusTcpInstrument]]:
    link = PLUGIN.open_link([cfg])
    await link.open()
    try:
        yield link, PLUGIN.make_instrument(cfg)
    finally:
        await link.close()


def test_plugin_contract() -> None:
    cfg = config(1502, [{"name": "t", "address": 0}])
    assert drivers.plugin("modbus-tcp") is PLUGIN
    assert drivers.config_model("modbus-tcp") is ModbusTcpConfig
    assert PLUGIN.link_key(cfg) == "tcp://127.0.0.1:1502"
    link = PLUGIN.open_link([cfg, cfg.model_copy(update={"timeout": 3.0})])
    assert link.describe == "tcp://127.0.0.1:1502"
    assert link.connect_timeout == 3.0
    assert not link.is_open


TYPE_CASES: list[tuple[str, float]] = [
    ("int16", -1234),
    ("uint16", 0xBEEF),
    ("int32", -123456789),
    ("uint32", 4_000_000_000),
    ("int64", -(2**63)),
    ("int64", 2**63 - 1),
    ("uint64", 2**63 - 1),
    ("float32", 1.5),
    ("float32", -123.25),
    ("float64", -1234.5678),
]


async def test_every_type_and_byte_order_over_tcp() -> None:
    holding: dict[int, int] = {}
    points: list[dict[str, Any]] = []
    expected: dict[str, object] = {}
    address = 0
    for order in ORDERS:
        for index, (point_type, value) in enumerate(TYPE_CASES):
            name = f"{point_type}_{index}_{order}"
            for offset, register in enumerate(encode(point_type, value, order)):
                holding[address + offset] = register
            points.append({"name": name, "address": address, "type": point_type, "byte_order": order})
            expected[name] = value
            address += 4  # contiguous enough to merge, aligned for every type
        # The string in each order: ABCD/CDAB put the first character in the high byte.
        text = b"F4-SIM\x00\x00  "
        swap = order in ("BADC", "DCBA")
        for i in range(5):
            pair = text[2 * i : 2 * i + 2]
            holding[address + i] = int.from_bytes(pair[::-1] if swap else pair, "big")
        points.append({"name": f"model_{order}", "address": address, "type": "string", "length": 10})
        points[-1]["byte_order"] = order
        expected[f"model_{order}"] = "F4-SIM"
        address += 5
    for unused in range(address):  # the server answers exception 02 for registers it does not define
        holding.setdefault(unused, 0xFFFF)
    async with serving(holding=holding) as server, connected(config(server.port, points)) as (link, instrument):
        result = await instrument.poll(link)
    assert result.failed == []
    assert result.errors == []
    assert result.fields == expected
    for name, decoded in result.fields.items():
        assert type(decoded) is type(expected[name]), name
    # One FC03 per planned read, each exactly as planned, and the whole table needs ceil(n / 125) reads.
    planned = [(3, r.address, r.count) for r in instrument.requests]
    assert server.requests == planned
    assert len(planned) == -(-address // 125)


async def test_scale_offset_and_bits_of_a_register() -> None:
    holding = {100: encode("int16", -215, "ABCD")[0], 101: 0b1000_0000_0000_1000, 102: 0}
    points = [
        {"name": "temp_pv", "address": 100, "type": "int16", "scale": 0.1},
        {"name": "temp_f", "address": 100, "type": "int16", "scale": 0.18, "offset": 32},
        {"name": "door_open", "address": 101, "type": "bool", "bit": 3},
        {"name": "alarm", "address": 101, "type": "bool", "bit": 15},
        {"name": "heater", "address": 101, "type": "bool", "bit": 0},
        {"name": "raw", "address": 102},
    ]
    async with serving(holding=holding) as server, connected(config(server.port, points)) as (link, instrument):
        result = await instrument.poll(link)
    assert result.fields["temp_pv"] == pytest.approx(-21.5)
    assert result.fields["temp_f"] == pytest.approx(-6.7)
    assert (result.fields["door_open"], result.fields["alarm"], result.fields["heater"]) == (True, True, False)
    assert result.fields["raw"] == 0
    assert type(result.fields["raw"]) is int
    assert server.requests == [(3, 100, 3)]


async def test_coils_discretes_and_input_registers() -> None:
    coils = [False] * 32
    coils[3] = coils[31] = True
    discretes = [True] * 32
    discretes[17] = False
    points = [
        {"name": "fan", "table": "coil", "address": 3, "type": "bool"},
        {"name": "pump", "table": "coil", "address": 4, "type": "bool"},
        {"name": "last", "table": "coil", "address": 31, "type": "bool"},
        {"name": "door", "table": "discrete", "address": 17, "type": "bool"},
        {"name": "estop", "table": "discrete", "address": 0, "type": "bool"},
        {"name": "rh", "table": "input", "address": 7, "type": "uint16", "scale": 0.01},
    ]
    contents: dict[str, Any] = {"coils": coils, "discretes": discretes, "inputs": {7: 4550}}
    async with serving(**contents) as server, connected(config(server.port, points)) as (link, instrument):
        result = await instrument.poll(link)
    assert result.fields == {"fan": True, "pump": False, "last": True, "door": False, "estop": True, "rh": 45.5}
    assert server.requests == [(1, 3, 29), (2, 0, 18), (4, 7, 1)]


@pytest.mark.parametrize("address_base", [0, 1])
async def test_address_base(address_base: int) -> None:
    holding = {39: 0x1111, 40: 0x2222, 41: 0x3333}
    points = [{"name": "value", "address": 40, "type": "uint16"}]
    async with (
        serving(holding=holding) as server,
        connected(config(server.port, points, address_base=address_base)) as (link, instrument),
    ):
        result = await instrument.poll(link)
    # address_base 1: register number 40 as printed in a manual is protocol address 39.
    assert result.fields == {"value": 0x2222 if address_base == 0 else 0x1111}
    assert server.requests == [(3, 40 - address_base, 1)]


async def test_unit_ids_share_one_link() -> None:
    async with serving(holding={0: 7}, unit=5, other_units={9: {0: 99}}) as server:
        five = config(server.port, [{"name": "v", "address": 0}], unit=5)
        nine = config(server.port, [{"name": "v", "address": 0}], unit=9, name="nine")
        assert PLUGIN.link_key(five) == PLUGIN.link_key(nine)
        async with connected(five) as (link, instrument_five):
            instrument_nine = PLUGIN.make_instrument(nine)
            for _ in range(3):
                assert (await instrument_five.poll(link)).fields == {"v": 7}
                assert (await instrument_nine.poll(link)).fields == {"v": 99}


async def test_exception_02_fails_only_its_read() -> None:
    holding = {0: 1, 1: 2, 500: 3}
    points = [
        {"name": "a", "address": 0},
        {"name": "b", "address": 1},
        {"name": "missing", "address": 300},  # not served: exception 02 for this read only
        {"name": "c", "address": 500},
    ]
    async with serving(holding=holding) as server, connected(config(server.port, points)) as (link, instrument):
        result = await instrument.poll(link)
        assert server.requests == [(3, 0, 2), (3, 300, 1), (3, 500, 1)]
    assert result.fields == {"a": 1, "b": 2, "c": 3}
    assert result.failed == ["missing"]
    assert len(result.errors) == 1
    assert isinstance(result.errors[0], DeviceError)
    assert "exception 02" in str(result.errors[0])


async def test_every_read_failing_raises_the_first_error() -> None:
    points = [{"name": "x", "address": 300}, {"name": "y", "address": 900}]
    async with serving(holding={0: 0}) as server, connected(config(server.port, points)) as (link, instrument):
        with pytest.raises(DeviceError, match=r"exception 02 .* at 300"):
            await instrument.poll(link)
        assert len(server.requests) == 2


async def test_open_fails_with_connection_error_when_nothing_listens() -> None:
    server = Server()
    await server.start()
    port = server.port
    await server.stop()
    link = PLUGIN.open_link([config(port, [{"name": "v", "address": 0}])])
    with pytest.raises(DriverConnectionError, match=f"tcp://127.0.0.1:{port}"):
        await link.open()
    assert not link.is_open


async def test_server_stopped_then_restarted_on_the_same_port() -> None:
    server = Server(holding={0: 42})
    await server.start()
    cfg = config(server.port, [{"name": "v", "address": 0}], timeout="300ms")
    link = PLUGIN.open_link([cfg])
    instrument = PLUGIN.make_instrument(cfg)
    try:
        await link.open()
        assert (await instrument.poll(link)).fields == {"v": 42}

        await server.stop()
        started = time.monotonic()
        with pytest.raises((DriverConnectionError, DriverTimeoutError)):
            await instrument.poll(link)
        assert time.monotonic() - started < cfg.timeout + 0.5

        # What the scheduler does after a failure: close, then reopen with its own backoff.
        await link.close()
        with pytest.raises(DriverConnectionError):
            await link.open()

        await server.start()
        await link.close()
        await link.open()
        assert (await instrument.poll(link)).fields == {"v": 42}
    finally:
        await link.close()
        await server.stop()


async def test_connection_lost_between_polls_is_reported_as_such() -> None:
    server = Server(holding={0: 1})
    await server.start()
    cfg = config(server.port, [{"name": "v", "address": 0}])
    try:
        async with connected(cfg) as (link, instrument):
            await instrument.poll(link)
            await server.stop()
            # The server's close reaches the client as EOF; the next poll must not try to send at all.
            for _ in range(100):
                if not link.is_open:
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(DriverConnectionError, match="not connected"):
                await instrument.poll(link)
    finally:
        await server.stop()


def silent_server() -> AbstractAsyncContextManager[int]:
    """Accepts connections and reads requests, never answers (a hung device or a dead gateway path)."""
    return scripted_server(lambda transaction, unit, function, address, count: b"")


async def test_silent_server_times_out_within_the_timeout() -> None:
    points = [{"name": "a", "address": 0}, {"name": "b", "address": 1000}]
    async with silent_server() as port, connected(config(port, points, timeout="200ms")) as (link, instrument):
        started = time.monotonic()
        with pytest.raises(DriverTimeoutError, match=re.escape("no response within 0.2 s")):
            await instrument.poll(link)
        elapsed = time.monotonic() - started
        # One timeout, not one per read: the poll stops at the first unanswered read.
        assert 0.2 <= elapsed < 0.2 + 0.15
        # The link stays open: pymodbus's own close-after-N-timeouts is disabled, the scheduler decides.
        for _ in range(5):
            with pytest.raises(DriverTimeoutError):
                await instrument.poll(link)
        assert link.is_open


@asynccontextmanager
async def late_answering_server(registers: Mapping[int, int], delays: Mapping[int, float]) -> AsyncIterator[int]:
    """A minimal Modbus TCP server for FC03 that answers each request after a per-address delay, concurrently.

    pymodbus's own server cannot play this part: when a second request arrives while the first is still
    being handled, it answers the first with the second's transaction id (``handle_request`` reads the
    connection's latest request), which is exactly the misattribution this test must rule out on the client.
    """

    async def answer(writer: asyncio.StreamWriter, header: bytes, address: int, count: int) -> None:
        await asyncio.sleep(delays.get(address, 0.0))
        tid, _, _, unit = struct.unpack(">HHHB", header)
        values = [registers[address + i] for i in range(count)]
        pdu = struct.pack(f">BB{count}H", 3, 2 * count, *values)
        writer.write(struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.TaskGroup() as replies:
                while True:
                    frame = await reader.readexactly(12)
                    function_code, address, count = struct.unpack(">BHH", frame[7:])
                    assert function_code == 3
                    replies.create_task(answer(writer, frame[:7], address, count), name=f"reply-{address}")
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_late_reply_is_never_taken_for_the_next_request() -> None:
    """A reply that arrives after its request timed out must not be attributed to the pending request.

    Both reads ask for two registers, so a misattributed reply would decode without any error. The slow read
    is answered at 0.4 s, after its 0.15 s timeout, while the next read (sent at 0.15 s, answered at 0.6 s) is
    in flight; the link must drop the stale frame by its transaction id.
    """
    registers = {100: 0xAAAA, 101: 0xAAAA, 200: 0x0001, 201: 0x0002}
    async with late_answering_server(registers, {100: 0.4, 200: 0.45}) as port:
        slow = config(port, [{"name": "v", "address": 100, "type": "uint32"}], timeout="150ms")
        next_one = config(port, [{"name": "v", "address": 200, "type": "uint32"}], timeout="2s", name="n")
        async with connected(slow) as (link, slow_instrument):
            with pytest.raises(DriverTimeoutError):
                await slow_instrument.poll(link)
            started = time.monotonic()
            result = await PLUGIN.make_instrument(next_one).poll(link)
            assert time.monotonic() - started > 0.4  # the stale reply came and went while it was pending
            assert result.fields == {"v": 0x00010002}
            assert link.stats.late_replies == 1
            # The link is still good: the slow device read with a long enough timeout.
            relaxed = PLUGIN.make_instrument(slow.model_copy(update={"timeout": 2.0}))
            assert (await relaxed.poll(link)).fields == {"v": 0xAAAAAAAA}


# A scripted server's answer to one request: the bytes to send back (b"" sends nothing), or None to close.
Answer = Callable[[int, int, int, int, int], bytes | None]


def reply_frame(transaction: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", transaction, 0, len(pdu) + 1, unit) + pdu


def registers_pdu(values: Sequence[int], function: int = 3) -> bytes:
    return struct.pack(f">BB{len(values)}H", function, 2 * len(values), *values)


@asynccontextmanager
async def scripted_server(answer: Answer) -> AsyncIterator[int]:
    """Reads whole 12-byte read requests and sends what ``answer(transaction, unit, function, address, count)``
    gives back, at once."""

    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            while True:
                request = await reader.readexactly(12)
                transaction, _, _, unit, function, address, count = struct.unpack(">HHHBBHH", request)
                reply = answer(transaction, unit, function, address, count)
                if reply is None:
                    break
                writer.write(reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_reply_bytes_split_and_coalesced_are_reassembled() -> None:
    """TCP keeps no message boundaries: a reply may come in pieces, or two replies in one segment."""
    state = {"requests": 0}

    def answer(transaction: int, unit: int, function: int, address: int, count: int) -> bytes:
        state["requests"] += 1
        return reply_frame(transaction, unit, registers_pdu([address + i for i in range(count)]))

    async with scripted_server(answer) as port:
        cfg = config(port, [{"name": "a", "address": 0, "type": "uint32"}, {"name": "b", "address": 500}])
        async with connected(cfg) as (link, instrument):
            assert (await instrument.poll(link)).fields == {"a": 1, "b": 500}
            # Feed the framing directly: one reply byte by byte, then a reply glued to a stray one.
            protocol = link._protocol
            assert protocol is not None
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[object] = loop.create_future()
            protocol.pending[7] = waiter  # type: ignore[assignment]
            frame = reply_frame(7, 1, registers_pdu([42]))
            for byte in frame:
                assert not waiter.done()
                protocol.data_received(bytes([byte]))
            assert waiter.result() == frame[6:]
            protocol.data_received(reply_frame(999, 1, registers_pdu([1])) + reply_frame(998, 1, registers_pdu([2])))
            assert link.stats.late_replies == 2


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (lambda t, u: reply_frame(t, u + 1, registers_pdu([1, 2])), "reply from unit 2"),
        (lambda t, u: reply_frame(t, u, registers_pdu([1, 2], function=4)), "function code 4"),
        (lambda t, u: reply_frame(t, u, registers_pdu([1])), "does not fit FC03 at 0 count 2"),
    ],
    ids=["wrong unit", "wrong function", "short reply"],
)
async def test_reply_that_does_not_match_the_request_is_a_protocol_error(
    reply: Callable[[int, int], bytes], message: str
) -> None:
    async with scripted_server(lambda t, u, f, a, c: reply(t, u)) as port:
        cfg = config(port, [{"name": "v", "address": 0, "type": "uint32"}])
        async with connected(cfg) as (link, instrument):
            with pytest.raises(DriverProtocolError, match=message):
                await instrument.poll(link)
            assert link.is_open  # the stream is still in step: only that read failed


async def test_garbled_header_closes_the_connection() -> None:
    http = b"HTTP/1.1 400 Bad Request\r\n\r\n"  # a web server where a Modbus server was expected
    async with scripted_server(lambda t, u, f, a, c: http) as port:
        link = PLUGIN.open_link([config(port, [{"name": "v", "address": 0}])])
        await link.open()
        with pytest.raises(DriverProtocolError, match="not Modbus TCP"):
            await PLUGIN.make_instrument(config(port, [{"name": "v", "address": 0}])).poll(link)
        assert link.stats.garbled_frames == 1
        assert not link.is_open
        await link.close()


async def test_device_answering_with_transaction_id_zero_is_accepted() -> None:
    def answer(transaction: int, unit: int, function: int, address: int, count: int) -> bytes:
        return reply_frame(0, unit, registers_pdu([address + 7]))

    async with scripted_server(answer) as port, connected(config(port, [{"name": "v", "address": 5}])) as (link, inst):
        for _ in range(3):
            assert (await inst.poll(link)).fields == {"v": 12}
        assert link.stats.late_replies == 0


async def test_close_mid_request_fails_at_once_as_a_lost_connection() -> None:
    async with scripted_server(lambda t, u, f, a, c: None) as port:
        cfg = config(port, [{"name": "v", "address": 0}], timeout="5s")
        async with connected(cfg) as (link, instrument):
            started = time.monotonic()
            with pytest.raises(DriverConnectionError, match="connection lost"):
                await instrument.poll(link)
            assert time.monotonic() - started < 1.0  # not the 5 s timeout
            assert not link.is_open


async def test_transaction_ids_wrap_and_skip_zero() -> None:
    seen: list[int] = []

    def answer(transaction: int, unit: int, function: int, address: int, count: int) -> bytes:
        seen.append(transaction)
        return reply_frame(transaction, unit, registers_pdu([transaction]))

    async with scripted_server(answer) as port, connected(config(port, [{"name": "v", "address": 0}])) as (link, inst):
        link._transaction = 0xFFFE
        for _ in range(3):
            await inst.poll(link)
    assert seen == [0xFFFF, 1, 2]


# Hostile servers (issue 13): a late reply with transaction id 0, an overlong length, half a frame then silence.

SENTINEL = 0xDEAD
GOOD = 1234


async def test_a_late_reply_with_transaction_id_zero_from_an_echoing_server_is_dropped() -> None:
    """The server echoes ids (its first reply tells), so a frame with id 0 is never an answer, even while a
    request is in flight: the sentinel must not become the next request's value."""
    requests = {"count": 0}

    async def script(transaction: int, unit: int, function: int, address: int, count: int, writer: Writer) -> None:
        requests["count"] += 1
        if requests["count"] == 2:
            return  # times out; its "answer" comes late, with id 0
        if requests["count"] == 3:
            writer.write(mbap_reply(0, unit, [SENTINEL]))
            await asyncio.sleep(0.05)
        writer.write(mbap_reply(transaction, unit, [GOOD]))

    async with modbus_server(script) as port:
        cfg = config(port, [{"name": "v", "address": 0}], timeout="200ms")
        async with connected(cfg) as (link, instrument):
            assert (await instrument.poll(link)).fields == {"v": GOOD}
            with pytest.raises(DriverTimeoutError):
                await instrument.poll(link)
            assert link.is_open  # an echoing server's timeout leaves the connection in step
            assert (await instrument.poll(link)).fields == {"v": GOOD}
            assert link.stats.late_replies == 1


async def test_a_reply_with_id_zero_after_a_timeout_on_an_untried_connection_closes_it() -> None:
    """Before the server has shown which kind it is, a frame with id 0 after a timeout could be either the late
    answer or the answer to the request in flight: the connection starts afresh, the sentinel is not taken."""
    requests = {"count": 0}

    async def script(transaction: int, unit: int, function: int, address: int, count: int, writer: Writer) -> None:
        requests["count"] += 1
        if requests["count"] == 1:
            return
        if requests["count"] == 2:
            writer.write(mbap_reply(0, unit, [SENTINEL]))
        writer.write(mbap_reply(transaction, unit, [GOOD]))

    async with modbus_server(script) as port:
        cfg = config(port, [{"name": "v", "address": 0}], timeout="200ms")
        async with connected(cfg) as (link, instrument):
            with pytest.raises(DriverTimeoutError):
                await instrument.poll(link)
            with pytest.raises(DriverProtocolError, match="out of step"):
                await instrument.poll(link)
            assert not link.is_open
            assert link.stats.late_replies == 1
            await link.open()
            assert (await instrument.poll(link)).fields == {"v": GOOD}


async def test_a_server_answering_with_id_zero_is_reconnected_after_a_timeout() -> None:
    requests = {"count": 0}

    async def script(transaction: int, unit: int, function: int, address: int, count: int, writer: Writer) -> None:
        requests["count"] += 1
        if requests["count"] == 2:
            asyncio.get_running_loop().call_later(0.3, writer.write, mbap_reply(0, unit, [SENTINEL]))
            return
        writer.write(mbap_reply(0, unit, [GOOD]))

    async with modbus_server(script) as port:
        cfg = config(port, [{"name": "v", "address": 0}], timeout="200ms")
        async with connected(cfg) as (link, instrument):
            assert (await instrument.poll(link)).fields == {"v": GOOD}
            with pytest.raises(DriverTimeoutError):
                await instrument.poll(link)
            assert not link.is_open  # its late reply could not be told from the next answer
            assert link.stats.reconnects == 1
            await link.open()
            for _ in range(3):
                assert (await instrument.poll(link)).fields == {"v": GOOD}
                await asyncio.sleep(0.1)


Writer = asyncio.StreamWriter


async def longest_gap(script: FrameScript, *, interval: float, response_timeout: float) -> tuple[float, ModbusTcpLink]:
    """Run a bus scheduler against ``script`` until it has seen a failure and three good records after it; the
    longest time between two good records (what a fault cost)."""
    async with modbus_server(script) as port:
        cfg = config(port, [{"name": "v", "address": 0}], timeout=response_timeout, interval=interval)
        link = PLUGIN.open_link([cfg])
        stats = InstrumentStats(rig="r", instrument=cfg.name, link=link.describe)
        instrument = PLUGIN.make_instrument(cfg)
        member = ScheduledInstrument(instrument=instrument, builder=RecordBuilder(cfg, {}), stats=stats)  # type: ignore[arg-type]
        good: list[float] = []
        after_failure: list[float] = []

        def emit(record: Record) -> None:
            if record.series.measurement == cfg.name and record.fields.get("v") == GOOD:
                good.append(time.monotonic())
                if stats.failures:
                    after_failure.append(good[-1])

        scheduler = LinkScheduler(link=link, instruments=[member], emit=emit)
        async with asyncio.TaskGroup() as group:
            task = group.create_task(scheduler.run(), name="modbus")
            try:
                async with asyncio.timeout(30):
                    while len(after_failure) < 3:
                        await asyncio.sleep(0.01)
            finally:
                task.cancel()
        return max(later - earlier for earlier, later in itertools.pairwise(good)), link


@pytest.mark.parametrize("fault", ["overlong length", "half a frame then silence"])
async def test_a_stalled_frame_recovers_within_an_interval_and_a_timeout(fault: str) -> None:
    """Either fault used to leave a stale partial frame that swallowed good replies for 28-33 s."""
    requests = {"count": 0}
    silent_connection: list[Writer] = []

    async def script(transaction: int, unit: int, function: int, address: int, count: int, writer: Writer) -> None:
        requests["count"] += 1
        if writer in silent_connection:
            return
        if requests["count"] == 3:
            frame = mbap_reply(transaction, unit, [GOOD])
            if fault == "overlong length":
                writer.write(frame[:4] + struct.pack(">H", 200) + frame[6:])  # 200 bytes announced, 5 sent
            else:
                writer.write(frame[:5])
                silent_connection.append(writer)
            return
        writer.write(mbap_reply(transaction, unit, [GOOD]))

    interval, timeout = 0.2, 0.3
    gap, link = await longest_gap(script, interval=interval, response_timeout=timeout)
    # The bad poll times out, the link reconnects at once and the next poll on the grid reads again: one
    # record missing, plus the timeout of the poll that found the stall.
    assert gap < 2 * interval + timeout + 0.2
    assert link.stats.garbled_frames == 1
    print(f"{fault}: longest gap between good records {gap:.3f} s (interval {interval} s, timeout {timeout} s)")


async def test_string_points_lose_control_characters() -> None:
    async def script(transaction: int, unit: int, function: int, address: int, count: int, writer: Writer) -> None:
        writer.write(mbap_reply(transaction, unit, [0x411B, 0x420D, 0x4300]))  # "A", ESC, "B", CR, "C", NUL

    async with modbus_server(script) as port:
        cfg = config(port, [{"name": "model", "address": 0, "type": "string", "length": 6}])
        async with connected(cfg) as (link, instrument):
            assert (await instrument.poll(link)).fields == {"model": "ABC"}
