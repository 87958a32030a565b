"""`edge-daq simulate watlow-f4` reaches its set point as the demo's chamber does: the same time scale by
default, and a start-up line that says when (no hidden --ambient needed)."""

from __future__ import annotations

import pytest

from edge_daq.cli.demo import TIME_SCALE as DEMO_TIME_SCALE
from simulators import watlow_f4
from simulators.cli import build_parser
from simulators.modbus_server import ModelClock


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("setpoint", "ambient"), [(125.0, 23.0), (-40.0, 23.0), (85.0, 80.0), (60.0, 23.0)])
def test_the_predicted_time_to_set_point_is_when_the_model_gets_there(setpoint: float, ambient: float) -> None:
    source = Clock()
    chamber = watlow_f4.WatlowF4(setpoint=setpoint, ambient=ambient, clock=ModelClock(1.0, source=source))
    predicted = chamber.seconds_to_setpoint()
    assert predicted > 0
    source.now = 0.95 * predicted
    assert abs(chamber.air_temperature - setpoint) > watlow_f4.SETPOINT_TOLERANCE
    source.now = predicted + 1e-6
    assert abs(chamber.air_temperature - setpoint) <= watlow_f4.SETPOINT_TOLERANCE + 1e-9


def test_the_standalone_chamber_runs_at_the_demos_time_scale_and_says_when_it_is_at_set_point() -> None:
    args = build_parser().parse_args(["watlow-f4"])
    assert args.time_scale == DEMO_TIME_SCALE == watlow_f4.DEFAULT_TIME_SCALE
    note = watlow_f4.startup_note(watlow_f4.options_from_args(args), args.time_scale)
    assert note == (
        "chamber air 23 degC, set point 125 degC: within 2 degC after 20.3 model minutes "
        "(2.0 min real time at --time-scale 10)"
    )
    assert build_parser().parse_args(["burnin-board"]).time_scale == 1.0
    fast = build_parser().parse_args(["watlow-f4", "--time-scale", "3600"])
    assert watlow_f4.startup_note(watlow_f4.options_from_args(fast), 3600).endswith(
        "(0.3 s real time at --time-scale 3600)"
    )
    real_time = build_parser().parse_args(["watlow-f4", "--time-scale", "1"])
    assert "(20.3 min real time at --time-scale 1)" in watlow_f4.startup_note(
        watlow_f4.options_from_args(real_time), real_time.time_scale
    )
