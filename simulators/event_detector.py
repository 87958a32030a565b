"""An event detector on a temperature-cycling chamber: per-channel latched event counts of daisy-chained
solder joints (board-level reliability, IPC-9701 / JESD22-A104), as an Analysis Tech or Anatech detector
counts them in hardware.

Register map (0-based protocol addresses; FC03 and FC04 show the same map, FC06/FC16 write):

==============  ==================================================  =====================  =====
reg             meaning                                             type                   write
==============  ==================================================  =====================  =====
0               device id                                           uint16
1               firmware version (0x0201 = 2.1)                     uint16
2               number of channels                                  uint16
10              chamber air temperature                             int16, 0.1 degC
11-12           temperature cycles completed                        uint32, high word 1st
20              event threshold                                     uint16, ohm            yes
1000+4(c-1)     channel c event count (c = 1..N), latched           uint32, high word 1st
1002+4(c-1)     channel c status: bit 0 an event since the last     uint16 bits            yes
                clear, bit 1 open now; any write clears the count
1003+4(c-1)     channel c daisy-chain resistance                    uint16, 0.1 ohm
==============  ==================================================  =====================  =====

An event is the chain's resistance above the threshold for at least 1 µs: far too short for a poll to see,
which is why the detector counts them itself and a poll reads the count. A rise of the count between two
polls is one or more events.

Chamber model: after ``soak`` model seconds at the low extreme, trapezoidal cycles of ``cycle`` model
seconds: ramp up (1/8), dwell high (3/8), ramp down (1/8), dwell low (3/8). A cycle is complete at the end
of its low dwell.

Channel model: ``intermittent`` gives channels that crack at a cycle (``(channel, cycle)``), ``weibull=(beta,
eta)`` draws every other channel's crack cycle (eta in cycles); from its crack cycle on, a channel has a
burst of ``burst`` events (seeded, between its two bounds) in every high dwell, as a cracked joint opens when
the board is hot, and becomes a hard open (resistance at full scale, no more events) ``hard_open_after``
cycles later. Every channel also has isolated events: with probability ``isolated`` per cycle, one event at
a random moment (a glitch, handling, a marginal contact), which no confirmation window may take for a
failure. :meth:`EventDetector.failure_plan` is the injected truth; :meth:`EventDetector.events` the count.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from simulators.modbus_server import IllegalDataValue, ModelClock, RegisterMapDevice, to_u16

MAX_CHANNELS = 256
FIRMWARE_VERSION = 0x0201
REG_DEVICE_ID, REG_FIRMWARE, REG_CHANNELS = 0, 1, 2
REG_TEMPERATURE, REG_CYCLES_HIGH, REG_CYCLES_LOW = 10, 11, 12
REG_THRESHOLD = 20
CHANNEL_BASE, CHANNEL_STRIDE = 1000, 4
COUNT_OFFSET, STATUS_OFFSET, RESISTANCE_OFFSET = 0, 2, 3
STATUS_EVENT, STATUS_OPEN = 0x0001, 0x0002
HIGH_DWELL = (0.125, 0.5)
"""The high dwell, as fractions of a cycle: bursts fall inside it (away from its edges)."""
FULL_SCALE_OHM = 6553.5


def channel_register(channel: int, offset: int) -> int:
    return CHANNEL_BASE + CHANNEL_STRIDE * (channel - 1) + offset


@dataclass(frozen=True, slots=True)
class Crack:
    """Channel ``channel`` cracks in cycle ``cycle`` (0-based: that many cycles were complete at its first event)."""

    channel: int
    cycle: int

    @classmethod
    def parse(cls, text: str) -> Crack:
        channel, separator, cycle = text.partition(":")
        if not separator or not channel.isdigit() or not cycle.isdigit() or int(channel) < 1:
            raise ValueError(f"expected CHANNEL:CYCLE such as 3:120, got {text!r}")
        return cls(int(channel), int(cycle))


@dataclass(slots=True)
class _Channel:
    seed: str
    base_ohm: float
    crack: Crack | None
    burst: tuple[int, int]
    isolated: float
    hard_after: int
    cleared: int = 0
    """The count at the last clear."""
    _per_cycle: list[list[float]] = field(default_factory=list)
    """The event phases (fractions of the cycle) of each cycle, drawn lazily."""
    _before: list[int] = field(default_factory=lambda: [0])
    """Events in the cycles before cycle k."""

    def phases(self, cycle: int) -> list[float]:
        while len(self._per_cycle) <= cycle:
            drawn = self._draw(len(self._per_cycle))
            self._per_cycle.append(drawn)
            self._before.append(self._before[-1] + len(drawn))
        return self._per_cycle[cycle]

    def events_before(self, cycle: int) -> int:
        self.phases(cycle)
        return self._before[cycle]

    def _draw(self, cycle: int) -> list[float]:
        draw = random.Random(f"{self.seed}:{cycle}")
        phases = [draw.random()] if draw.random() < self.isolated else []
        crack = self.crack
        if crack is not None and crack.cycle <= cycle < crack.cycle + self.hard_after:
            low, high = HIGH_DWELL
            margin = (high - low) / 6
            burst = draw.randint(*self.burst)
            phases += sorted(draw.uniform(low + margin, high - margin) for _ in range(burst))
        return sorted(phases)


class EventDetector(RegisterMapDevice):
    """An event detector (one Modbus unit) with ``channels`` channels, on a cycling chamber."""

    def __init__(
        self,
        *,
        unit: int = 1,
        seed: int = 0,
        clock: ModelClock | None = None,
        channels: int = 32,
        low: float = -40.0,
        high: float = 125.0,
        cycle: float = 3600.0,
        soak: float = 600.0,
        threshold: int = 300,
        intermittent: Iterable[Crack] = (),
        weibull: tuple[float, float] | None = None,
        burst: tuple[int, int] = (3, 8),
        isolated: float = 0.05,
        hard_open_after: int = 50,
    ) -> None:
        if not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be 1..{MAX_CHANNELS}, got {channels}")
        if not low < high or not cycle > 0 or soak < 0 or not 0 <= isolated <= 1:
            raise ValueError("need low < high, cycle > 0, soak >= 0 and isolated in 0..1")
        if not 1 <= burst[0] <= burst[1] or hard_open_after < 1 or not 1 <= threshold <= 6000:
            raise ValueError("need 1 <= burst low <= burst high, hard_open_after >= 1, threshold 1..6000 ohm")
        self.unit, self.seed = unit, seed
        self.clock = clock or ModelClock()
        self.channel_count = channels
        self.low, self.high, self.cycle_s, self.soak_s = low, high, cycle, soak
        self.threshold = threshold
        self.highest_address = channel_register(channels, RESISTANCE_OFFSET)
        self.writable_registers = frozenset(
            {REG_THRESHOLD} | {channel_register(c, STATUS_OFFSET) for c in range(1, channels + 1)}
        )
        cracks: dict[int, Crack] = {}
        for crack in intermittent:
            if crack.channel > channels:
                raise ValueError(f"a crack on channel {crack.channel}, but the detector has {channels} channels")
            cracks[crack.channel] = crack
        if weibull is not None:
            beta, eta = weibull
            if not (beta > 0 and eta > 0):
                raise ValueError("weibull needs BETA > 0 and ETA > 0 (cycles)")
            for channel in range(1, channels + 1):
                life = random.Random(f"event-detector:{seed}:{unit}:weibull:{channel}")
                cracks.setdefault(channel, Crack(channel, int(life.weibullvariate(eta, beta))))
        self._channels: list[_Channel] = []
        for channel in range(1, channels + 1):
            draw = random.Random(f"event-detector:{seed}:{unit}:channel:{channel}")
            self._channels.append(
                _Channel(
                    f"event-detector:{seed}:{unit}:events:{channel}",
                    draw.uniform(2.0, 20.0),
                    cracks.get(channel),
                    burst,
                    isolated,
                    hard_open_after,
                )
            )

    # -- model

    def position(self) -> tuple[int, float]:
        """Cycles complete and the phase (0..1) of the cycle under way (during the soak: 0 and 0)."""
        t = self.clock.now() - self.soak_s
        if t < 0:
            return 0, 0.0
        cycles, phase = divmod(t / self.cycle_s, 1.0)
        return int(cycles), phase

    def temperature(self) -> float:
        t = self.clock.now() - self.soak_s
        if t < 0:
            return self.low
        phase = (t / self.cycle_s) % 1.0
        span = self.high - self.low
        if phase < 0.125:
            return self.low + span * phase / 0.125
        if phase < 0.5:
            return self.high
        if phase < 0.625:
            return self.high - span * (phase - 0.5) / 0.125
        return self.low

    def events(self, channel: int) -> int:
        """The events channel ``channel`` has had since the start (not counting clears)."""
        state = self._channels[channel - 1]
        if self.clock.now() < self.soak_s:
            return 0
        cycles, phase = self.position()
        return state.events_before(cycles) + sum(1 for p in state.phases(cycles) if p <= phase)

    def event_cycles(self, channel: int, cycles: int) -> list[int]:
        """The cycle (0-based) of each event of channel ``channel`` in its first ``cycles`` cycles: the truth."""
        state = self._channels[channel - 1]
        return [k for k in range(cycles) for _ in state.phases(k)]

    def hard_open(self, channel: int) -> bool:
        crack = self._channels[channel - 1].crack
        return crack is not None and self.position()[0] >= crack.cycle + self._channels[channel - 1].hard_after

    def failure_plan(self) -> list[Crack]:
        """Every channel that will crack (explicit and Weibull-drawn), by channel."""
        return [state.crack for state in self._channels if state.crack is not None]

    # -- registers

    def register_values(self) -> Mapping[int, int]:
        cycles, _ = self.position()
        values = {
            REG_DEVICE_ID: self.unit,
            REG_FIRMWARE: FIRMWARE_VERSION,
            REG_CHANNELS: self.channel_count,
            REG_TEMPERATURE: to_u16(self.temperature() * 10),
            REG_CYCLES_HIGH: (cycles >> 16) & 0xFFFF,
            REG_CYCLES_LOW: cycles & 0xFFFF,
            REG_THRESHOLD: self.threshold,
        }
        for channel, state in enumerate(self._channels, start=1):
            count = self.events(channel) - state.cleared
            hard = self.hard_open(channel)
            ohm = FULL_SCALE_OHM if hard else state.base_ohm * (1.0 + 0.001 * min(count, 1000))
            values[channel_register(channel, COUNT_OFFSET)] = (count >> 16) & 0xFFFF
            values[channel_register(channel, COUNT_OFFSET) + 1] = count & 0xFFFF
            values[channel_register(channel, STATUS_OFFSET)] = (STATUS_EVENT if count else 0) | (
                STATUS_OPEN if hard else 0
            )
            values[channel_register(channel, RESISTANCE_OFFSET)] = min(0xFFFF, round(ohm * 10))
        return values

    def check_write(self, address: int, value: int) -> None:
        if address == REG_THRESHOLD and not 1 <= value <= 6000:
            raise IllegalDataValue("the event threshold is 1..6000 ohm")

    def apply_write(self, address: int, value: int) -> None:
        if address == REG_THRESHOLD:
            self.threshold = value
            return
        channel = (address - CHANNEL_BASE) // CHANNEL_STRIDE + 1
        self._channels[channel - 1].cleared = self.events(channel)  # any write clears the latched count


def _crack_argument(text: str) -> Crack:
    try:
        return Crack.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _pair(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        first, second = (float(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers A,B, got {text!r}") from None
    if not (math.isfinite(first) and math.isfinite(second)):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return first, second


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--channels", type=int, default=32, help=f"channels, 1..{MAX_CHANNELS} (default 32)")
    parser.add_argument("--low", type=float, default=-40.0, help="low extreme, degC (default -40)")
    parser.add_argument("--high", type=float, default=125.0, help="high extreme, degC (default 125)")
    parser.add_argument("--cycle", type=float, default=3600.0, help="model seconds per cycle (default 3600)")
    parser.add_argument("--soak", type=float, default=600.0, help="model seconds at low before cycle 0")
    parser.add_argument(
        "--crack", dest="intermittent", action="append", default=[], type=_crack_argument, metavar="CHANNEL:CYCLE",
        help="channel CHANNEL turns intermittent in cycle CYCLE (repeatable)",
    )  # fmt: skip
    parser.add_argument("--weibull", type=_pair, default=None, metavar="BETA,ETA", help="crack cycles ~ Weibull")
    parser.add_argument("--isolated", type=float, default=0.05, help="isolated events per channel per cycle")
    parser.add_argument("--burst", type=_pair, default=(3, 8), metavar="LOW,HIGH", help="events per hot dwell")


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "channels": args.channels,
        "low": args.low,
        "high": args.high,
        "cycle": args.cycle,
        "soak": args.soak,
        "intermittent": tuple(args.intermittent),
        "weibull": args.weibull,
        "isolated": args.isolated,
        "burst": (int(args.burst[0]), int(args.burst[1])),
    }
