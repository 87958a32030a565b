"""Confirmation windows counted in cycles, on synthetic records: a fixed number of drops counted by a counter
point, IPC-9701's fraction of the cycles to the first event, event counts whose rises are several events,
persistence across a restart, and the configuration's checks (positioned, with the old forms still loading)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_daq.config.loader import load_config
from edge_daq.errors import ConfigError
from edge_daq.record import Record, Series
from edge_daq.reliability.config import ConfirmWindow, FailuresConfig
from edge_daq.reliability.engine import RigEngine
from edge_daq.reliability.failures import DutState, FailureDetector
from edge_daq.reliability.journal import read_journal
from tests.unit.test_reliability_config import write

S = 1_000_000_000
T0 = 1_700_000_000 * S

DROP_RIG = """\
rig: r1
test: {id: DROP-1, kind: custom}
duts:
  - {socket: 1, serial: D1}
  - {socket: 2, serial: D2}
  - {socket: 3, serial: D3}
instruments:
  - name: rig
    driver: modbus-tcp
    host: 127.0.0.1
    port: 5030
    points:
      - {name: drop_count, address: 0, type: uint32}
  - name: det
    profile: event-detector
    host: 127.0.0.1
    channels:
      count: 3
      stride: 4
      points:
        - {name: events, address: 1000, type: uint32}
stress:
  all:
    - {point: rig.drop_count, above: -1, reason: drop tester silent}
failures:
  confirm: WINDOW
  rules:
    - {name: intermittent, field: events, rises: true, mode: open}
"""


class DropRig:
    """A drop tester (a drop counter) with an event detector on three boards, fed by hand."""

    def __init__(self, tmp_path: Path, window: str = "{events: 4, within_cycles: 5, cycles_from: rig.drop_count}"):
        self.tmp_path = tmp_path
        self.config = load_config(write(tmp_path, DROP_RIG.replace("WINDOW", window), csv="socket,serial\n"))
        self.state_dir = tmp_path / "state"
        self.engine = self.new_engine()
        self.engine.start(T0)
        self.t = 0

    def new_engine(self) -> RigEngine:
        return RigEngine(
            rig=self.config.rigs[0], gateway=self.config.gateway, config_hash=self.config.hash,
            state_dir=self.state_dir, emit_record=lambda record: None,
        )  # fmt: skip

    def drop(self, drops: int, counts: dict[int, int]) -> None:
        """One poll after drop ``drops``: the counter, then each board's latched event count."""
        self.t += 1
        time_ns = T0 + self.t * S
        base = {"rig": "r1", "gateway": "gw"}
        self.engine.on_record(Record(Series("rig", {**base, "instrument": "rig"}), {"drop_count": drops}, time_ns))
        for socket, count in counts.items():
            tags = {**base, "instrument": "det", "socket": f"{socket:02d}"}
            self.engine.on_record(Record(Series("det", tags), {"events": count}, time_ns))


def test_a_fixed_number_of_drops_after_the_first_event_from_a_counter_point(tmp_path: Path) -> None:
    rig = DropRig(tmp_path)
    counts = {1: 0, 2: 0, 3: 0}
    rig.drop(0, counts)  # the first poll is each count's reference: no judgement
    # Board 1: isolated events every 6 drops never make 4 within 5 drops.
    # Board 2: one event at drop 10, then 3 more (one rise of 2 among them) by drop 15: confirmed at drop 15.
    # Board 3: a count that is cleared (falls to 0) is no event; it goes on from there.
    plan = {1: {6: 1, 12: 1, 18: 1, 24: 1}, 2: {10: 1, 13: 2, 15: 1}, 3: {4: 50, 5: -51, 9: 1, 30: 1}}
    for drops in range(1, 31):
        for board, steps in plan.items():
            counts[board] = max(0, counts[board] + steps.get(drops, 0))
        rig.drop(drops, counts)
    duts = rig.engine.duts
    assert (duts["D1"].status, duts["D3"].status) == ("active", "failed")  # D3's 50 events at drop 4
    failure = duts["D2"].failure
    assert failure is not None
    assert (failure.cycles, failure.detected_cycles, failure.events, failure.mode) == (10.0, 15.0, 4, "open")
    assert failure.limit == "rises (event count)"
    three = duts["D3"].failure
    assert three is not None
    assert (three.cycles, three.events) == (4.0, 50)
    event = next(e for e in read_journal(rig.state_dir, "r1") if e["event"] == "failure" and e["dut"] == "D2")
    assert (event["failed_cycle"], event["detected_cycles"], event["violations"]) == (10.0, 15.0, 4)


