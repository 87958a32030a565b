"""Watlow Series F4 ramp/soak controller on a temperature chamber (static set point mode).

Register map (0-based protocol addresses; FC03 and FC04 show the same map, FC06/FC16 write):

====  =====================================================  ======================  =====
reg   meaning                                                type                    write
====  =====================================================  ======================  =====
0     model code 5270 ("F4")                                 uint16
1-2   serial number, high word then low word                 uint16 x 2
100   input 1 process value (chamber air)                    int16, / 10^[606]
103   loop 1 output power, heat positive, cool negative      int16, / 100 (%)
104   input 2 process value (load thermocouple)              int16, / 10^[616]
200   operating mode: 0 static set point (no profile runs)   uint16
300   set point 1 (loop 1)                                   int16, / 10^[606]       yes
319   set point 2 (loop 2; stored, no loop behind it)        int16, / 10^[616]       yes
600   input 1 sensor type: 0 thermocouple                    uint16
602   input 1 range low                                      int16, / 10^[606]
603   input 1 range high                                     int16, / 10^[606]
606   input 1 decimal places (0..3)                          uint16                  yes
608   input 1 units class: 0 temperature                     uint16
610   input 2 sensor type: 0 thermocouple                    uint16
616   input 2 decimal places (0..3)                          uint16                  yes
901   temperature scale: 1 degC, 0 degF                      uint16                  yes
210   digital inputs; bit 3 is the chamber door switch       uint16 bits             yes*
====  =====================================================  ======================  =====

(*) The door switch wired to digital input 4 is this simulator's own wiring, not part of Watlow's map; a
write to 210 opens (bit 3 set) or closes the door, so a test can command it. ``door_schedule`` and
``power_loss`` take ``(at, duration)`` pairs in model seconds: while the door is open the air relaxes toward
ambient; while the power is off the controller is silent (its Modbus TCP gateway answers exception 0x0B,
"target device failed to respond") and the air cools toward ambient, then heats back once power returns.

Other addresses up to 901 read 0x0000 (Watlow returns 0 for inactive parameters) and refuse writes with
exception 02; reads past 901 are exception 02. A set point outside the range 602..603 is exception 03.
The profile engine (4000 block), the real-time clock and event outputs are not modelled.

Thermal model: the chamber air follows set point 1 as a first-order lag (``time_constant``) whose rate is
limited by the heater and the refrigeration (``max_heat_rate``, ``max_cool_rate``, degC per second). It is
integrated in closed form from the model clock on each access, so no background task runs and the result
does not depend on how often it is read. Output power is +/-100 % while the rate limit holds, then blends
into the holding power against losses to ambient (about 35 % at 125 degC). Readings carry seeded noise that
changes once per input sample (10 Hz model time, like the F4's input scan), so FC03 and FC04 of the same
scan agree.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from simulators.modbus_server import (
    IllegalDataValue,
    ModbusExceptionResponse,
    ModelClock,
    RegisterMapDevice,
    from_i16,
    to_u16,
)

MODEL_CODE = 5270
SENSOR_THERMOCOUPLE = 0
UNITS_TEMPERATURE = 0
MODE_STATIC = 0
SCALE_FAHRENHEIT, SCALE_CELSIUS = 0, 1

INPUT_SAMPLE_PERIOD = 0.1  # model seconds between input scans
LOSS_POWER_PER_DEGREE = 0.35  # % of heater power needed per degC above ambient to hold temperature
LOAD_OFFSET = -0.4  # degC: the load thermocouple reads a little below the air near the heater

REG_MODEL, REG_SERIAL_HIGH, REG_SERIAL_LOW = 0, 1, 2
REG_PV1, REG_POWER1, REG_PV2 = 100, 103, 104
REG_MODE = 200
REG_SP1, REG_SP2 = 300, 319
REG_SENSOR1, REG_RANGE_LOW, REG_RANGE_HIGH, REG_DECIMALS1, REG_UNITS1 = 600, 602, 603, 606, 608
REG_SENSOR2, REG_DECIMALS2 = 610, 616
REG_TEMP_SCALE = 901
REG_DIGITAL_INPUTS, DOOR_BIT = 210, 0x0008
DEFAULT_TIME_SCALE = 10.0
"""``edge-daq simulate watlow-f4`` runs the chamber ten times faster than a real one, as ``edge-daq demo`` does:
from 23 to 125 degC in about 2 minutes instead of 20 (``--time-scale 1`` for real-time physics)."""
SETPOINT_TOLERANCE = 2.0  # degC: "at set point" in the start-up note, the example rig's stress tolerance
Window = tuple[float, float]  # (start, duration) in model seconds


@dataclass(frozen=True, slots=True)
class Scan:
    """One input scan of the controller (noise included), in engineering units."""

    model_time: float
    air: float  # degC, input 1
    load: float  # degC, input 2
    power: float  # %, loop 1 output, heat positive
    setpoint1: float  # degC
    door_open: bool
    powered: bool


class GatewayTargetFailed(ModbusExceptionResponse):
    """What the Modbus TCP gateway in front of a powered-off F4 answers."""

    code = 0x0B


class WatlowF4(RegisterMapDevice):
    """One F4 controller (one Modbus unit) driving a chamber's air temperature toward set point 1."""

    highest_address = REG_TEMP_SCALE
    writable_registers = frozenset({REG_SP1, REG_SP2, REG_DECIMALS1, REG_DECIMALS2, REG_TEMP_SCALE, REG_DIGITAL_INPUTS})

    def __init__(
        self,
        *,
        unit: int = 1,
        seed: int = 0,
        clock: ModelClock | None = None,
        setpoint: float = 125.0,
        ambient: float = 23.0,
        time_constant: float = 60.0,
        max_heat_rate: float = 5.0 / 60,
        max_cool_rate: float = 3.0 / 60,
        range_low: float = -70.0,
        range_high: float = 180.0,
        noise: float = 0.05,
        door_schedule: Sequence[Window] = (),
        power_loss: Sequence[Window] = (),
    ) -> None:
        if time_constant <= 0 or max_heat_rate <= 0 or max_cool_rate <= 0:
            raise ValueError("time_constant and the heat/cool rates must be positive")
        if not range_low <= setpoint <= range_high:
            raise ValueError(f"set point {setpoint} is outside the input range {range_low}..{range_high}")
        self.unit = unit
        self.seed = seed
        self.clock = clock or ModelClock()
        self.ambient = ambient
        self.time_constant = time_constant
        self.max_heat_rate = max_heat_rate
        self.max_cool_rate = max_cool_rate
        self.range_low = range_low
        self.range_high = range_high
        self.noise = noise
        self.serial_number = random.Random(f"watlow-f4:{seed}:{unit}:serial").randrange(10_000_000, 99_999_999)
        self.setpoint1 = setpoint  # degC
        self.setpoint2 = ambient
        self.decimals1 = 1
        self.decimals2 = 1
        self.temperature_scale = SCALE_CELSIUS
        self._air = ambient  # degC, noiseless
        self.door_schedule = list(door_schedule)
        self.power_loss = list(power_loss)
        self.door_commanded = False
        self._model_time = self.clock.now()

    # -- thermal model

    @property
    def air_temperature(self) -> float:
        """The noiseless chamber air temperature now, in degC."""
        self._advance()
        return self._air

    @staticmethod
    def _inside(windows: Sequence[Window], t: float) -> bool:
        return any(start <= t < start + duration for start, duration in windows)

    def door_open_at(self, t: float) -> bool:
        return self.door_commanded or self._inside(self.door_schedule, t)

    def powered_at(self, t: float) -> bool:
        return not self._inside(self.power_loss, t)

    def _advance(self) -> None:
        """Integrate the air temperature up to now, piecewise between door and power events."""
        now = self.clock.now()
        edges = sorted(
            {edge for start, duration in [*self.door_schedule, *self.power_loss] for edge in (start, start + duration)}
        )
        while self._model_time < now:
            end = next((edge for edge in edges if edge > self._model_time and edge < now), now)
            t = self._model_time
            held = self.powered_at(t) and not self.door_open_at(t)
            self._integrate(end - t, self.setpoint1 if held else self.ambient)
            self._model_time = end

    def _integrate(self, elapsed: float, target: float) -> None:
        """A rate-limited ramp toward ``target``, then an exponential approach."""
        error = target - self._air
        max_rate = self.max_heat_rate if error > 0 else self.max_cool_rate
        # Below this error the proportional demand error/tau no longer exceeds what the plant can deliver.
        knee = self.time_constant * max_rate
        if abs(error) > knee:
            saturated_time = (abs(error) - knee) / max_rate
            if elapsed <= saturated_time:
                self._air += math.copysign(max_rate * elapsed, error)
                return
            elapsed -= saturated_time
            error = math.copysign(knee, error)
        self._air = target - error * math.exp(-elapsed / self.time_constant)

    def seconds_to_setpoint(self, within: float = SETPOINT_TOLERANCE) -> float:
        """Model seconds from the start (door shut, power on) until the air is within ``within`` degC of set
        point 1: the rate-limited ramp, then the exponential approach of :meth:`_integrate`."""
        error = abs(self.setpoint1 - self._air)
        if error <= within:
            return 0.0
        max_rate = self.max_heat_rate if self.setpoint1 > self._air else self.max_cool_rate
        knee = self.time_constant * max_rate
        ramp = max(0.0, error - knee) / max_rate
        return ramp + self.time_constant * math.log(min(error, knee) / within) if min(error, knee) > within else ramp

    def _output_power(self) -> float:
        """Loop 1 output in %, heat positive: full heat or cool while the ramp is rate-limited, blending
        into the holding power against losses to ambient as the error closes."""
        error = self.setpoint1 - self._air
        max_rate = self.max_heat_rate if error > 0 else self.max_cool_rate
        saturation = min(1.0, abs(error) / (self.time_constant * max_rate))
        holding = max(-100.0, min(100.0, LOSS_POWER_PER_DEGREE * (self._air - self.ambient)))
        full = math.copysign(100.0, error)
        return holding + (full - holding) * saturation

    # -- registers

    def _to_display(self, celsius: float) -> float:
        return celsius if self.temperature_scale == SCALE_CELSIUS else celsius * 9 / 5 + 32

    def _from_display(self, value: float) -> float:
        return value if self.temperature_scale == SCALE_CELSIUS else (value - 32) * 5 / 9

    def _scaled(self, celsius: float, decimals: int) -> int:
        return to_u16(self._to_display(celsius) * 10**decimals)

    def scan(self) -> Scan:
        """The readings of the current input scan, in degC and %, as any front end (Modbus, OPC UA) shows them."""
        self._advance()
        scan = random.Random(f"watlow-f4:{self.seed}:{self.unit}:{math.floor(self._model_time / INPUT_SAMPLE_PERIOD)}")

        def noise(amplitude: float) -> float:
            return max(-amplitude, min(amplitude, scan.gauss(0.0, amplitude / 2)))

        air = self._air + noise(self.noise)
        load = self._air + LOAD_OFFSET + noise(self.noise)
        power = self._output_power()
        if abs(power) < 100.0:  # a saturated output reads exactly +/-100 %
            power = max(-100.0, min(100.0, power + noise(0.2)))
        return Scan(
            model_time=self._model_time,
            air=air,
            load=load,
            power=power,
            setpoint1=self.setpoint1,
            door_open=self.door_open_at(self._model_time),
            powered=self.powered_at(self._model_time),
        )

    def register_values(self) -> Mapping[int, int]:
        reading = self.scan()
        if not reading.powered:
            raise GatewayTargetFailed("the controller is powered off")
        air, load, power = reading.air, reading.load, reading.power
        return {
            REG_MODEL: MODEL_CODE,
            REG_SERIAL_HIGH: self.serial_number >> 16,
            REG_SERIAL_LOW: self.serial_number & 0xFFFF,
            REG_PV1: self._scaled(air, self.decimals1),
            REG_POWER1: to_u16(100 * power),
            REG_PV2: self._scaled(load, self.decimals2),
            REG_MODE: MODE_STATIC,
            REG_SP1: self._scaled(self.setpoint1, self.decimals1),
            REG_SP2: self._scaled(self.setpoint2, self.decimals2),
            REG_SENSOR1: SENSOR_THERMOCOUPLE,
            REG_RANGE_LOW: self._scaled(self.range_low, self.decimals1),
            REG_RANGE_HIGH: self._scaled(self.range_high, self.decimals1),
            REG_DECIMALS1: self.decimals1,
            REG_UNITS1: UNITS_TEMPERATURE,
            REG_SENSOR2: SENSOR_THERMOCOUPLE,
            REG_DECIMALS2: self.decimals2,
            REG_TEMP_SCALE: self.temperature_scale,
            REG_DIGITAL_INPUTS: DOOR_BIT if self.door_open_at(self._model_time) else 0,
        }

    def _setpoint_from_register(self, register: int, decimals: int) -> float:
        return self._from_display(from_i16(register) / 10**decimals)

    def check_write(self, address: int, value: int) -> None:
        if address in (REG_SP1, REG_SP2):
            decimals = self.decimals1 if address == REG_SP1 else self.decimals2
            celsius = self._setpoint_from_register(value, decimals)
            # Compare on the register's resolution so the range limits themselves are accepted.
            tolerance = 0.5 / 10**decimals
            if not self.range_low - tolerance <= celsius <= self.range_high + tolerance:
                raise IllegalDataValue(f"set point {celsius:.2f} degC outside {self.range_low}..{self.range_high}")
        elif address in (REG_DECIMALS1, REG_DECIMALS2):
            if value > 3:
                raise IllegalDataValue("decimal places are 0..3")
        elif address == REG_TEMP_SCALE and value not in (SCALE_FAHRENHEIT, SCALE_CELSIUS):
            raise IllegalDataValue("temperature scale is 0 (degF) or 1 (degC)")

    def apply_write(self, address: int, value: int) -> None:
        # Integrate up to now under the old set point before the new one takes effect.
        self._advance()
        if address == REG_SP1:
            self.setpoint1 = self._setpoint_from_register(value, self.decimals1)
        elif address == REG_SP2:
            self.setpoint2 = self._setpoint_from_register(value, self.decimals2)
        elif address == REG_DECIMALS1:
            self.decimals1 = value
        elif address == REG_DECIMALS2:
            self.decimals2 = value
        elif address == REG_TEMP_SCALE:
            self.temperature_scale = value
        elif address == REG_DIGITAL_INPUTS:
            self.door_commanded = bool(value & DOOR_BIT)


