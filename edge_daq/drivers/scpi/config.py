"""Config models of the SCPI/ASCII drivers.

Sample (rig file)::

    - name: smu1
      driver: scpi-serial          # scpi-tcp takes host and port (5025 is the usual raw-socket port)
      port: /dev/ttyUSB0
      baudrate: 9600
      write_termination: "\\n"
      read_termination: "\\n"
      identity: KEITHLEY           # *IDN? must contain this, checked at every (re)connect
      init: [":FORM:ELEM VOLT,CURR"]   # sent at every (re)connect
      drain_errors: true           # :SYST:ERR? after each poll until "0,...": errors counted in scpi_errors
      interval: 5s
      points:
        - {name: vcc, query: ":MEAS:VOLT?", type: float, unit: V}
        - {query: ":READ?", fields: [v, i]}                   # one reply, comma-separated, several fields
        - {query: "TEMP?", regex: "^(?P<temp_pv>[-+.\\\\d]+),(?P<temp_sp>[-+.\\\\d]+)"}   # named groups

A reply of 9.91E37 (SCPI's "no reading") leaves the field out of the record and counts it as failed.
In ``fields``, a ``-`` skips that element of the reply.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from edge_daq.drivers.base import NAME_PATTERN, InstrumentConfig, StrictModel

ValueType = Literal["float", "int", "str"]
SKIP = "-"
ERROR_COUNT_FIELD = "scpi_errors"


class ScpiPoint(StrictModel):
    """One query; its reply gives one field (``name``), several (``fields``) or named groups (``regex``)."""

    query: str = Field(min_length=1)
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    fields: list[str] | None = Field(default=None, min_length=1)
    regex: str | None = None
    type: ValueType = "float"
    unit: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_shape(self) -> ScpiPoint:
        given = [key for key in ("name", "fields", "regex") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError("a point gives exactly one of name, fields (a comma-separated reply) or regex")
        for field in self.fields or []:
            if field != SKIP and not re.fullmatch(NAME_PATTERN, field):
                raise ValueError(f"field name {field!r}: letters, digits, _ . - (or {SKIP} to skip an element)")
        if self.regex is not None:
            try:
                pattern = re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex does not compile: {exc}") from None
            if not pattern.groupindex:
                raise ValueError("regex needs named groups, such as (?P<temp_pv>[-\\d.]+): each names a field")
            for group in pattern.groupindex:
                if not re.fullmatch(NAME_PATTERN, group):
                    raise ValueError(f"regex group {group!r} is not a valid field name")
        return self

    @property
    def field_names(self) -> list[str]:
        if self.name is not None:
            return [self.name]
        if self.fields is not None:
            return [field for field in self.fields if field != SKIP]
        assert self.regex is not None
        return list(re.compile(self.regex).groupindex)


class ScpiInstrumentConfig(InstrumentConfig):
    write_termination: str = "\n"
    read_termination: str = "\n"
    identity: str | None = Field(default=None, description="a text *IDN? must contain (case-insensitive)")
    init: list[str] = Field(default_factory=list, description="commands sent at every (re)connect")
    drain_errors: bool = False
    points: list[ScpiPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_points(self) -> ScpiInstrumentConfig:
        if not self.read_termination:
            raise ValueError("read_termination cannot be empty: replies are read line by line")
        seen: set[str] = set()
        for point in self.points:
            for name in point.field_names:
                if name in seen:
                    raise ValueError(f"two points give the field {name!r}")
                seen.add(name)
        if self.drain_errors and ERROR_COUNT_FIELD in seen:
            raise ValueError(f"with drain_errors the field {ERROR_COUNT_FIELD!r} counts instrument errors")
        return self

    def field_tags(self) -> dict[str, dict[str, str]]:
        return {name: point.tags for point in self.points if point.tags for name in point.field_names}


class ScpiSerialConfig(ScpiInstrumentConfig):
    driver: Literal["scpi-serial"]
    port: str = Field(min_length=1)
    baudrate: int = Field(default=9600, ge=300, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8


class ScpiTcpConfig(ScpiInstrumentConfig):
    driver: Literal["scpi-tcp"]
    host: str
    port: int = Field(default=5025, ge=1, le=65535)
