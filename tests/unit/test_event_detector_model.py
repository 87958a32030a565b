"""The event-detector simulator's model on a hand-driven clock: the chamber's cycle, latched counts that a
write clears, bursts from the crack cycle on, the hard open, and the register map."""

from __future__ import annotations

import pytest

from simulators.event_detector import (
    REG_CYCLES_LOW,
    REG_TEMPERATURE,
    STATUS_OFFSET,
    Crack,
    EventDetector,
    channel_register,
)
from simulators.modbus_server import IllegalDataValue, ModelClock, from_i16


def test_cycles_counts_bursts_clears_and_hard_opens() -> None:
    now = [0.0]
    clock = ModelClock(1.0, source=lambda: now[0])
    detector = EventDetector(
        clock=clock, channels=4, cycle=100.0, soak=50.0, intermittent=[Crack(2, 3)], isolated=0.0, hard_open_after=2
    )
    assert detector.temperature() == -40.0
    assert detector.position() == (0, 0.0)
    now[0] = 50.0 + 30.0  # cycle 0, in its high dwell
    assert detector.temperature() == 125.0
    assert detector.events(2) == 0
    now[0] = 50.0 + 3 * 100.0 + 70.0  # cycle 3, in its low dwell: channel 2 had its first burst
    assert detector.position()[0] == 3
    first_burst = detector.events(2)
    assert 3 <= first_burst <= 8
    assert detector.event_cycles(2, 4) == [3] * first_burst
    assert detector.events(1) == 0
    values = detector.register_values()
    assert values[REG_CYCLES_LOW] == 3
    assert from_i16(values[REG_TEMPERATURE]) == -400
    assert values[channel_register(2, 1)] == first_burst  # low word of the latched count
    detector.write_registers(channel_register(2, STATUS_OFFSET), [1])  # clears the count
    assert detector.register_values()[channel_register(2, 1)] == 0
    now[0] = 50.0 + 5 * 100.0 + 10.0  # two cycles after the crack: a hard open, no more events
    assert detector.hard_open(2)
    assert detector.register_values()[channel_register(2, STATUS_OFFSET)] & 0x2
    with pytest.raises(IllegalDataValue):
        detector.write_registers(20, [0])
    with pytest.raises(ValueError, match="4 channels"):
        EventDetector(channels=4, intermittent=[Crack(5, 1)])
    with pytest.raises(ValueError, match="CHANNEL:CYCLE"):
        Crack.parse("3")
