"""Writes to a SCPI point: a command with no reply, then the instrument's own check (error queue or ``*OPC?``)."""

from __future__ import annotations

import re
from typing import Any

from edge_daq.drivers.base import InstrumentConfig
from edge_daq.drivers.scpi.config import ScpiInstrumentConfig, ScpiPoint, ScpiWrite
from edge_daq.errors import DeviceError, DriverProtocolError
from edge_daq.record import FieldValue
from edge_daq.writes.points import WritablePoint

_ERROR_REPLY = re.compile(r"\s*([+-]?\d{1,10})\s*,", re.ASCII)


class ScpiWritablePoint(WritablePoint):
    def __init__(self, config: ScpiInstrumentConfig, point: ScpiPoint, limits: ScpiWrite) -> None:
        assert point.name is not None
        self.config, self.point, self.limits, self.name = config, point, limits, point.name
        self.write_config = limits

    async def _query(self, link: Any, command: str) -> str:
        reply: str = await link.query(
            command,
            write_termination=self.config.write_termination,
            read_termination=self.config.read_termination,
            within=self.config.timeout,
            max_reply_bytes=self.config.max_reply_bytes,
        )
        return reply

    async def read(self, link: Any) -> FieldValue:
        from edge_daq.drivers.scpi.driver import parse_value

        reply = await self._query(link, self.point.query)
        try:
            value = parse_value(reply, self.point.type, max_length=self.point.max_length)
        except ValueError as error:
            raise DriverProtocolError(f"point {self.name!r}: {self.point.query!r} answered {reply[:60]!r}") from error
        if value is None:
            raise DriverProtocolError(f"point {self.name!r}: {self.point.query!r} answered an overflow")
        return value

    async def write(self, link: Any, value: float) -> str:
        text = str(int(value)) if self.point.type == "int" else f"{value:.10g}"
        command: str = self.write_config.command.replace("{value}", text)
        # The command and its check as one transaction: a poll's own :SYST:ERR? drain in between would take the
        # write's error, and the check would read the poll's.
        async with link.transaction():
            await link.write(command, termination=self.config.write_termination)
            check = "*OPC?" if self.write_config.check == "opc" else ":SYST:ERR?"
            reply = await self._query(link, check)
        if self.write_config.check == "opc":
            if reply.strip() not in ("1", "+1"):
                raise DeviceError(f"point {self.name!r}: *OPC? after {command!r} answered {reply[:60]!r}, not 1")
            return command
        code = _ERROR_REPLY.match(reply)
        if code is None:
            raise DriverProtocolError(f"point {self.name!r}: :SYST:ERR? answered {reply[:60]!r}")
        if int(code[1]) != 0:
            raise DeviceError(f"point {self.name!r}: {command!r} was refused by the instrument: {reply[:200]}")
        return command

    @property
    def tolerance(self) -> float:
        if self.limits.tolerance is not None:
            return self.limits.tolerance
        return 0.0 if self.point.type == "int" else 1e-6 * max(1.0, abs(self.limits.max))


def scpi_point(config: InstrumentConfig, name: str) -> WritablePoint | str:
    if not isinstance(config, ScpiInstrumentConfig):
        return f"instrument {config.name!r} ({config.driver}) takes no writes"
    for point in config.points:
        if name in point.field_names:
            if point.write is None or point.name is None:
                return (
                    f"point {name!r} of {config.name!r} is not writable: "
                    "the rig file must give it write: {command: ..., min: ..., max: ...}"
                )
            return ScpiWritablePoint(config, point, point.write)
    return f"instrument {config.name!r} has no point {name!r}"
