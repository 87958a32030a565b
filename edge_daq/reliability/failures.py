"""Failure detection per DUT: rules over each DUT's own fields, confirmed by consecutive violations.

A failure's time is that of its first violation (back-dated once confirmed), and the last poll on which the
DUT was known good is kept: together they are the interval that censors its time to failure.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_daq.reliability.config import DutConfig, FailureRule, FailuresConfig

STATUS_ACTIVE, STATUS_FAILED, STATUS_REMOVED = "active", "failed", "removed"


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def violation(rule: FailureRule, fields: Mapping[str, Any], baseline: Mapping[str, float]) -> float | None:
    """The offending value if ``fields`` violate ``rule``, else None (also when the field is missing)."""
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
    return None


def limit_of(rule: FailureRule, baseline: Mapping[str, float]) -> str:
    if rule.above is not None:
        return f"> {rule.above:g}"
    if rule.below is not None:
        return f"< {rule.below:g}"
    if rule.equals is not None:
        return f"== {rule.equals}"
    reference = baseline.get(rule.field, float("nan"))
    return f"|x/x0 - 1| > {rule.drift:g} (x0 = {reference:.6g})"


@dataclass(slots=True)
class Streak:
    count: int
    first_ns: int
    first_stress_s: float
    value: float


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

    def observe(self, dut: DutState, fields: Mapping[str, Any], time_ns: int, stress_s: float) -> dict[str, Any] | None:
        """Judge one record (taken under stress); the failure details when this record confirms one."""
        if dut.status != STATUS_ACTIVE:
            return None
        violated: dict[str, float] = {}
        for rule in self.config.rules:
            value = violation(rule, fields, dut.baseline)
            if value is None:
                dut.streaks.pop(rule.name, None)
                continue
            violated[rule.name] = value
            streak = dut.streaks.get(rule.name)
            if streak is None:
                dut.streaks[rule.name] = Streak(1, time_ns, stress_s, value)
            else:
                streak.count += 1
        if not violated:
            dut.last_good_ns, dut.last_good_stress_s = time_ns, stress_s
            dut.last_good_fields = dict(fields)
            self._learn_baseline(dut, fields)
            return None
        for rule in self.config.rules:
            streak = dut.streaks.get(rule.name)
            if streak is not None and streak.count >= (rule.confirm or self.config.confirm):
                return self._fail(dut, rule, streak, fields, time_ns, stress_s)
        return None

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
        streak: Streak,
        fields: Mapping[str, Any],
        time_ns: int,
        stress_s: float,
    ) -> dict[str, Any]:
        dut.status = STATUS_FAILED
        dut.failure = {
            "rule": rule.name,
            "mode": rule.mode or rule.name,
            "field": rule.field,
            "limit": limit_of(rule, dut.baseline),
            "value": streak.value,
            "time_ns": streak.first_ns,
            "stress_s": streak.first_stress_s,
            "detected_ns": time_ns,
            "detected_stress_s": stress_s,
            "last_good_ns": dut.last_good_ns,
            "last_good_stress_s": dut.last_good_stress_s,
            "before": dut.last_good_fields,
            "after": dict(fields),
        }
        dut.streaks.clear()
        return dut.failure
