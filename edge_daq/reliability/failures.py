"""Failure detection per DUT: rules over each DUT's own fields, confirmed by consecutive violations or,
IPC-style, by further violations within a window of stress time after a first (candidate) one.

A failure's time is that of its first violation (back-dated once confirmed), and the last poll on which the
DUT was known good before it is kept: together they are the interval that censors its time to failure.

Rate-of-change (spike) rules compare a value with the DUT's value on its last known-good poll, not with the
previous poll: a step stays a violation until it is confirmed (or the DUT comes back), and a one-poll glitch
is a single violation.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_daq.reliability.config import ConfirmWindow, DutConfig, FailureRule, FailuresConfig

STATUS_ACTIVE, STATUS_FAILED, STATUS_REMOVED = "active", "failed", "removed"
NS = 1_000_000_000


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def violation(
    rule: FailureRule,
    fields: Mapping[str, Any],
    baseline: Mapping[str, float],
    *,
    good: Mapping[str, Any] | None = None,
    since_s: float | None = None,
) -> float | None:
    """The offending value if ``fields`` violate ``rule``, else None (also when the field is missing).

    Change rules compare with ``good`` (the fields of the DUT's last known-good poll), ``since_s`` seconds
    of acquisition time earlier; without them, or without the field in them, there is no judgement.
    """
    raw = fields.get(rule.field)
    if raw is None:
        return None
    if rule.equals is not None:
        expected = rule.equals
        same = bool(raw) == bool(expected) if isinstance(raw, bool) or isinstance(expected, bool) else raw == expected
        return float(_number(raw) or 0.0) if same else None
    value = _number(raw)
    if value is None:
        return None
    if rule.above is not None and value > rule.above:
        return value
    if rule.below is not None and value < rule.below:
        return value
    if rule.drift is not None:
        reference = baseline.get(rule.field)
        if reference and abs(value / reference - 1.0) > rule.drift:
            return value
    if rule.is_change:
        change = _change(rule, value, good or {}, since_s)
        if change is not None and change > (rule.max_change or rule.max_relative_change or 0.0):
            return value
    return None


def _change(rule: FailureRule, value: float, good: Mapping[str, Any], since_s: float | None) -> float | None:
    """The change since the last good poll (absolute or relative), per ``rule.per`` if it is a rate."""
    reference = _number(good.get(rule.field))
    if reference is None:
        return None
    if rule.max_change is not None:
        change = abs(value - reference)
    elif reference == 0.0:
        return None  # a relative change from zero is not defined
    else:
        change = abs(value / reference - 1.0)
    if rule.per is None:
        return change
    if since_s is None or since_s <= 0.0:
        return None
    return change / since_s * rule.per


def limit_of(rule: FailureRule, baseline: Mapping[str, float], good: Mapping[str, Any] | None = None) -> str:
    if rule.above is not None:
        return f"> {rule.above:g}"
    if rule.below is not None:
        return f"< {rule.below:g}"
    if rule.equals is not None:
        return f"== {rule.equals}"
    if rule.is_change:
        reference = _number((good or {}).get(rule.field))
        shown = "nan" if reference is None else f"{reference:.6g}"
        test = f"|x - xg| > {rule.max_change:g}" if rule.max_change is not None else (
            f"|x/xg - 1| > {rule.max_relative_change:g}"
        )  # fmt: skip
        rate = "" if rule.per is None else f" per {rule.per:g} s"
        return f"{test}{rate} (xg = {shown}, last good)"
    reference = baseline.get(rule.field, float("nan"))
    return f"|x/x0 - 1| > {rule.drift:g} (x0 = {reference:.6g})"


@dataclass(slots=True)
class Streak:
    """Violations of one rule on consecutive polls: how many, and the first one."""

    count: int
    first_ns: int
    first_stress_s: float
    value: float


@dataclass(slots=True)
class Candidate:
    """One violation under a window confirmation, with what was known good before it."""

    time_ns: int
    stress_s: float
    value: float
    last_good_ns: int | None
    last_good_stress_s: float | None
    before: dict[str, Any]

    def to_json(self) -> list[Any]:
        return [self.time_ns, self.stress_s, self.value, self.last_good_ns, self.last_good_stress_s, self.before]

    @classmethod
    def from_json(cls, data: list[Any]) -> Candidate:
        return cls(int(data[0]), float(data[1]), float(data[2]), data[3], data[4], dict(data[5]))


@dataclass(slots=True)
class DutState:
    """What is persisted of one DUT."""

    identity: dict[str, str]
    instrument: str
    socket: int
    status: str = STATUS_ACTIVE
    samples: dict[str, list[float]] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)
    streaks: dict[str, Streak] = field(default_factory=dict)
    candidates: dict[str, list[Candidate]] = field(default_factory=dict)
    """Per rule with a window confirmation: its violations still inside the window, oldest first."""
    last_good_ns: int | None = None
    last_good_stress_s: float | None = None
    last_good_fields: dict[str, Any] = field(default_factory=dict)
    failure: dict[str, Any] | None = None
    removed_stress_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "instrument": self.instrument,
            "socket": self.socket,
            "status": self.status,
            "samples": self.samples,
            "baseline": self.baseline,
            "streaks": {name: [s.count, s.first_ns, s.first_stress_s, s.value] for name, s in self.streaks.items()},
            "candidates": {name: [c.to_json() for c in items] for name, items in self.candidates.items()},
            "last_good_ns": self.last_good_ns,
            "last_good_stress_s": self.last_good_stress_s,
            "last_good_fields": self.last_good_fields,
            "failure": self.failure,
            "removed_stress_s": self.removed_stress_s,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DutState:
        return cls(
            identity=dict(data["identity"]),
            instrument=str(data["instrument"]),
            socket=int(data["socket"]),
            status=str(data["status"]),
            samples={k: list(v) for k, v in data.get("samples", {}).items()},
            baseline=dict(data.get("baseline", {})),
            streaks={k: Streak(int(v[0]), int(v[1]), float(v[2]), float(v[3])) for k, v in data["streaks"].items()},
            candidates={k: [Candidate.from_json(c) for c in v] for k, v in data.get("candidates", {}).items()},
            last_good_ns=data.get("last_good_ns"),
            last_good_stress_s=data.get("last_good_stress_s"),
            last_good_fields=dict(data.get("last_good_fields", {})),
            failure=data.get("failure"),
            removed_stress_s=data.get("removed_stress_s"),
        )

    @classmethod
    def new(cls, dut: DutConfig, instrument: str) -> DutState:
        return cls(identity=dut.identity(), instrument=instrument, socket=dut.socket)


class FailureDetector:
    """Judges one DUT's per-poll records against the rig's rules."""

    def __init__(self, config: FailuresConfig) -> None:
        self.config = config
        self._drift_fields = sorted({rule.field for rule in config.rules if rule.drift is not None})

    def confirmation(self, rule: FailureRule) -> int | ConfirmWindow:
        return rule.confirm if rule.confirm is not None else self.config.confirm

    def observe(self, dut: DutState, fields: Mapping[str, Any], time_ns: int, stress_s: float) -> dict[str, Any] | None:
        """Judge one record (taken under stress); the failure details when this record confirms one."""
        if dut.status != STATUS_ACTIVE:
            return None
        since_s = None if dut.last_good_ns is None else (time_ns - dut.last_good_ns) / NS
        violated: dict[str, float] = {}
        for rule in self.config.rules:
            value = violation(rule, fields, dut.baseline, good=dut.last_good_fields, since_s=since_s)
            confirm = self.confirmation(rule)
            if isinstance(confirm, ConfirmWindow):
                self._window(dut, rule.name, confirm, value, time_ns, stress_s)
            elif value is None:
                dut.streaks.pop(rule.name, None)
            elif (streak := dut.streaks.get(rule.name)) is None:
                dut.streaks[rule.name] = Streak(1, time_ns, stress_s, value)
            else:
                streak.count += 1
            if value is not None:
                violated[rule.name] = value
        for rule in self.config.rules:
            if rule.name in violated and (failure := self._confirmed(dut, rule, fields, time_ns, stress_s)):
                return failure
        if not violated:
            dut.last_good_ns, dut.last_good_stress_s = time_ns, stress_s
            dut.last_good_fields = dict(fields)
            self._learn_baseline(dut, fields)
        return None

    def _window(
        self, dut: DutState, name: str, confirm: ConfirmWindow, value: float | None, time_ns: int, stress_s: float
    ) -> None:
        """Drop the violations older than the window, then add this one."""
        kept = [c for c in dut.candidates.get(name, []) if stress_s - c.stress_s <= confirm.within]
        if value is not None:
            kept.append(
                Candidate(
                    time_ns, stress_s, value, dut.last_good_ns, dut.last_good_stress_s, dict(dut.last_good_fields)
                )
            )
        if kept:
            dut.candidates[name] = kept
        else:
            dut.candidates.pop(name, None)

    def _confirmed(
        self, dut: DutState, rule: FailureRule, fields: Mapping[str, Any], time_ns: int, stress_s: float
    ) -> dict[str, Any] | None:
        confirm = self.confirmation(rule)
        if isinstance(confirm, ConfirmWindow):
            candidates = dut.candidates.get(rule.name, [])
            if len(candidates) < confirm.events:
                return None
            first = candidates[0]
            return self._fail(dut, rule, first, fields, time_ns, stress_s, events=len(candidates))
        streak = dut.streaks.get(rule.name)
        if streak is None or streak.count < confirm:
            return None
        first = Candidate(
            streak.first_ns, streak.first_stress_s, streak.value, dut.last_good_ns, dut.last_good_stress_s,
            dut.last_good_fields,
        )  # fmt: skip
        return self._fail(dut, rule, first, fields, time_ns, stress_s, events=streak.count)

    def _learn_baseline(self, dut: DutState, fields: Mapping[str, Any]) -> None:
        for name in self._drift_fields:
            if name in dut.baseline:
                continue
            value = _number(fields.get(name))
            if value is None:
                continue
            samples = dut.samples.setdefault(name, [])
            samples.append(value)
            if len(samples) >= self.config.baseline_samples:
                dut.baseline[name] = statistics.median(samples)
                del dut.samples[name]

    def _fail(
        self,
        dut: DutState,
        rule: FailureRule,
        first: Candidate,
        fields: Mapping[str, Any],
        time_ns: int,
        stress_s: float,
        *,
        events: int,
    ) -> dict[str, Any]:
        """The DUT failed at ``first`` (the first violation), confirmed now by ``events`` violations."""
        dut.status = STATUS_FAILED
        dut.failure = {
            "rule": rule.name,
            "mode": rule.mode or rule.name,
            "field": rule.field,
            "limit": limit_of(rule, dut.baseline, first.before),
            "value": first.value,
            "time_ns": first.time_ns,
            "stress_s": first.stress_s,
            "detected_ns": time_ns,
            "detected_stress_s": stress_s,
            "events": events,
            "last_good_ns": first.last_good_ns,
            "last_good_stress_s": first.last_good_stress_s,
            "before": dict(first.before),
            "after": dict(fields),
        }
        dut.streaks.clear()
        dut.candidates.clear()
        return dut.failure
