"""A mechanical endurance rig on one RS-485 bus: a VFD driving a crank, a load-cell transmitter and a vibration
and cycle monitor, three Modbus RTU slaves sharing one physical model.

Units (default 1, 2, 3, in this order; ``--units`` renumbers them):

**VFD** (unit 1), 16-bit registers, FC03/FC04:

====  ==============================================  ==========  =====
reg   meaning                                         type        write
====  ==============================================  ==========  =====
269   frequency set point                             uint16 x100 yes
4096  output frequency (Hz)                           uint16 x100
4097  output voltage (V)                              uint16
4098  output current (A)                              uint16 x100
4099  run state: 0 stopped, 1 running, 2 accelerating, 3 decelerating
8192  command: 1 run, 0 stop (reads back the last command)  uint16  yes
====  ==============================================  ==========  =====

**Load cell** (unit 2): float32 low word first (CDAB), as many transmitters send them: 0-1 net force (N),
2-3 gross force (N); 10 command (write 1: tare, the present gross becomes the zero of net).

**Monitor** (unit 3): 0-1 vibration velocity RMS (mm/s, float32 CDAB), 2-3 peak acceleration (g, float32
CDAB), 10-11 cycle counter (uint32, high word first), 12 cycle rate (cycles per second x100).

Model: the VFD ramps its frequency toward the set point at ``ramp`` Hz/s while running; the crank makes one
cycle per ``hz_per_cycle`` Hz each second; the load follows the crank as a sine around ``mean_force``. The
vibration grows with wear, ``(cycles / life_cycles)^3``, so a long run shows a bearing going bad. Everything
is integrated in closed form from the model clock on access.
"""

from __future__ import annotations

import argparse
import math
import random
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from simulators.modbus_server import IllegalDataValue, ModbusDevice, ModelClock, RegisterMapDevice

STOPPED, RUNNING, ACCELERATING, DECELERATING = 0, 1, 2, 3


def float32_cdab(value: float) -> tuple[int, int]:
    """A float32 as two registers, low word first."""
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return low, high


class EnduranceRig:
    """The physics shared by the three slaves."""

    def __init__(
        self,
        *,
        clock: ModelClock,
        seed: int,
        frequency: float = 50.0,
        running: bool = True,
        ramp: float = 5.0,
        hz_per_cycle: float = 10.0,
        mean_force: float = 1200.0,
        force_amplitude: float = 800.0,
        life_cycles: float = 1_000_000.0,
    ) -> None:
        if not 0 <= frequency <= 400 or ramp <= 0 or hz_per_cycle <= 0 or life_cycles <= 0:
            raise ValueError("frequency must be 0..400 Hz; ramp, hz_per_cycle and life_cycles positive")
        self.clock = clock
        self.seed = seed
        self.setpoint = frequency
        self.running = running
        self.ramp = ramp
        self.hz_per_cycle = hz_per_cycle
        self.mean_force = mean_force
        self.force_amplitude = force_amplitude
        self.life_cycles = life_cycles
        self.tare = 0.0
        self.frequency = frequency if running else 0.0
        self.cycles = 0.0
        self._time = clock.now()

    def advance(self) -> None:
        now = self.clock.now()
        elapsed = now - self._time
        if elapsed <= 0:
            return
        self._time = now
        target = self.setpoint if self.running else 0.0
        start = self.frequency
        ramp_time = min(elapsed, abs(target - start) / self.ramp)
        end = start + math.copysign(self.ramp * ramp_time, target - start)
        # Cycles: the ramp's average frequency over the ramp time, then the target for the rest.
        self.cycles += ((start + end) / 2 * ramp_time + target * (elapsed - ramp_time)) / self.hz_per_cycle
        self.frequency = target if ramp_time < elapsed else end

    @property
    def state(self) -> int:
        target = self.setpoint if self.running else 0.0
        if abs(self.frequency - target) < 1e-9:
            return RUNNING if self.running and self.frequency > 0 else STOPPED
        return ACCELERATING if target > self.frequency else DECELERATING

    def noise(self, what: str, amplitude: float) -> float:
        scan = random.Random(f"endurance:{self.seed}:{what}:{math.floor(self._time * 10)}")
        return max(-amplitude, min(amplitude, scan.gauss(0.0, amplitude / 2)))

    @property
    def gross_force(self) -> float:
        phase = 2 * math.pi * (self.cycles % 1.0)
        loaded = self.frequency > 0
        force = self.mean_force + (self.force_amplitude * math.sin(phase) if loaded else 0.0)
        return force + self.noise("force", 2.0)

    @property
    def wear(self) -> float:
        return (self.cycles / self.life_cycles) ** 3

    @property
    def vibration_rms(self) -> float:
        base = 0.9 * self.frequency / 50.0
        return max(0.0, base * (1 + 8 * self.wear) + self.noise("vib", 0.05))


