"""A burn-in board: N DUT sockets, each on its own protected supply, in an HTOL/burn-in oven.

Register map (0-based protocol addresses; FC03 and FC04 show the same map, FC06/FC16 write):

==============  ==================================================  =====================  =====
reg             meaning                                             type                   write
==============  ==================================================  =====================  =====
0               board id                                            uint16
1               firmware version (0x0103 = 1.3)                     uint16
2               number of sockets                                   uint16
10              board temperature                                   int16, 0.1 degC
20              bias enable: 1 on, 0 off (every socket supply)      uint16                 yes
21              socket supply set point                             uint16, mV             yes
22              over-current limit, per socket                      uint16, 0.1 mA         yes
30-31           stress time: seconds with bias on                   uint32, high word 1st
1000+10(s-1)    socket s supply voltage (s = 1..N)                  uint16, mV
1001+10(s-1)    socket s supply current                             uint16, 0.1 mA
1002+10(s-1)    socket s status: bit 0 over-current latched,        uint16 bits            yes
                bit 1 supply on; any write clears the latch
1003+10(s-1)    socket s enable: 1 on (at start), 0 off             uint16                 yes
==============  ==================================================  =====================  =====

Other addresses up to the last socket's status register read 0 and refuse writes (exception 02); reads
past it are exception 02. Out-of-range writes (bias or a socket enable not 0/1, supply outside
800..5500 mV, limit 0) are exception 03. A disabled socket's supply is off: it reads 0 V and 0 mA, and
its over-current latch cannot trip (the protective action a burn-in system takes on a shorted DUT).
Bit tables: coil 0 mirrors the bias enable (FC01/05/15); discrete input s-1 is socket s's
over-current latch (FC02).

DUT model: each socket's baseline current is drawn once from a normal distribution around
``current_ma`` and drifts upward with stress time at a per-socket rate (log-normal around
``drift_per_hour``, relative), as leakage grows during burn-in. Stress time accrues only while bias is on.
A socket whose current exceeds the limit latches its over-current flag and its supply switches off until
the latch is cleared (it trips again if the cause is still there). ``failures`` inject a DUT failure at a
stress time: ``open`` (no current), ``short`` (the supply's 800 mA current limit, which trips the latch),
``leak`` (a current step of half the baseline) or ``latch`` (the over-current flag latches with no current
step, as a latch-up does). ``weibull=(beta, eta)`` draws every other socket's failure time from a Weibull
distribution (eta in model seconds of stress) and its mode from ``weibull_modes``, seeded per socket:
:meth:`BurnInBoard.failure_plan` is the injected truth.

Everything is computed lazily from the model clock on each access; readings carry seeded noise that
changes once per 0.1 s of model time (the board's ADC scan).
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from simulators.modbus_server import (
    BitTable,
    IllegalDataAddress,
    IllegalDataValue,
    ModelClock,
    RegisterMapDevice,
    to_u16,
)

FailureMode = Literal["open", "short", "leak", "latch"]

MAX_SOCKETS = 128
FIRMWARE_VERSION = 0x0103
ADC_SCAN_PERIOD = 0.1  # model seconds between ADC scans
SUPPLY_CURRENT_LIMIT_MA = 800.0  # what a shorted DUT draws: the socket supply's own current limit
TRACE_RESISTANCE_OHM = 0.5  # supply-to-DUT resistance: the voltage sags by I*R
SELF_HEATING_DEGC_PER_W = 0.1
SUPPLY_RANGE_MV = (800, 5500)

REG_BOARD_ID, REG_FIRMWARE, REG_SOCKET_COUNT = 0, 1, 2
REG_TEMPERATURE = 10
REG_BIAS, REG_SUPPLY_MV, REG_LIMIT = 20, 21, 22
REG_STRESS_HIGH, REG_STRESS_LOW = 30, 31
SOCKET_BASE, SOCKET_STRIDE = 1000, 10
VOLTAGE_OFFSET, CURRENT_OFFSET, STATUS_OFFSET, ENABLE_OFFSET = 0, 1, 2, 3
STATUS_OVER_CURRENT, STATUS_SUPPLY_ON = 0x0001, 0x0002
COIL_BIAS = 0


def socket_register(socket: int, offset: int) -> int:
    """The address of a socket's register (socket 1-based; offset VOLTAGE/CURRENT/STATUS_OFFSET)."""
    return SOCKET_BASE + SOCKET_STRIDE * (socket - 1) + offset


