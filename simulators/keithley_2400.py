"""Keithley 2400-style SourceMeter (SCPI over RS-232 or a raw socket) biasing one DUT.

Commands: ``*IDN?``, ``*RST``, ``*CLS``, ``*OPC?``, ``:SOUR:FUNC VOLT|CURR``, ``:SOUR:VOLT[:LEV] <v>`` (and ``?``),
``:SENS:FUNC '...'`` and ``:SENS:CURR:NPLC`` (accepted), ``:SENS:CURR:PROT <a>`` (and ``?``),
``:SENS:CURR:PROT:TRIP?``, ``:FORM:ELEM VOLT,CURR,RES,TIME,STAT`` (and ``?``), ``:OUTP ON|OFF`` (and ``?``),
``:READ?`` and ``:MEAS:CURR?``/``:MEAS:VOLT?`` (the selected elements, comma-separated, ``+9.910000E+37`` for
RES in voltage-source mode as the real instrument does), ``:SYST:ERR?``. Unknown headers queue error -113,
bad values -224; ``:READ?`` with the output off queues +803 "Output not on" and sends nothing.

DUT model: a resistor (``resistance`` ohm) with a leakage that drifts up with stress time (``drift`` per model
hour); at ``fail_at`` model seconds it fails ``open`` (pA of leakage) or ``short`` (the current rises to the
compliance, which clamps it and sets the trip flag). Readings carry seeded noise.
"""

from __future__ import annotations

import argparse
import math
import random
from typing import Any, Literal

from simulators.line_server import LineDevice
from simulators.modbus_server import ModelClock
from simulators.scpi_common import ErrorQueue, split_command

ELEMENTS = ("VOLT", "CURR", "RES", "TIME", "STAT")
OVERFLOW = 9.91e37
Failure = Literal["open", "short"]