def test_a_cleared_count_is_no_event_and_the_window_survives_a_restart(tmp_path: Path) -> None:
    rig = DropRig(tmp_path)
    rig.drop(0, {1: 7})
    rig.drop(1, {1: 0})  # cleared by the operator: no event
    rig.drop(2, {1: 1})
    rig.drop(3, {1: 2})
    assert rig.engine.duts["D1"].candidates["intermittent"][0].cycles == 2.0
    rig.engine.close(T0 + rig.t * S)
    rig.engine = rig.new_engine()  # the candidates (with their cycles and weights) and the counts persist
    rig.engine.start(T0 + (rig.t + 1) * S)
    rig.t += 1
    rig.drop(4, {1: 3})
    rig.drop(7, {1: 4})  # the fourth event within 5 drops of the first
    failure = rig.engine.duts["D1"].failure
    assert failure is not None
    assert (failure.cycles, failure.events) == (2.0, 4)


def test_ipc_9701_window_is_a_fraction_of_the_cycles_to_the_first_event(tmp_path: Path) -> None:
    rig = DropRig(tmp_path, "{events: 10, within_fraction: 0.1, cycles_from: rig.drop_count}")
    counts = {1: 0, 2: 0}
    rig.drop(0, counts)
    # Board 1: 9 events at cycle 50 and one at 56: 56 is past 10 % of 50, so 50 is no failure; the window
    # restarts at 56 (5.6 cycles wide), and 9 more by 61 confirm it: the failure is at cycle 56.
    # Board 2: 10 events over cycles 100..110, none at 109: the tenth at 110 is still within 10 % (inclusive).
    steps = {1: {50: 9, 56: 1, 58: 4, 61: 5}, 2: {c: 1 for c in range(100, 111) if c != 109}}
    for cycle in range(1, 112):
        for board, plan in steps.items():
            counts[board] += plan.get(cycle, 0)
        rig.drop(cycle, counts)
    one, two = rig.engine.duts["D1"].failure, rig.engine.duts["D2"].failure
    assert one is not None
    assert two is not None
    assert (one.cycles, one.detected_cycles, one.events) == (56.0, 61.0, 10)
    assert (two.cycles, two.detected_cycles, two.events) == (100.0, 110.0, 10)


def test_the_stress_cycling_count_is_the_default_source() -> None:
    config = FailuresConfig.model_validate(
        {"confirm": {"events": 2, "within_cycles": 0}, "rules": [{"name": "open", "field": "i", "below": 1}]}
    )
    detector = FailureDetector(config)
    dut = DutState({"dut": "U1"}, "board", 1)
    cycles: dict[str | None, float] = {None: 3.0}
    assert detector.observe(dut, {"i": 0.0}, T0, 1.0, lambda source: cycles[source]) is None
    cycles[None] = 4.0  # the next cycle: the candidate of cycle 3 is out of a 0-cycle window
    assert detector.observe(dut, {"i": 0.0}, T0 + S, 2.0, lambda source: cycles[source]) is None
    failure = detector.observe(dut, {"i": 0.0}, T0 + 2 * S, 3.0, lambda source: cycles[source])
    assert failure is not None
    assert (failure.cycles, failure.detected_cycles) == (4.0, 4.0)
    # Without a cycle count (no cycling configured), a window in cycles judges nothing.
    other = DutState({"dut": "U2"}, "board", 2)
    for k in range(3):
        assert detector.observe(other, {"i": 0.0}, T0 + k * S, float(k), lambda source: None) is None


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ("{events: 4, within_cycles: 5, within: 10m}", "exactly one of within, within_cycles, within_fraction"),
        ("{events: 4}", "exactly one of within, within_cycles, within_fraction"),
        ("{events: 4, within: 10m, cycles_from: rig.drop_count}", "cycles_from goes with within_cycles"),
        ("{events: 4, within_cycles: 5}", "a window in cycles needs cycles: cycles_from"),
        ("{events: 4, within_cycles: 5, cycles_from: rig.drops}", "instrument 'rig' has no point 'drops'"),
        ("{events: 10, within_fraction: 0}", "greater than 0"),
    ],
)
def test_windows_in_cycles_are_checked_with_their_position(tmp_path: Path, window: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        DropRig(tmp_path, window)
    assert message in str(error.value)
    assert "r1.yaml:" in str(error.value)


def test_the_earlier_confirm_forms_still_load() -> None:
    assert ConfirmWindow.model_validate({"events": 3, "within": "10m"}).within == 600
    for confirm in (2, {"events": 3, "within": 60}):
        config = FailuresConfig.model_validate({"confirm": confirm, "rules": [{"name": "a", "field": "i", "below": 1}]})
        assert config.confirm == confirm if isinstance(confirm, int) else config.confirm.within == 60  # type: ignore[union-attr]
