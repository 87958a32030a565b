"""SCPI/ASCII drivers: ``scpi-serial`` and ``scpi-tcp`` (see ``config`` for a sample).

Each query is one request line and one reply line. Before each query the link drops whatever is still in
its buffer (and, on a serial port, in the kernel's), so a reply that came after its query timed out is not
taken for the next one. A reply that does not parse (garbled, truncated, not a number) fails only its points
and is reported; a silent instrument times out and stops the poll, as on Modbus. *IDN? and the ``init``
commands run again after every (re)connect of the link, for each instrument on it.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Generic, Protocol, TypeVar

from edge_daq.drivers.base import DriverPlugin, Instrument, Link, PollResult
from edge_daq.drivers.channel import ByteChannel, SerialChannel, TcpChannel
from edge_daq.drivers.scpi.config import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_MAX_REPLY_BYTES,
    ERROR_COUNT_FIELD,
    SKIP,
    ScpiInstrumentConfig,
    ScpiPoint,
    ScpiSerialConfig,
    ScpiTcpConfig,
    ValueType,
)
from edge_daq.drivers.scpi.patterns import ReplyPattern
from edge_daq.drivers.scpi.transaction import TransactionLock
from edge_daq.errors import (
    DeviceError,
    DriverError,
    DriverProtocolError,
    DriverTimeoutError,
)
from edge_daq.record import FieldValue
from edge_daq.stats import LinkStats

OVERFLOW = 9.9e37
"""SCPI's "no reading" is 9.91E37 (and -9.91E37); anything this large is not a measurement."""
MAX_ERRORS_DRAINED = 32
_SCPI_ERROR_REPLY = re.compile(r"\s*([+-]?\d{1,10})\s*,", re.ASCII)
"""What :SYST:ERR? answers: a code, a comma and a message (``-113,"Undefined header"``, ``+0,"No error"``)."""