class Keithley2400(LineDevice):
    def __init__(
        self,
        *,
        seed: int = 0,
        clock: ModelClock | None = None,
        voltage: float = 3.3,
        compliance: float = 0.105,
        output: bool = True,
        resistance: float = 10_000.0,
        drift: float = 0.01,
        fail_at: float | None = None,
        failure: Failure = "short",
    ) -> None:
        super().__init__(seed=seed, clock=clock)
        if resistance <= 0:
            raise ValueError("resistance must be positive")
        self.resistance = resistance
        self.drift = drift
        self.fail_at = fail_at
        self.failure: Failure = failure
        self.errors = ErrorQueue()
        self._defaults = (voltage, compliance, output)
        self.reset()
        self.voltage, self.compliance, self.output = voltage, compliance, output
        self._readings = 0

    def reset(self) -> None:
        self.function = "VOLT"
        self.voltage = 0.0
        self.compliance = 105e-6
        self.output = False
        self.elements = list(ELEMENTS)
        self.tripped = False

    @property
    def failed(self) -> Failure | None:
        return self.failure if self.fail_at is not None and self.clock.now() >= self.fail_at else None

    def current(self) -> float:
        if not self.output:
            return 0.0
        now = self.clock.now()
        noise = random.Random(f"k2400:{self.seed}:{self._readings}").gauss(0.0, 1e-9)
        failed = self.failed
        if failed == "open":
            current = 2e-12 + abs(noise) * 1e-3
        elif failed == "short":
            current = math.inf
        else:
            current = self.voltage / self.resistance * (1 + self.drift * now / 3600) + noise
        self.tripped = abs(current) >= self.compliance
        return math.copysign(min(abs(current), self.compliance), self.voltage or 1.0)

    def reading(self, elements: list[str]) -> str:
        self._readings += 1
        current = self.current()
        values = {
            "VOLT": self.voltage,
            "CURR": current,
            "RES": OVERFLOW,  # not measured while sourcing voltage
            "TIME": self.clock.now(),
            "STAT": float((1 << 3 if self.tripped else 0) | (1 << 2 if self.output else 0)),
        }
        return ",".join(f"{values[element]:+.6E}" for element in elements)

    def handle(self, command: str) -> str | None:
        header, value = split_command(command)
        handler = getattr(self, "_" + header.replace(":", "_").replace("*", "star_").replace("?", "_q"), None)
        if handler is None:
            self.errors.push(-113, "Undefined header")
            return None
        try:
            reply: str | None = handler(value)
        except ValueError:
            self.errors.push(-224, "Illegal parameter value")
            return None
        return reply

    # Each method answers one normalised header; ``_q`` marks a query.

    def _star_IDN_q(self, value: str) -> str:
        serial = random.Random(f"k2400:{self.seed}:serial").randrange(1_000_000, 9_999_999)
        return f"KEITHLEY INSTRUMENTS INC.,MODEL 2400,{serial},C32   Oct  4 2010 14:20:11/A02  /K/J"

    def _star_RST(self, value: str) -> None:
        self.reset()

    def _star_CLS(self, value: str) -> None:
        self.errors.clear()

    def _star_OPC_q(self, value: str) -> str:
        return "1"  # every command completes before the next is read

    def _SOUR_FUNC(self, value: str) -> None:
        function = value.upper()[:4]
        if function not in ("VOLT", "CURR"):
            raise ValueError(value)
        self.function = function

    def _SOUR_VOLT(self, value: str) -> None:
        volts = float(value)
        if abs(volts) > 210:
            raise ValueError(value)
        self.voltage = volts

    def _SOUR_VOLT_q(self, value: str) -> str:
        return f"{self.voltage:+.6E}"

    def _SENS_FUNC(self, value: str) -> None:
        return None

    def _SENS_CURR_NPLC(self, value: str) -> None:
        if not 0.01 <= float(value) <= 10:
            raise ValueError(value)

    def _SENS_CURR_PROT(self, value: str) -> None:
        amps = float(value)
        if not 0 < amps <= 1.05:
            raise ValueError(value)
        self.compliance = amps

    def _SENS_CURR_PROT_q(self, value: str) -> str:
        return f"{self.compliance:+.6E}"

    def _SENS_CURR_PROT_TRIP_q(self, value: str) -> str:
        self.current()
        return "1" if self.tripped else "0"

    def _FORM_ELEM(self, value: str) -> None:
        elements = [element.strip().upper()[:4] for element in value.split(",")]
        if not elements or any(element not in ELEMENTS for element in elements):
            raise ValueError(value)
        self.elements = elements

    def _FORM_ELEM_q(self, value: str) -> str:
        return ",".join(self.elements)

    def _OUTP(self, value: str) -> None:
        state = value.upper()
        if state not in ("ON", "OFF", "1", "0"):
            raise ValueError(value)
        self.output = state in ("ON", "1")

    def _OUTP_q(self, value: str) -> str:
        return "1" if self.output else "0"

    def _READ_q(self, value: str) -> str | None:
        if not self.output:
            self.errors.push(803, "Output not on")
            return None
        return self.reading(self.elements)

    def _MEAS_CURR_q(self, value: str) -> str | None:
        self.output = True
        return self.reading(["CURR"])

    def _MEAS_VOLT_q(self, value: str) -> str | None:
        self.output = True
        return self.reading(["VOLT"])

    def _SYST_ERR_q(self, value: str) -> str:
        return self.errors.pop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--voltage", type=float, default=3.3, help="source level at start, V (default 3.3)")
    parser.add_argument("--compliance", type=float, default=0.105, help="current compliance, A (default 0.105)")
    parser.add_argument("--resistance", type=float, default=10_000.0, help="DUT resistance, ohm")
    parser.add_argument("--fail-at", type=float, default=None, help="model seconds at which the DUT fails")
    parser.add_argument("--failure", choices=("open", "short"), default="short", help="how the DUT fails")


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "voltage": args.voltage, "compliance": args.compliance, "resistance": args.resistance,
        "fail_at": args.fail_at, "failure": args.failure,
    }  # fmt: skip
