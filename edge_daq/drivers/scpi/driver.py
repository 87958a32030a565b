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
from typing import ClassVar, Generic, TypeVar

from edge_daq.drivers.base import DriverPlugin, Instrument, InstrumentConfig, Link, PollResult
from edge_daq.drivers.channel import ByteChannel, SerialChannel, TcpChannel
from edge_daq.drivers.scpi.config import (
    ERROR_COUNT_FIELD,
    SKIP,
    ScpiPoint,
    ScpiSerialConfig,
    ScpiTcpConfig,
    ValueType,
)
from edge_daq.errors import (
    DeviceError,
    DriverConnectionError,
    DriverError,
    DriverProtocolError,
    DriverTimeoutError,
)
from edge_daq.record import FieldValue

OVERFLOW = 9.9e37
"""SCPI's "no reading" is 9.91E37 (and -9.91E37); anything this large is not a measurement."""
MAX_ERRORS_DRAINED = 32
_SCPI_NO_ERROR = re.compile(r"^\s*[+]?0\s*,")


class ScpiLink(Link):
    """One serial port or TCP socket to one SCPI/ASCII instrument (or several, on an addressed RS-485 bus)."""

    def __init__(self, channel: ByteChannel) -> None:
        self.channel = channel
        self.generation = 0
        """Incremented at each open: instruments run their identity check and init once per generation."""
        self._lock = asyncio.Lock()

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

    async def write(self, command: str, *, termination: str) -> None:
        async with self._lock:
            self.channel.discard_input()
            await self.channel.write((command + termination).encode("ascii", "replace"))

    async def query(self, command: str, *, write_termination: str, read_termination: str, within: float) -> str:
        """Send ``command`` and return its reply line without the termination; DriverError otherwise."""
        terminator = read_termination.encode("ascii")
        async with self._lock:
            channel = self.channel
            channel.discard_input()
            await channel.write((command + write_termination).encode("ascii", "replace"))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + within
            while (end := channel.buffer.find(terminator)) < 0:
                if not await channel.wait_data(deadline - loop.time()):
                    partial = bytes(channel.buffer)
                    channel.buffer.clear()
                    detail = f" (partial reply {partial[:40]!r}: check read_termination)" if partial else ""
                    raise DriverTimeoutError(f"{self.describe}: no reply to {command!r} within {within:g} s{detail}")
            line = bytes(channel.buffer[:end])
            del channel.buffer[: end + len(terminator)]
        return line.decode("ascii", "replace").strip()


def parse_value(text: str, value_type: ValueType) -> FieldValue | None:
    """A reply element as a field value; None for SCPI's overflow (no reading). ValueError if it does not parse."""
    text = text.strip()
    if value_type == "str":
        return text
    number = float(text)
    if not math.isfinite(number) or abs(number) >= OVERFLOW:
        return None
    if value_type == "int":
        if not number.is_integer():
            raise ValueError(f"{text!r} is not an integer")
        return int(number)
    return number


ScpiConfigT = TypeVar("ScpiConfigT", bound=ScpiSerialConfig | ScpiTcpConfig)


