"""Failure rules beyond limits and drift: rate of change / spike (absolute, relative, per time), and IPC-style
confirmation (a first violation confirmed by further ones within a window of stress time)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge_daq.reliability.config import ConfirmWindow, FailuresConfig
from edge_daq.reliability.failures import DutState, Failure, FailureDetector
from edge_daq.reliability.journal import read_journal
from tests.unit.test_reliability_config import RIG
from tests.unit.test_reliability_engine import T0, Rig

S = 1_000_000_000


def detector(*rules: dict[str, Any], **options: Any) -> FailureDetector:
    return FailureDetector(FailuresConfig.model_validate({"rules": list(rules), **options}))


def new_dut() -> DutState:
    return DutState(identity={"dut": "U1"}, instrument="board", socket=1)


def feed(
    judge: FailureDetector, dut: DutState, samples: Iterable[tuple[float, float]], *, stress_per_s: float = 1.0
) -> list[Failure]:
    """Feed ``(seconds, i)`` samples (stress time = seconds * stress_per_s); the failures they confirm."""
    failures = []
    for t, current in samples:
        failure = judge.observe(dut, {"i": current, "v": 3.3}, T0 + int(t * S), t * stress_per_s)
        if failure is not None:
            failures.append(failure)
    return failures


# -- rate of change / spike


def test_a_step_beyond_max_change_is_a_confirmed_back_dated_failure() -> None:
    judge = detector({"name": "spike", "field": "i", "max_change": 5, "mode": "current step"}, confirm=2)
    dut = new_dut()
    noisy = [45.0, 46.5, 44.0, 47.0, 45.5]  # under 5 from the last good value: no violation
    ramp = [45.5 + 1.5 * k for k in range(1, 11)]  # a slow ramp: each poll within 5 of the previous good one
    steps = [(float(t), i) for t, i in enumerate([*noisy, *ramp])]
    assert feed(judge, dut, steps) == []
    assert dut.last_good_fields["i"] == 60.5
    # One-poll glitch: a single violation is no failure with confirm: 2, and the DUT is good again after it.
    assert feed(judge, dut, [(15.0, 70.0), (16.0, 60.0)]) == []
    assert dut.status == "active"
    assert dut.last_good_ns == T0 + 16 * S
    # A step stays a violation, since it is judged against the last good value (60), not the previous poll.
    failures = feed(judge, dut, [(17.0, 67.0), (18.0, 67.1)])
    assert len(failures) == 1
    failure = failures[0]
    assert dut.status == "failed"
    assert (failure.rule, failure.mode, failure.value) == ("spike", "current step", 67.0)
    assert (failure.time_ns, failure.detected_ns, failure.last_good_ns) == (T0 + 17 * S, T0 + 18 * S,
                                                                                      T0 + 16 * S)  # fmt: skip
    assert failure.limit == "|x - xg| > 5 (xg = 60, last good)"
    assert (failure.before["i"], failure.after["i"], failure.events) == (60.0, 67.1, 2)


def test_a_downward_step_and_the_relative_form() -> None:
    judge = detector({"name": "jump", "field": "i", "max_relative_change": 0.2}, confirm=1)
    dut = new_dut()
    assert feed(judge, dut, [(0.0, 50.0), (1.0, 55.0), (2.0, 45.0)]) == []  # 10 %, then -18 %
    (failure,) = feed(judge, dut, [(3.0, 35.0)])  # -22 % from 45
    assert (failure.value, failure.stress_s, failure.last_good_stress_s) == (35.0, 3.0, 2.0)
    assert failure.limit == "|x/xg - 1| > 0.2 (xg = 45, last good)"
    # From zero a relative change is not defined: no judgement (an open rule covers it).
    zero = new_dut()
    assert feed(judge, zero, [(0.0, 0.0), (1.0, 40.0)]) == []


def test_a_rate_of_change_is_the_change_per_unit_of_acquisition_time() -> None:
    rule = {"name": "slew", "field": "i", "max_change": 5, "per": "1s"}
    # 3 mA per 1 s poll is 3 mA/s: within the limit.
    slow = new_dut()
    assert feed(detector(rule, confirm=1), slow, [(float(t), 45.0 + 3 * t) for t in range(6)]) == []
    # The same 3 mA per 0.5 s poll is 6 mA/s: a violation at the first such poll.
    fast = new_dut()
    (failure,) = feed(detector(rule, confirm=1), fast, [(0.0, 45.0), (0.5, 45.0), (1.0, 48.0)])
    assert (failure.value, failure.time_ns) == (48.0, T0 + S)
    assert failure.limit == "|x - xg| > 5 per 1 s (xg = 45, last good)"
    # The rate is over the time since the last good poll: a change of 8 over 2 s (4/s) is within it.
    gap = new_dut()
    assert feed(detector(rule, confirm=1), gap, [(0.0, 45.0), (2.0, 53.0)]) == []


def test_change_rules_are_validated() -> None:
    with pytest.raises(ValidationError, match="per goes with max_change"):
        FailuresConfig.model_validate({"rules": [{"name": "r", "field": "i", "below": 1, "per": "1s"}]})
    with pytest.raises(ValidationError, match="exactly one of"):
        FailuresConfig.model_validate({"rules": [{"name": "r", "field": "i", "max_change": 1, "drift": 0.1}]})
    with pytest.raises(ValidationError, match="greater than 0"):
        FailuresConfig.model_validate({"rules": [{"name": "r", "field": "i", "max_relative_change": 0}]})


# -- IPC-style confirmation


def test_a_candidate_is_confirmed_by_further_violations_within_the_window() -> None:
    judge = detector(
        {"name": "glitch", "field": "i", "max_change": 5, "mode": "intermittent"},
        confirm={"events": 3, "within": "10m"},
    )
    dut = new_dut()
    polls = [(float(t), 45.0) for t in range(0, 1000, 20)]
    glitches = {100.0, 300.0, 500.0}  # three single-poll glitches, good polls between them
    samples = [(t, 80.0 if t in glitches else i) for t, i in polls]
    failures = feed(judge, dut, samples)
    assert len(failures) == 1
    failure = failures[0]
    # Confirmed by the third glitch (within 10 min of the first), back-dated to the first, and the last good
    # poll is the one before the first, not the good polls between the glitches.
    assert (failure.stress_s, failure.detected_stress_s, failure.last_good_stress_s) == (100, 500, 80)
    assert (failure.events, failure.value, failure.before["i"]) == (3, 80.0, 45.0)
    assert dut.candidates == {}


def test_a_candidate_not_confirmed_in_time_lapses_and_the_window_slides() -> None:
    judge = detector({"name": "glitch", "field": "i", "above": 60}, confirm={"events": 3, "within": 600})
    dut = new_dut()
    glitches = [0.0, 500.0, 1200.0, 1700.0]  # no three within 600 s of one another
    samples = sorted([(t, 45.0) for t in range(0, 1750, 50) if t not in glitches] + [(t, 70.0) for t in glitches])
    assert feed(judge, dut, samples) == []
    assert dut.status == "active"
    assert [c.stress_s for c in dut.candidates["glitch"]] == [1200.0, 1700.0]
    # A third violation within 600 s of the candidate at 1200 s confirms it (not the lapsed ones at 0 and 500).
    (failure,) = feed(judge, dut, [(1750.0, 71.0)])
    assert (failure.stress_s, failure.detected_stress_s, failure.last_good_stress_s) == (1200, 1750, 1150)


def test_the_window_counts_stress_time_and_survives_a_restart() -> None:
    rules = [
        {"name": "open", "field": "i", "below": 1.0},  # the rig's confirm: 2 consecutive polls
        {"name": "glitch", "field": "i", "above": 60, "confirm": {"events": 2, "within": "1m"}},
    ]
    judge = detector(*rules, confirm=2)
    assert judge.confirmation(judge.config.rules[0]) == 2
    assert judge.confirmation(judge.config.rules[1]) == ConfirmWindow(events=2, within=60)
    dut = new_dut()
    # Stress accrues at a tenth of real time (an excluded stretch, say): 300 s real is 30 s of stress.
    assert feed(judge, dut, [(0.0, 45.0), (10.0, 70.0), (20.0, 45.0)], stress_per_s=0.1) == []
    assert feed(judge, dut, [(25.0, 0.5)]) == []  # one open poll: not 2 in a row
    restored = DutState.from_json(json.loads(json.dumps(dut.to_json())))
    assert restored.candidates["glitch"][0].stress_s == 1.0
    (failure,) = feed(judge, restored, [(300.0, 75.0)], stress_per_s=0.1)
    assert (failure.rule, failure.stress_s, failure.detected_stress_s) == ("glitch", 1.0, 30.0)
    assert failure.last_good_stress_s == 0.0


def test_window_confirmation_through_the_engine_and_its_failure_event(tmp_path: Path) -> None:
    rules = (
        "- {name: open, field: i, below: 1.0}\n"
        "    - {name: spike, field: i, max_change: 10, per: 1s, mode: intermittent,\n"
        "       confirm: {events: 3, within: 30s}}"
    )
    rig = Rig(tmp_path, RIG.replace("- {name: open, field: i, below: 1.0}", rules))
    rig.engine.start(T0)
    for t in range(20):
        spike = 70.0 if t in (6, 9, 12) else 45.0
        rig.poll(t, currents={"01": 45.0, "03": spike})
    assert rig.engine.duts["U1"].status == "active"
    failure = rig.engine.duts["U3"].failure
    assert failure is not None
    assert (failure.time_ns, failure.detected_ns, failure.last_good_ns) == (T0 + 6 * S, T0 + 12 * S,
                                                                                      T0 + 5 * S)  # fmt: skip
    event = next(e for e in read_journal(rig.state_dir, "r1") if e["event"] == "failure")
    assert (event["dut"], event["rule"], event["mode"], event["violations"]) == ("U3", "spike", "intermittent", 3)
    assert event["limit"] == "|x - xg| > 10 per 1 s (xg = 45, last good)"
    assert event["stress_h"] == pytest.approx(6 / 3600)
