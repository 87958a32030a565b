"""Keysight DAQ970A-style data-acquisition mainframe (SCPI on a raw socket, port 5025) with thermocouples on a
temperature-cycling chamber.

Commands: ``*IDN?``, ``*RST``, ``*CLS``, ``CONF:TEMP TC,K,(@101:110)``, ``CONF:VOLT:DC [range,res,](@...)``,
``ROUT:SCAN (@101:110)``, ``ROUT:SCAN?`` (a definite-length block such as ``#214(@101,102,103)``),
``FORM:READ:CHAN ON|OFF`` (and ``?``), ``READ?`` (one reading per scanned channel, each followed by its
channel number when FORM:READ:CHAN is on), ``SYST:ERR?``. Channels 101-120 (slot 1).

Model: the chamber cycles between ``low`` and ``high`` degC with period ``cycle_period`` model seconds
(ramps and dwells of a quarter period each); each thermocouple lags the air a little differently, a
configured but open thermocouple (``open_channels``) reads +9.9E+37. DC voltage channels read a 3.3 V rail.
"""

from __future__ import annotations

import argparse
import random
import re
from typing import Any

from simulators.line_server import LineDevice
from simulators.modbus_server import ModelClock
from simulators.scpi_common import ErrorQueue, split_command

CHANNELS = range(101, 121)
OPEN_TC = 9.9e37


def parse_channels(text: str) -> list[int]:
    """``(@101:103,105)`` as [101, 102, 103, 105]; ValueError if malformed or outside the card."""
    match = re.search(r"\(@([\d:,\s]+)\)", text)
    if match is None:
        raise ValueError(text)
    channels: list[int] = []
    for part in match[1].split(","):
        first, _, last = part.strip().partition(":")
        channels.extend(range(int(first), int(last or first) + 1))
    if not channels or any(channel not in CHANNELS for channel in channels):
        raise ValueError(text)
    return channels


class KeysightDaq970a(LineDevice):
    def __init__(
        self,
        *,
        seed: int = 0,
        clock: ModelClock | None = None,
        low: float = -40.0,
        high: float = 125.0,
        cycle_period: float = 3600.0,
        open_channels: tuple[int, ...] = (),
    ) -> None:
        super().__init__(seed=seed, clock=clock)
        if cycle_period <= 0 or low >= high:
            raise ValueError("cycle_period must be positive and low below high")
        self.low, self.high, self.cycle_period = low, high, cycle_period
        self.open_channels = set(open_channels)
        self.errors = ErrorQueue()
        self.config: dict[int, str] = {}
        self.scan: list[int] = []
        self.with_channels = False
        self._reads = 0

    def air(self, t: float) -> float:
        """Trapezoid: ramp up, dwell high, ramp down, dwell low, a quarter period each."""
        phase = (t % self.cycle_period) / self.cycle_period
        span = self.high - self.low
        if phase < 0.25:
            return self.low + span * phase / 0.25
        if phase < 0.5:
            return self.high
        if phase < 0.75:
            return self.high - span * (phase - 0.5) / 0.25
        return self.low

    def value(self, channel: int) -> float:
        kind = self.config.get(channel, "TEMP")
        noise = random.Random(f"daq970a:{self.seed}:{channel}:{self._reads}").gauss(0.0, 0.02)
        if kind == "VOLT":
            return 3.3 + noise * 0.01
        if channel in self.open_channels:
            return OPEN_TC
        lag = 15.0 + 3.0 * (channel % 10)  # load thermocouples lag the air by tens of seconds
        return self.air(self.clock.now() - lag) + noise

    def handle(self, command: str) -> str | None:
        header, value = split_command(command)
        try:
            if header == "*IDN?":
                return "Keysight Technologies,DAQ970A,MY58000123,A.03.02-01.00-03.02-00.02-01-01"
            if header == "*RST":
                self.config, self.scan, self.with_channels = {}, [], False
            elif header == "*CLS":
                self.errors.clear()
            elif header in ("CONF:TEMP", "CONF:VOLT:DC"):
                for channel in parse_channels(value):
                    self.config[channel] = "TEMP" if header == "CONF:TEMP" else "VOLT"
                self.scan = parse_channels(value)
            elif header == "ROUT:SCAN":
                self.scan = parse_channels(value)
            elif header == "ROUT:SCAN?":
                body = "(@" + ",".join(str(channel) for channel in self.scan) + ")"
                return f"#{len(str(len(body)))}{len(body)}{body}"
            elif header == "FORM:READ:CHAN":
                self.with_channels = value.upper() in ("ON", "1")
            elif header == "FORM:READ:CHAN?":
                return "1" if self.with_channels else "0"
            elif header in ("READ?", "MEAS:TEMP?"):
                if not self.scan:
                    self.errors.push(-221, "Settings conflict; empty scan list")
                    return None
                self._reads += 1
                items = []
                for channel in self.scan:
                    items.append(f"{self.value(channel):+.9E}")
                    if self.with_channels:
                        items.append(str(channel))
                return ",".join(items)
            elif header == "SYST:ERR?":
                return self.errors.pop()
            else:
                self.errors.push(-113, "Undefined header")
        except ValueError:
            self.errors.push(-224, "Illegal parameter value")
        return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--low", type=float, default=-40.0, help="cold dwell, degC (default -40)")
    parser.add_argument("--high", type=float, default=125.0, help="hot dwell, degC (default 125)")
    parser.add_argument("--cycle-period", type=float, default=3600.0, help="model seconds per cycle")


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {"low": args.low, "high": args.high, "cycle_period": args.cycle_period}