class ScpiInstrument(Instrument[ScpiConfigT, ScpiLink], Generic[ScpiConfigT]):
    def __init__(self, config: ScpiConfigT) -> None:
        super().__init__(config)
        self._generation = 0
        self.identity: str | None = None
        # Points that share a query are answered by one round trip.
        self.queries: dict[str, list[ScpiPoint]] = {}
        for point in config.points:
            self.queries.setdefault(point.query, []).append(point)
        self._patterns = {point.regex: re.compile(point.regex) for point in config.points if point.regex}

    async def _query(self, link: ScpiLink, command: str) -> str:
        config = self.config
        return await link.query(
            command,
            write_termination=config.write_termination,
            read_termination=config.read_termination,
            within=config.timeout,
        )

    async def _connect(self, link: ScpiLink) -> None:
        """Identity check and init commands, once per connection of the link."""
        config = self.config
        if config.identity is not None:
            identity = await self._query(link, "*IDN?")
            if config.identity.lower() not in identity.lower():
                raise DeviceError(
                    f"{link.describe}: *IDN? answered {identity!r}, which does not contain {config.identity!r}: "
                    "another instrument on this port?"
                )
            self.identity = identity
        for command in config.init:
            if command.rstrip().endswith("?"):
                await self._query(link, command)
            else:
                await link.write(command, termination=config.write_termination)
        self._generation = link.generation

    async def poll(self, link: ScpiLink) -> PollResult:
        if self._generation != link.generation:
            await self._connect(link)
        fields: dict[str, FieldValue] = {}
        result = PollResult(fields)
        answered = 0
        queries = list(self.queries.items())
        for index, (command, points) in enumerate(queries):
            try:
                reply = await self._query(link, command)
            except (DriverTimeoutError, DriverConnectionError) as exc:
                result.errors.append(exc)
                result.failed.extend(name for _, rest in queries[index:] for p in rest for name in p.field_names)
                break
            answered += 1
            for point in points:
                self._parse(point, reply, result)
        if self.config.drain_errors and answered:
            await self._drain_errors(link, result)
        if not answered and result.errors:
            raise result.errors[0]
        return result

    def _parse(self, point: ScpiPoint, reply: str, result: PollResult) -> None:
        values: list[tuple[str, str]]
        if point.name is not None:
            values = [(point.name, reply)]
        elif point.fields is not None:
            elements = reply.split(",")
            if len(elements) < len(point.fields):
                self._garbled(point, reply, f"{len(elements)} elements, expected {len(point.fields)}", result)
                return
            values = [(name, text) for name, text in zip(point.fields, elements, strict=False) if name != SKIP]
        else:
            assert point.regex is not None
            match = self._patterns[point.regex].search(reply)
            if match is None:
                self._garbled(point, reply, "the regex does not match", result)
                return
            values = [(name, text) for name, text in match.groupdict().items() if text is not None]
            result.failed.extend(name for name, text in match.groupdict().items() if text is None)
        for name, text in values:
            try:
                value = parse_value(text, point.type)
            except ValueError:
                result.failed.append(name)
                result.errors.append(
                    DriverProtocolError(f"{point.query!r} answered {reply[:60]!r}: {text[:20]!r} is not {point.type}")
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

    async def _drain_errors(self, link: ScpiLink, result: PollResult) -> None:
        count = 0
        for _ in range(MAX_ERRORS_DRAINED):
            try:
                reply = await self._query(link, ":SYST:ERR?")
            except DriverError as exc:
                result.errors.append(exc)
                return
            if _SCPI_NO_ERROR.match(reply):
                break
            count += 1
            result.errors.append(DeviceError(f"{link.describe}: instrument error {reply}"))
        result.fields[ERROR_COUNT_FIELD] = count


class ScpiSerialPlugin(DriverPlugin[ScpiSerialConfig, ScpiLink]):
    name: ClassVar[str] = "scpi-serial"
    config_model: ClassVar[type[InstrumentConfig]] = ScpiSerialConfig

    def link_key(self, config: ScpiSerialConfig) -> str:
        return config.port

    def open_link(self, configs: Sequence[ScpiSerialConfig]) -> ScpiLink:
        first = configs[0]
        return ScpiLink(SerialChannel.for_port(first))

    def make_instrument(self, config: ScpiSerialConfig) -> ScpiInstrument[ScpiSerialConfig]:
        return ScpiInstrument(config)


class ScpiTcpPlugin(DriverPlugin[ScpiTcpConfig, ScpiLink]):
    name: ClassVar[str] = "scpi-tcp"
    config_model: ClassVar[type[InstrumentConfig]] = ScpiTcpConfig

    def link_key(self, config: ScpiTcpConfig) -> str:
        return f"scpi+tcp://{config.host}:{config.port}"

    def open_link(self, configs: Sequence[ScpiTcpConfig]) -> ScpiLink:
        first = configs[0]
        timeout = max(config.timeout for config in configs)
        return ScpiLink(TcpChannel(host=first.host, port=first.port, connect_timeout=timeout))

    def make_instrument(self, config: ScpiTcpConfig) -> ScpiInstrument[ScpiTcpConfig]:
        return ScpiInstrument(config)


SERIAL_PLUGIN = ScpiSerialPlugin()
TCP_PLUGIN = ScpiTcpPlugin()
