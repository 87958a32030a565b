"""Simulator support for reliability tests: Weibull-drawn DUT failures, the chamber's door and power loss."""

from __future__ import annotations

import pytest

from simulators.burnin_board import BurnInBoard, Failure
from simulators.cli import build_parser
from simulators.modbus_server import ModelClock
from simulators.watlow_f4 import DOOR_BIT, REG_DIGITAL_INPUTS, REG_PV1, GatewayTargetFailed, WatlowF4


class Clock(ModelClock):
    def __init__(self) -> None:
        super().__init__(1.0, source=lambda: 0.0)
        self.t = 0.0

    def now(self) -> float:
        return self.t


def test_weibull_failures_are_seeded_per_socket_and_fail_by_their_mode() -> None:
    clock = Clock()
    board = BurnInBoard(seed=4, clock=clock, sockets=16, weibull=(1.5, 1000.0), failures=[Failure(2, 5.0, "open")])
    plan = {failure.socket: failure for failure in board.failure_plan()}
    assert plan == {f.socket: f for f in BurnInBoard(seed=4, sockets=16, weibull=(1.5, 1000.0),
                                                      failures=[Failure(2, 5.0, "open")]).failure_plan()}  # fmt: skip
    assert len(plan) == 16
    assert plan[2] == Failure(2, 5.0, "open")  # an explicit failure wins over the drawn one
    assert {failure.mode for failure in plan.values()} <= {"leak", "open", "short", "latch"}
    clock.t = max(failure.at_stress_s for failure in plan.values()) + 1
    for socket, failure in plan.items():
        if failure.mode in ("short", "latch"):
            assert board.over_current(socket)
        if failure.mode in ("open", "short", "latch"):
            assert board.socket_current_ma(socket) == 0.0 or failure.mode == "latch"
    with pytest.raises(ValueError, match="unknown failure modes"):
        BurnInBoard(weibull=(1.0, 1.0), weibull_modes=["melt"])  # type: ignore[list-item]


def test_the_chamber_door_and_power_loss() -> None:
    clock = Clock()
    chamber = WatlowF4(clock=clock, ambient=23.0, setpoint=125.0, door_schedule=[(2000, 600)], power_loss=[(4000, 600)])
    clock.t = 1900
    assert chamber.register_values()[REG_DIGITAL_INPUTS] == 0
    assert chamber.air_temperature == pytest.approx(125.0, abs=0.5)
    clock.t = 2500
    assert chamber.register_values()[REG_DIGITAL_INPUTS] == DOOR_BIT
    assert chamber.air_temperature < 105  # the air escapes toward ambient
    clock.t = 3500
    assert chamber.air_temperature == pytest.approx(125.0, abs=0.5)
    clock.t = 4100
    with pytest.raises(GatewayTargetFailed):
        chamber.register_values()
    clock.t = 6000
    assert chamber.register_values()[REG_PV1] > 1000
    chamber.apply_write(REG_DIGITAL_INPUTS, DOOR_BIT)  # opened on command
    assert chamber.register_values()[REG_DIGITAL_INPUTS] == DOOR_BIT


def test_command_line_options() -> None:
    args = build_parser().parse_args(["burnin-board", "--weibull", "2,36000", "--weibull-modes", "open,short"])
    assert (args.weibull, args.weibull_modes) == ((2.0, 36000.0), "open,short")
    args = build_parser().parse_args(["watlow-f4", "--door-open", "600:120", "--power-loss", "1800:300"])
    assert (args.door_open, args.power_loss) == ([(600.0, 120.0)], [(1800.0, 300.0)])