class Vfd(RegisterMapDevice):
    highest_address = 8192
    writable_registers = frozenset({269, 8192})

    def __init__(self, rig: EnduranceRig) -> None:
        self.rig = rig
        self.command = 1 if rig.running else 0

    def register_values(self) -> Mapping[int, int]:
        rig = self.rig
        rig.advance()
        current = 1.2 + 0.09 * rig.frequency + (0.0 if rig.frequency == 0 else rig.noise("current", 0.03))
        return {
            269: round(rig.setpoint * 100),
            4096: round(rig.frequency * 100),
            4097: round(400 * rig.frequency / 50) if rig.frequency else 0,
            4098: max(0, round(current * 100)) if rig.frequency else 0,
            4099: rig.state,
            8192: self.command,
        }

    def check_write(self, address: int, value: int) -> None:
        if address == 269 and value > 40000:
            raise IllegalDataValue("frequency set point above 400 Hz")
        if address == 8192 and value not in (0, 1):
            raise IllegalDataValue("command is 1 (run) or 0 (stop)")

    def apply_write(self, address: int, value: int) -> None:
        self.rig.advance()
        if address == 269:
            self.rig.setpoint = value / 100
        else:
            self.command = value
            self.rig.running = value == 1


class LoadCell(RegisterMapDevice):
    highest_address = 10
    writable_registers = frozenset({10})

    def __init__(self, rig: EnduranceRig) -> None:
        self.rig = rig

    def register_values(self) -> Mapping[int, int]:
        self.rig.advance()
        gross = self.rig.gross_force
        values = dict(enumerate((*float32_cdab(gross - self.rig.tare), *float32_cdab(gross))))
        values[10] = 0
        return values

    def check_write(self, address: int, value: int) -> None:
        if value not in (0, 1):
            raise IllegalDataValue("command is 1 (tare)")

    def apply_write(self, address: int, value: int) -> None:
        if value == 1:
            self.rig.advance()
            self.rig.tare = self.rig.gross_force


class Monitor(RegisterMapDevice):
    highest_address = 12

    def __init__(self, rig: EnduranceRig) -> None:
        self.rig = rig

    def register_values(self) -> Mapping[int, int]:
        rig = self.rig
        rig.advance()
        rms = rig.vibration_rms
        cycles = int(rig.cycles) & 0xFFFFFFFF
        values = dict(enumerate((*float32_cdab(rms), *float32_cdab(rms * 0.35 * math.sqrt(2)))))
        values |= {10: cycles >> 16, 11: cycles & 0xFFFF, 12: round(rig.frequency / rig.hz_per_cycle * 100)}
        return values


ROLES = ("vfd", "loadcell", "monitor")


def create_devices(*, units: Iterable[int], seed: int, clock: ModelClock, **options: Any) -> dict[int, ModbusDevice]:
    """The rig's slaves on the given unit ids, in the order VFD, load cell, monitor."""
    ordered = list(units)
    if len(ordered) != len(ROLES):
        raise ValueError(f"the endurance rig has {len(ROLES)} slaves (VFD, load cell, monitor): give 3 unit ids")
    rig = EnduranceRig(clock=clock, seed=seed, **options)
    return {ordered[0]: Vfd(rig), ordered[1]: LoadCell(rig), ordered[2]: Monitor(rig)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frequency", type=float, default=50.0, help="VFD frequency set point, Hz (default 50)")
    parser.add_argument("--stopped", action="store_true", help="start with the motor stopped")
    parser.add_argument("--life-cycles", type=float, default=1e6, help="cycles at which wear has grown 9-fold")


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {"frequency": args.frequency, "running": not args.stopped, "life_cycles": args.life_cycles}