# -- CLI glue, used by the registry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--setpoint", type=float, default=125.0, help="initial set point 1 in degC (default 125.0: HTOL)"
    )
    parser.add_argument("--ambient", type=float, default=23.0, help="start and ambient temperature, degC")
    parser.add_argument(
        "--time-constant", type=float, default=60.0, help="first-order lag of the chamber air, model seconds"
    )
    parser.add_argument(
        "--door-open", type=_window, action="append", default=[], metavar="AT:DURATION",
        help="open the door at AT model seconds for DURATION (repeatable; register 210 bit 3)",
    )  # fmt: skip
    parser.add_argument(
        "--power-loss", type=_window, action="append", default=[], metavar="AT:DURATION",
        help="cut the controller's power at AT model seconds for DURATION (repeatable)",
    )  # fmt: skip


def startup_note(options: Mapping[str, Any], time_scale: float) -> str:
    """What the chamber does from the start, in model and in real time (printed by ``edge-daq simulate``)."""
    chamber = WatlowF4(clock=ModelClock(time_scale=0), **options)
    model_s = chamber.seconds_to_setpoint()
    real_s = model_s / time_scale if time_scale else math.inf
    shown = f"{real_s / 60:.1f} min" if real_s >= 60 else f"{real_s:.1f} s"
    real = f"{shown} real time at --time-scale {time_scale:g}" if time_scale else "never: --time-scale 0 freezes it"
    return (
        f"chamber air {chamber.ambient:g} degC, set point {chamber.setpoint1:g} degC: within "
        f"{SETPOINT_TOLERANCE:g} degC after {model_s / 60:.1f} model minutes ({real})"
    )


def _window(text: str) -> Window:
    try:
        start, duration = (float(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected AT:DURATION in model seconds, got {text!r}") from None
    if not (start >= 0 and duration > 0):
        raise argparse.ArgumentTypeError(f"AT must be >= 0 and DURATION > 0, got {text!r}")
    return start, duration


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "setpoint": args.setpoint,
        "ambient": args.ambient,
        "time_constant": args.time_constant,
        "door_schedule": tuple(args.door_open),
        "power_loss": tuple(args.power_loss),
    }