@dataclass(frozen=True, slots=True)
class Failure:
    """A DUT failure to inject: socket ``socket`` fails in ``mode`` after ``at_stress_s`` of stress time."""

    socket: int
    at_stress_s: float
    mode: FailureMode

    @classmethod
    def parse(cls, text: str) -> Failure:
        """From ``SOCKET:AT_SECONDS:MODE``, e.g. ``3:3600:short``."""
        parts = text.split(":")
        if len(parts) != 3 or parts[2] not in get_args(FailureMode):
            raise ValueError(f"expected SOCKET:AT_SECONDS:MODE with MODE open|short|leak|latch, got {text!r}")
        try:
            socket, at_stress_s = int(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"expected SOCKET:AT_SECONDS:MODE with numbers, got {text!r}") from None
        if socket < 1 or not math.isfinite(at_stress_s) or at_stress_s < 0:
            raise ValueError(f"socket must be >= 1 and AT_SECONDS >= 0, got {text!r}")
        mode: FailureMode = parts[2]  # type: ignore[assignment]  # checked against FailureMode above
        return cls(socket, at_stress_s, mode)


@dataclass(slots=True)
class _Socket:
    baseline_ma: float
    drift_per_hour: float  # relative increase of the current per hour of stress
    failure: Failure | None = None
    over_current: bool = False
    enabled: bool = True

    def current_ma(self, stress_s: float) -> float:
        """The noiseless current the DUT draws from a powered supply after ``stress_s`` of stress."""
        current = self.baseline_ma * (1.0 + self.drift_per_hour * stress_s / 3600.0)
        if self.failure is None or stress_s < self.failure.at_stress_s:
            return current
        if self.failure.mode == "open":
            return 0.0
        if self.failure.mode == "short":
            return SUPPLY_CURRENT_LIMIT_MA
        if self.failure.mode == "latch":
            return current
        return current + 0.5 * self.baseline_ma

    def latched_up(self, stress_s: float) -> bool:
        return self.failure is not None and self.failure.mode == "latch" and stress_s >= self.failure.at_stress_s