class ScpiLink(Link):
    """One serial port or TCP socket to one SCPI/ASCII instrument (or several, on an addressed RS-485 bus)."""

    def __init__(self, channel: ByteChannel, *, input_limit: int = DEFAULT_MAX_REPLY_BYTES + 2) -> None:
        """``input_limit`` bounds the receive buffer: the longest ``max_reply_bytes`` and its termination."""
        self.channel = channel
        channel.limit = input_limit
        self.generation = 0
        """Incremented at each open: instruments run their identity check and init once per generation."""
        self._lock = TransactionLock()
        self.stats = LinkStats(link=channel.describe)

    @property
    def describe(self) -> str:
        return self.channel.describe

    @property
    def is_open(self) -> bool:
        return self.channel.is_open

    async def open(self) -> None:
        await self.channel.open()
        self.generation += 1

    async def close(self) -> None:
        await self.channel.close()

    def _discard_stale(self) -> None:
        """Drop what came since the last reply (a reply after its timeout, noise); count it."""
        if dropped := self.channel.discard_input():
            self.stats.late_replies += 1
            self.stats.stale_bytes += dropped

    async def _resynchronise(self, why: str) -> DriverProtocolError:
        """A flood or an endless reply: the channel stopped reading; closing it is the only way back in step."""
        self.stats.garbled_frames += 1
        self.stats.reconnects += 1
        await self.channel.close()
        return DriverProtocolError(f"{self.describe}: {why}; reconnecting")

    def transaction(self) -> AbstractAsyncContextManager[None]:
        """Hold the link across several requests (a write and its check): no other task's request between."""
        return self._lock.hold()

    async def write(self, command: str, *, termination: str) -> None:
        async with self._lock.hold():
            if self.channel.overflowed:
                raise await self._resynchronise("the instrument sent more than max_reply_bytes unasked")
            self._discard_stale()
            await self.channel.write((command + termination).encode("ascii", "replace"))

    async def query(
        self,
        command: str,
        *,
        write_termination: str,
        read_termination: str,
        within: float,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> str:
        """Send ``command`` and return its reply line without the termination; DriverError otherwise.

        A reply longer than ``max_reply_bytes`` is a DriverProtocolError; if it filled the receive buffer
        without its termination, the link is closed as well (the scheduler reopens it at the next poll).
        """
        terminator = read_termination.encode("ascii")
        async with self._lock.hold():
            channel = self.channel
            if channel.overflowed:
                raise await self._resynchronise("the instrument sent more than max_reply_bytes unasked")
            self._discard_stale()
            await channel.write((command + write_termination).encode("ascii", "replace"))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + within
            searched = 0
            buffer = channel.buffer
            while (end := buffer.find(terminator, searched)) < 0:
                searched = max(0, len(buffer) - len(terminator) + 1)  # each byte is searched once
                if channel.overflowed or len(buffer) > max_reply_bytes + len(terminator):
                    raise await self._resynchronise(
                        f"reply to {command!r} is longer than max_reply_bytes ({max_reply_bytes}) "
                        f"without {read_termination!r}"
                    )
                if not await channel.wait_data(deadline - loop.time()):
                    partial = bytes(buffer[:40])
                    buffer.clear()
                    detail = f" (partial reply {partial!r}: check read_termination)" if partial else ""
                    raise DriverTimeoutError(f"{self.describe}: no reply to {command!r} within {within:g} s{detail}")
            line = bytes(buffer[:end])
            del buffer[: end + len(terminator)]
        if end > max_reply_bytes:
            raise DriverProtocolError(
                f"{self.describe}: reply to {command!r} is {end} bytes, over max_reply_bytes ({max_reply_bytes})"
            )
        return line.decode("ascii", "replace").strip()


_SCPI_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
"""IEEE 488.2 NR1 (``-12``), NR2 (``1.50``) and NR3 (``+1.05E+03``): no underscores, no ``inf`` or ``nan``."""
_SCPI_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
_MAX_NUMBER_LENGTH = 64
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_CONTROL_CHARACTERS = dict.fromkeys([*range(0x20), 0x7F])
"""NUL, CR, LF, ESC, DEL...: removed from str values (a terminal, a log line or a CSV would act on them)."""


def parse_value(text: str, value_type: ValueType, *, max_length: int = DEFAULT_MAX_LENGTH) -> FieldValue | None:
    """A reply element as a field value; None for SCPI's overflow (no reading). ValueError if it does not parse."""
    if value_type == "str":
        value = text.translate(_CONTROL_CHARACTERS).strip()
        if len(value) > max_length:
            raise ValueError(f"{len(value)} characters, over max_length ({max_length})")
        return value
    text = text.strip()
    # Bounded before the regex and int(): a reply element can be 64 KiB long.
    if len(text) > _MAX_NUMBER_LENGTH or not _SCPI_NUMBER.fullmatch(text):
        raise ValueError("not a SCPI number")
    if value_type == "float":
        number = float(text)
        return None if not math.isfinite(number) or abs(number) >= OVERFLOW else number
    if _SCPI_INTEGER.fullmatch(text):
        integer = int(text)  # exact: no detour through a float's 53 bits
    else:
        number = float(text)
        if not math.isfinite(number) or abs(number) >= OVERFLOW:
            return None
        if not number.is_integer():
            raise ValueError("not an integer")
        integer = int(number)
    if abs(integer) >= OVERFLOW:
        return None
    if not _INT64_MIN <= integer <= _INT64_MAX:
        raise ValueError("not an integer of 64 bits (the integer fields of line protocol)")
    return integer


class ScpiTransport(Protocol):
    """What :class:`ScpiReader` needs of a link: a :class:`ScpiLink`, or one resource of a VISA link."""

    @property
    def describe(self) -> str: ...
    @property
    def is_open(self) -> bool: ...
    @property
    def generation(self) -> int:
        """Changes at each (re)connect: the identity check and init run again."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[None]:
        """Hold the link across several requests: no other task's request goes between them."""
        ...

    async def write(self, command: str, *, termination: str) -> None: ...

    async def query(
        self, command: str, *, write_termination: str, read_termination: str, within: float, max_reply_bytes: int
    ) -> str: ...


class ScpiReader:
    """The points of one SCPI instrument, read through any :class:`ScpiTransport` (shared by every SCPI driver)."""

    def __init__(self, config: ScpiInstrumentConfig) -> None:
        self.config = config
        self._generation = 0
        self.identity: str | None = None
        # Points that share a query are answered by one round trip.
        self.queries: dict[str, list[ScpiPoint]] = {}
        for point in config.points:
            self.queries.setdefault(point.query, []).append(point)
        self._patterns = {point.regex: ReplyPattern.compile(point.regex) for point in config.points if point.regex}

    async def _query(self, link: ScpiTransport, command: str) -> str:
        config = self.config
        return await link.query(
            command,
            write_termination=config.write_termination,
            read_termination=config.read_termination,
            within=config.timeout,
            max_reply_bytes=config.max_reply_bytes,
        )

    async def _connect(self, link: ScpiTransport) -> None:
        """Identity check and init commands, once per connection of the link."""
        config = self.config
        if config.identity is not None:
            identity = await self._query(link, "*IDN?")
            if config.identity.lower() not in identity.lower():
                raise DeviceError(
                    f"{link.describe}: *IDN? answered {identity!r}, which does not contain {config.identity!r}: "
                    "another instrument on this port?"
                )
            self.identity = identity.translate(_CONTROL_CHARACTERS)
        for command in config.init:
            if command.rstrip().endswith("?"):
                await self._query(link, command)
            else:
                await link.write(command, termination=config.write_termination)
        self._generation = link.generation

    async def read(self, link: ScpiTransport) -> PollResult:
        if self._generation != link.generation:
            await self._connect(link)
        fields: dict[str, FieldValue] = {}
        result = PollResult(fields)
        answered = 0
        queries = list(self.queries.items())
        for index, (command, points) in enumerate(queries):
            try:
                reply = await self._query(link, command)
            except DriverError as exc:  # a timeout, a lost link, or a reply too long (the link reconnects)
                result.errors.append(exc)
                result.failed.extend(name for _, rest in queries[index:] for p in rest for name in p.field_names)
                break
            answered += 1
            for point in points:
                await self._parse(point, reply, result)
        if self.config.drain_errors and answered and link.is_open:
            await self._drain_errors(link, result)
        if not answered and result.errors:
            raise result.errors[0]
        return result

    async def _parse(self, point: ScpiPoint, reply: str, result: PollResult) -> None:
        values: list[tuple[str, str]]
        if point.name is not None:
            values = [(point.name, reply)]
        elif point.fields is not None:
            expected = len(point.fields)
            # One more split than needed: the count is known without splitting a flood of commas.
            elements = reply.split(",", expected)
            if len(elements) < expected or (len(elements) > expected and point.extra == "error"):
                count = f"{expected + 1} or more" if len(elements) > expected else str(len(elements))
                why = f"{count} elements, expected {expected}"
                if len(elements) > expected:
                    why += " (extra: ignore accepts more)"
                self._garbled(point, reply, why, result)
                return
            values = [(name, text) for name, text in zip(point.fields, elements, strict=False) if name != SKIP]
        else:
            assert point.regex is not None
            try:
                groups = await self._patterns[point.regex].search(reply, within=self.config.timeout)
            except DriverProtocolError as exc:
                result.failed.extend(point.field_names)
                result.errors.append(exc)
                return
            if groups is None:
                self._garbled(point, reply, "the regex does not match", result)
                return
            values = [(name, text) for name, text in groups.items() if text is not None]
            result.failed.extend(name for name, text in groups.items() if text is None)
        for name, text in values:
            try:
                value = parse_value(text, point.type, max_length=point.max_length)
            except ValueError as exc:
                result.failed.append(name)
                result.errors.append(
                    DriverProtocolError(
                        f"{point.query!r} answered {reply[:60]!r}: {text[:20]!r} is not {point.type} ({exc})"
                    )
                )
                continue
            if value is None:
                result.failed.append(name)  # overflow: no reading, counted but not an error of the link
            else:
                result.fields[name] = value

    @staticmethod
    def _garbled(point: ScpiPoint, reply: str, why: str, result: PollResult) -> None:
        result.failed.extend(point.field_names)
        result.errors.append(DriverProtocolError(f"{point.query!r} answered {reply[:60]!r}: {why}"))

    async def _drain_errors(self, link: ScpiTransport, result: PollResult) -> None:
        count = 0
        for _ in range(MAX_ERRORS_DRAINED):
            try:
                reply = await self._query(link, ":SYST:ERR?")
            except DriverError as exc:
                result.errors.append(exc)
                return
            code = _SCPI_ERROR_REPLY.match(reply)
            if code is None:
                # Not an error queue entry: the count would be a guess, so it is left out of the record.
                result.failed.append(ERROR_COUNT_FIELD)
                result.errors.append(
                    DriverProtocolError(f"{link.describe}: :SYST:ERR? answered {reply[:60]!r}, not a code and message")
                )
                return
            if int(code[1]) == 0:
                break
            count += 1
            result.errors.append(DeviceError(f"{link.describe}: instrument error {reply[:200]}"))
        result.fields[ERROR_COUNT_FIELD] = count


ScpiConfigT = TypeVar("ScpiConfigT", bound=ScpiSerialConfig | ScpiTcpConfig)


class ScpiInstrument(Instrument[ScpiConfigT, ScpiLink], Generic[ScpiConfigT]):
    def __init__(self, config: ScpiConfigT) -> None:
        super().__init__(config)
        self.reader = ScpiReader(config)

    async def poll(self, link: ScpiLink) -> PollResult:
        return await self.reader.read(link)


def _input_limit(configs: Sequence[ScpiSerialConfig | ScpiTcpConfig]) -> int:
    """The receive buffer of a link: the longest reply any of its instruments may send, with its termination."""
    return max(config.max_reply_bytes + len(config.read_termination.encode("ascii")) for config in configs)


class ScpiSerialPlugin(DriverPlugin[ScpiSerialConfig, ScpiLink]):
    def link_key(self, config: ScpiSerialConfig) -> str:
        return config.port

    def open_link(self, configs: Sequence[ScpiSerialConfig]) -> ScpiLink:
        first = configs[0]
        return ScpiLink(SerialChannel.for_port(first), input_limit=_input_limit(configs))

    def make_instrument(self, config: ScpiSerialConfig) -> ScpiInstrument[ScpiSerialConfig]:
        return ScpiInstrument(config)


class ScpiTcpPlugin(DriverPlugin[ScpiTcpConfig, ScpiLink]):
    def link_key(self, config: ScpiTcpConfig) -> str:
        return f"scpi+tcp://{config.host}:{config.port}"

    def open_link(self, configs: Sequence[ScpiTcpConfig]) -> ScpiLink:
        first = configs[0]
        timeout = max(config.timeout for config in configs)
        channel = TcpChannel(host=first.host, port=first.port, connect_timeout=timeout)
        return ScpiLink(channel, input_limit=_input_limit(configs))

    def make_instrument(self, config: ScpiTcpConfig) -> ScpiInstrument[ScpiTcpConfig]:
        return ScpiInstrument(config)


SERIAL_PLUGIN = ScpiSerialPlugin()
TCP_PLUGIN = ScpiTcpPlugin()
