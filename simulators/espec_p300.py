"""Espec P300-style chamber controller, ASCII over TCP (port 10001) or RS-232, CRLF-terminated.

Commands: ``TEMP?`` and ``HUMI?`` answer ``pv,sp,high_limit,low_limit``; ``MON?`` answers
``temp,humi,mode,alarm_count``; ``MODE?`` answers ``OFF``, ``STANDBY`` or ``CONSTANT``; ``TYPE?``;
``TEMP, S85.0 H100.0 L-10.0`` and ``HUMI, S85`` (or ``HUMI, SOFF``) set the set points and limits,
``MODE, CONSTANT|STANDBY|OFF`` the mode: each answers ``OK:<command>``. Anything else answers
``NA:CMD ERR``; a value out of range ``NA:DATA OUT OF RANGE``.

Model: in CONSTANT mode the dry bulb follows its set point as a first-order lag (``time_constant``), the
humidity follows its own set point more slowly, and never above what the dry bulb allows while heating
(the wet bulb stays below the dry bulb); in STANDBY or OFF both drift back to ambient (23 degC, 45 %RH).
"""

from __future__ import annotations

import argparse
import math
import random
import re
from typing import Any

from simulators.line_server import LineDevice
from simulators.modbus_server import ModelClock

AMBIENT_TEMP, AMBIENT_HUMI = 23.0, 45.0
_SETTING = re.compile(r"([SHL])\s*(OFF|[-+]?\d+(?:\.\d*)?)", re.IGNORECASE)


class EspecP300(LineDevice):
    read_termination = "\r\n"
    write_termination = "\r\n"

    def __init__(
        self,
        *,
        seed: int = 0,
        clock: ModelClock | None = None,
        temperature: float = 85.0,
        humidity: float | None = 85.0,
        time_constant: float = 300.0,
        mode: str = "CONSTANT",
    ) -> None:
        super().__init__(seed=seed, clock=clock)
        if time_constant <= 0:
            raise ValueError("time_constant must be positive")
        self.temp_sp, self.temp_high, self.temp_low = temperature, 100.0, -10.0
        self.humi_sp: float | None = humidity
        self.humi_high, self.humi_low = 100.0, 0.0
        self.time_constant = time_constant
        self.mode = mode
        self.temp, self.humi = AMBIENT_TEMP, AMBIENT_HUMI
        self._time = self.clock.now()

    def _advance(self) -> None:
        now = self.clock.now()
        elapsed, self._time = now - self._time, now
        if elapsed <= 0:
            return
        running = self.mode == "CONSTANT"
        temp_target = self.temp_sp if running else AMBIENT_TEMP
        humi_target = self.humi_sp if running and self.humi_sp is not None else AMBIENT_HUMI
        self.temp = temp_target + (self.temp - temp_target) * math.exp(-elapsed / self.time_constant)
        self.humi = humi_target + (self.humi - humi_target) * math.exp(-elapsed / (1.5 * self.time_constant))

    def _noise(self, what: str) -> float:
        return random.Random(f"p300:{self.seed}:{what}:{math.floor(self._time)}").gauss(0.0, 0.03)

    def handle(self, command: str) -> str | None:
        self._advance()
        text = command.strip().upper()
        name, _, argument = (part.strip() for part in text.partition(","))
        if name == "TEMP?":
            pv = self.temp + self._noise("t")
            return f"{pv:.1f},{self.temp_sp:.1f},{self.temp_high:.1f},{self.temp_low:.1f}"
        if name == "HUMI?":
            pv = self.humi + self._noise("h")
            sp = "OFF" if self.humi_sp is None else f"{self.humi_sp:.0f}"
            return f"{pv:.0f},{sp},{self.humi_high:.0f},{self.humi_low:.0f}"
        if name == "MON?":
            humi = "" if self.humi_sp is None and self.mode == "CONSTANT" else f"{self.humi + self._noise('h'):.0f}"
            return f"{self.temp + self._noise('t'):.1f},{humi},{self.mode},0"
        if name == "MODE?":
            return self.mode
        if name == "TYPE?":
            return "T,T,S2,160.0"
        if name == "ROM?":
            return "P300 V1.30"
        if name == "MODE" and argument in ("CONSTANT", "STANDBY", "OFF"):
            self.mode = argument
            return f"OK:{text}"
        if name in ("TEMP", "HUMI") and argument:
            return self._set(name, argument, text)
        return "NA:CMD ERR"

    def _set(self, name: str, argument: str, text: str) -> str:
        settings = {key.upper(): value.upper() for key, value in _SETTING.findall(argument)}
        if not settings:
            return "NA:CMD ERR"
        try:
            values = {key: None if value == "OFF" else float(value) for key, value in settings.items()}
        except ValueError:
            return "NA:CMD ERR"
        low, high = (-70.0, 180.0) if name == "TEMP" else (0.0, 100.0)
        if any(value is not None and not low <= value <= high for value in values.values()):
            return "NA:DATA OUT OF RANGE"
        if name == "TEMP":
            self.temp_sp = _or(values.get("S"), self.temp_sp)
            self.temp_high = _or(values.get("H"), self.temp_high)
            self.temp_low = _or(values.get("L"), self.temp_low)
        elif "S" in values:
            self.humi_sp = values["S"]
        return f"OK:{text}"


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--temperature", type=float, default=85.0, help="dry-bulb set point, degC (default 85)")
    parser.add_argument("--humidity", type=float, default=85.0, help="humidity set point, %%RH (default 85)")
    parser.add_argument("--time-constant", type=float, default=300.0, help="thermal lag, model seconds")


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {"temperature": args.temperature, "humidity": args.humidity, "time_constant": args.time_constant}