class BurnInBoard(RegisterMapDevice):
    """One burn-in board (one Modbus unit) with ``sockets`` DUT sockets."""

    writable_registers: frozenset[int] = frozenset()

    def __init__(
        self,
        *,
        unit: int = 1,
        seed: int = 0,
        clock: ModelClock | None = None,
        sockets: int = 32,
        board_id: int | None = None,
        supply_mv: int = 3300,
        current_ma: float = 45.0,
        current_spread: float = 0.08,
        drift_per_hour: float = 2e-4,
        limit_ma: float = 120.0,
        temperature: float = 125.0,
        bias: bool = True,
        failures: Iterable[Failure] = (),
        weibull: tuple[float, float] | None = None,
        weibull_modes: Sequence[FailureMode] = ("leak", "open", "short", "latch"),
    ) -> None:
        if not 1 <= sockets <= MAX_SOCKETS:
            raise ValueError(f"sockets must be 1..{MAX_SOCKETS}, got {sockets}")
        if not SUPPLY_RANGE_MV[0] <= supply_mv <= SUPPLY_RANGE_MV[1]:
            raise ValueError(f"supply_mv must be {SUPPLY_RANGE_MV[0]}..{SUPPLY_RANGE_MV[1]}")
        if not 0.1 <= limit_ma <= 6553.5:
            raise ValueError("limit_ma must be 0.1..6553.5")
        self.unit = unit
        self.seed = seed
        self.clock = clock or ModelClock()
        self.socket_count = sockets
        self.board_id = board_id if board_id is not None else unit
        self.supply_mv = supply_mv
        self.limit_ma = limit_ma
        self.oven_temperature = temperature
        self.bias = bias
        self.stress_s = 0.0
        self.highest_address = socket_register(sockets, ENABLE_OFFSET)
        self.writable_registers = frozenset(
            {REG_BIAS, REG_SUPPLY_MV, REG_LIMIT}
            | {socket_register(s, offset) for s in range(1, sockets + 1) for offset in (STATUS_OFFSET, ENABLE_OFFSET)}
        )
        failure_by_socket: dict[int, Failure] = {}
        for failure in failures:
            if failure.socket > sockets:
                raise ValueError(f"failure on socket {failure.socket}, but the board has {sockets} sockets")
            failure_by_socket[failure.socket] = failure
        if weibull is not None:
            beta, eta = weibull
            if not (beta > 0 and eta > 0) or not weibull_modes:
                raise ValueError("weibull needs BETA > 0, ETA > 0 and at least one mode")
            if unknown := [mode for mode in weibull_modes if mode not in get_args(FailureMode)]:
                raise ValueError(f"unknown failure modes {unknown}: expected open, short, leak, latch")
            for socket in range(1, sockets + 1):
                # Its own generator, so the drawn lives do not change the DUTs' currents (and vice versa).
                life = random.Random(f"burnin-board:{seed}:{unit}:weibull:{socket}")
                at = life.weibullvariate(eta, beta)
                failure_by_socket.setdefault(socket, Failure(socket, at, life.choice(list(weibull_modes))))
        self._sockets: list[_Socket] = []
        for socket in range(1, sockets + 1):
            # One generator per socket: a socket's DUT does not change when the socket count does.
            draw = random.Random(f"burnin-board:{seed}:{unit}:socket:{socket}")
            baseline = max(0.1 * current_ma, draw.gauss(current_ma, current_spread * current_ma))
            drift = drift_per_hour * draw.lognormvariate(0.0, 0.5)
            self._sockets.append(_Socket(baseline, drift, failure_by_socket.get(socket)))
        self._model_time = self.clock.now()

    # -- model

    def _advance(self) -> None:
        """Accrue stress time up to now and latch over-currents (drift is monotonic, so checking now is
        enough to catch a limit crossed since the last access)."""
        now = self.clock.now()
        if now > self._model_time:
            if self.bias:
                self.stress_s += now - self._model_time
            self._model_time = now
        if not self.bias:
            return
        for dut in self._sockets:
            if (
                dut.enabled
                and not dut.over_current
                and (dut.current_ma(self.stress_s) > self.limit_ma or dut.latched_up(self.stress_s))
            ):
                dut.over_current = True

    def _supply_on(self, dut: _Socket) -> bool:
        return self.bias and dut.enabled and not dut.over_current

    def failure_plan(self) -> list[Failure]:
        """Every failure this board will inject (explicit and Weibull-drawn), by socket."""
        return [dut.failure for dut in self._sockets if dut.failure is not None]

    def socket_current_ma(self, socket: int) -> float:
        """The noiseless current of socket ``socket`` (1-based) now, in mA (0 with its supply off)."""
        self._advance()
        dut = self._sockets[socket - 1]
        return dut.current_ma(self.stress_s) if self._supply_on(dut) else 0.0

    def socket_enabled(self, socket: int) -> bool:
        return self._sockets[socket - 1].enabled

    def over_current(self, socket: int) -> bool:
        self._advance()
        return self._sockets[socket - 1].over_current

    # -- registers

    def register_values(self) -> Mapping[int, int]:
        self._advance()
        scan = random.Random(f"burnin-board:{self.seed}:{self.unit}:{math.floor(self._model_time / ADC_SCAN_PERIOD)}")
        stress = int(self.stress_s)
        values = {
            REG_BOARD_ID: self.board_id,
            REG_FIRMWARE: FIRMWARE_VERSION,
            REG_SOCKET_COUNT: self.socket_count,
            REG_BIAS: int(self.bias),
            REG_SUPPLY_MV: self.supply_mv,
            REG_LIMIT: round(self.limit_ma * 10),
            REG_STRESS_HIGH: (stress >> 16) & 0xFFFF,
            REG_STRESS_LOW: stress & 0xFFFF,
        }
        board_power_w = 0.0
        for socket, dut in enumerate(self._sockets, start=1):
            voltage_noise, current_noise = scan.gauss(0.0, 0.5), scan.gauss(0.0, 0.003)
            if self._supply_on(dut):
                current = dut.current_ma(self.stress_s)
                voltage = self.supply_mv - current * TRACE_RESISTANCE_OHM
                voltage, current = voltage + voltage_noise, current * (1.0 + current_noise)
            else:
                voltage = current = 0.0
            board_power_w += voltage * current * 1e-6
            status = (STATUS_OVER_CURRENT if dut.over_current else 0) | (
                STATUS_SUPPLY_ON if self._supply_on(dut) else 0
            )
            values[socket_register(socket, VOLTAGE_OFFSET)] = max(0, min(0xFFFF, round(voltage)))
            values[socket_register(socket, CURRENT_OFFSET)] = max(0, min(0xFFFF, round(current * 10)))
            values[socket_register(socket, STATUS_OFFSET)] = status
            values[socket_register(socket, ENABLE_OFFSET)] = int(dut.enabled)
        temperature = self.oven_temperature + SELF_HEATING_DEGC_PER_W * board_power_w + scan.gauss(0.0, 0.05)
        values[REG_TEMPERATURE] = to_u16(temperature * 10)
        return values

    def check_write(self, address: int, value: int) -> None:
        if address == REG_BIAS and value not in (0, 1):
            raise IllegalDataValue("bias enable is 0 or 1")
        if address == REG_SUPPLY_MV and not SUPPLY_RANGE_MV[0] <= value <= SUPPLY_RANGE_MV[1]:
            raise IllegalDataValue(f"supply set point is {SUPPLY_RANGE_MV[0]}..{SUPPLY_RANGE_MV[1]} mV")
        if address == REG_LIMIT and value == 0:
            raise IllegalDataValue("the over-current limit cannot be 0")
        if address >= SOCKET_BASE and (address - SOCKET_BASE) % SOCKET_STRIDE == ENABLE_OFFSET and value not in (0, 1):
            raise IllegalDataValue("a socket enable is 0 or 1")

    def apply_write(self, address: int, value: int) -> None:
        # Accrue stress time under the old settings before the write takes effect.
        self._advance()
        if address == REG_BIAS:
            self.bias = bool(value)
        elif address == REG_SUPPLY_MV:
            self.supply_mv = value
        elif address == REG_LIMIT:
            self.limit_ma = value / 10
        elif (address - SOCKET_BASE) % SOCKET_STRIDE == ENABLE_OFFSET:
            self._sockets[(address - SOCKET_BASE) // SOCKET_STRIDE].enabled = bool(value)
        else:  # a socket status register: any write clears its latch
            self._sockets[(address - SOCKET_BASE) // SOCKET_STRIDE].over_current = False
        self._advance()  # a new limit or a cleared latch is judged at once

    def read_bits(self, table: BitTable, address: int, count: int) -> list[bool]:
        self._advance()
        if table == "coil":
            if address != COIL_BIAS or count != 1:
                raise IllegalDataAddress("the only coil is 0 (bias enable)")
            return [self.bias]
        if address + count > self.socket_count:
            raise IllegalDataAddress(f"discrete inputs are 0..{self.socket_count - 1} (over-current latches)")
        return [dut.over_current for dut in self._sockets[address : address + count]]

    def write_bits(self, address: int, values: Sequence[bool]) -> None:
        if address != COIL_BIAS or len(values) != 1:
            raise IllegalDataAddress("the only coil is 0 (bias enable)")
        self.apply_write(REG_BIAS, int(values[0]))


# -- CLI glue, used by the registry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sockets", type=int, default=32, help=f"DUT sockets, 1..{MAX_SOCKETS} (default 32)")
    parser.add_argument("--supply-mv", type=int, default=3300, help="socket supply set point, mV (default 3300)")
    parser.add_argument("--current-ma", type=float, default=45.0, help="mean DUT baseline current, mA")
    parser.add_argument("--limit-ma", type=float, default=120.0, help="over-current limit per socket, mA")
    parser.add_argument("--temperature", type=float, default=125.0, help="oven temperature, degC")
    parser.add_argument("--bias", choices=("on", "off"), default="on", help="bias enable at power-up (default on)")
    parser.add_argument(
        "--fail",
        dest="failures",
        action="append",
        default=[],
        type=_failure_argument,
        metavar="SOCKET:AT_SECONDS:MODE",
        help="inject a DUT failure after AT_SECONDS of stress time; MODE open|short|leak|latch (repeatable)",
    )
    parser.add_argument(
        "--weibull",
        type=_weibull_argument,
        default=None,
        metavar="BETA,ETA",
        help="draw each other socket's failure time from Weibull(BETA, ETA model seconds of stress), seeded",
    )
    parser.add_argument(
        "--weibull-modes",
        default="leak,open,short,latch",
        metavar="MODE,...",
        help="failure modes the drawn failures pick from (default leak,open,short,latch)",
    )


def _failure_argument(text: str) -> Failure:
    try:
        return Failure.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _weibull_argument(text: str) -> tuple[float, float]:
    try:
        beta, eta = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BETA,ETA such as 1.5,36000, got {text!r}") from None
    if not (beta > 0 and eta > 0):
        raise argparse.ArgumentTypeError(f"BETA and ETA must be > 0, got {text!r}")
    return beta, eta


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "sockets": args.sockets,
        "supply_mv": args.supply_mv,
        "current_ma": args.current_ma,
        "limit_ma": args.limit_ma,
        "temperature": args.temperature,
        "bias": args.bias == "on",
        "failures": tuple(args.failures),
        "weibull": args.weibull,
        "weibull_modes": tuple(mode for mode in args.weibull_modes.split(",") if mode),
    }
