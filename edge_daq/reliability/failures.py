"""Failure detection per DUT: rules over each DUT's own fields, confirmed by consecutive violations or,
IPC-style, by further violations within a window of stress time after a first (candidate) one.

A failure's time is that of its first violation (back-dated once confirmed), and the last poll on which the
DUT was known good before it is kept: together they are the interval that censors its time to failure.

Rate-of-change (spike) rules compare a value with the DUT's value on its last known-good poll, not with the
previous poll: a step stays a violation until it is confirmed (or the DUT comes back), and a one-poll glitch
is a single violation.

Event-count rules (``rises: true``) judge a latched counter, an event detector's: a rise of n since the DUT's
previous poll is n violations at once. Windows counted in cycles take the cycle count from a callable the
engine passes (the rig's ``stress.cycling`` count or a counter point); a failure keeps the cycle count at its
first violation and at its confirmation.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_daq.reliability.config import ConfirmWindow, DutConfig, FailureRule, FailuresConfig
from edge_daq.reliability.enums import DutStatus

NS = 1_000_000_000

CycleCount = Callable[[str | None], float | None]
"""The cycle count now: of a counter point (``cycles_from``), or with None of the rig's own cycle count."""


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
    first_cycles: float | None = None

    def to_json(self) -> list[Any]:
        data: list[Any] = [self.count, self.first_ns, self.first_stress_s, self.value]
        return data if self.first_cycles is None else [*data, self.first_cycles]

    @classmethod
    def from_json(cls, data: list[Any]) -> Streak:
        cycles = data[4] if len(data) > 4 else None
        return cls(
            int(data[0]), int(data[1]), float(data[2]), float(data[3]), None if cycles is None else float(cycles)
        )


@dataclass(slots=True)
class Candidate:
    """One violation under a window confirmation, with what was known good before it."""

    time_ns: int
    stress_s: float
    value: float
    last_good_ns: int | None
    last_good_stress_s: float | None
    before: dict[str, Any]
    cycles: float | None = None
    """The cycle count at this violation (windows counted in cycles)."""
    events: int = 1
    """Violations it stands for: a rise of an event count by n is n events."""

    def to_json(self) -> list[Any]:
        data = [self.time_ns, self.stress_s, self.value, self.last_good_ns, self.last_good_stress_s, self.before]
        return data if self.cycles is None and self.events == 1 else [*data, self.cycles, self.events]

    @classmethod
    def from_json(cls, data: list[Any]) -> Candidate:
        cycles = data[6] if len(data) > 6 else None
        events = int(data[7]) if len(data) > 7 else 1
        return cls(
            int(data[0]), float(data[1]), float(data[2]), data[3], data[4], dict(data[5]),
            None if cycles is None else float(cycles), events,
        )  # fmt: skip


@dataclass(slots=True)
class Failure:
    """A DUT's confirmed failure: back-dated to its first violation, with the last known-good poll before it."""

    rule: str
    mode: str
    field: str
    limit: str
    value: float
    """The first violation's value."""
    time_ns: int
    stress_s: float
    detected_ns: int
    """When the failure was confirmed (``events`` violations)."""
    detected_stress_s: float
    events: int
    last_good_ns: int | None
    last_good_stress_s: float | None
    before: dict[str, Any]
    """The fields of the last known-good poll."""
    after: dict[str, Any]
    """The fields of the poll that confirmed it."""
    cycles: float | None = None
    """The cycle count at the first violation, when the rig counts cycles."""
    detected_cycles: float | None = None
    readout: int | None = None
    """The readout (1, 2, ...) whose ATE results found it, for a failure found out of the chamber."""

    def to_json(self) -> dict[str, Any]:
        data = {
            "rule": self.rule,
            "mode": self.mode,
            "field": self.field,
            "limit": self.limit,
            "value": self.value,
            "time_ns": self.time_ns,
            "stress_s": self.stress_s,
            "detected_ns": self.detected_ns,
            "detected_stress_s": self.detected_stress_s,
            "events": self.events,
            "last_good_ns": self.last_good_ns,
            "last_good_stress_s": self.last_good_stress_s,
            "before": self.before,
            "after": self.after,
        }
        # Only when set: a state of an earlier release writes back key for key.
        for key in ("cycles", "detected_cycles", "readout"):
            if (value := getattr(self, key)) is not None:
                data[key] = value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Failure:
        last_good_ns, last_good_stress_s = data.get("last_good_ns"), data.get("last_good_stress_s")
        return cls(
            rule=str(data["rule"]),
            mode=str(data["mode"]),
            field=str(data["field"]),
            limit=str(data["limit"]),
            value=float(data["value"]),
            time_ns=int(data["time_ns"]),
            stress_s=float(data["stress_s"]),
            detected_ns=int(data["detected_ns"]),
            detected_stress_s=float(data["detected_stress_s"]),
            events=int(data.get("events", 1)),
            last_good_ns=None if last_good_ns is None else int(last_good_ns),
            last_good_stress_s=None if last_good_stress_s is None else float(last_good_stress_s),
            before=dict(data.get("before", {})),
            after=dict(data.get("after", {})),
            cycles=_optional_float(data.get("cycles")),
            detected_cycles=_optional_float(data.get("detected_cycles")),
            readout=None if data.get("readout") is None else int(data["readout"]),
        )


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]  # a JSON number


@dataclass(slots=True)
class DutState:
    """What is persisted of one DUT."""

    identity: dict[str, str]
    instrument: str
    socket: int
    status: DutStatus = DutStatus.ACTIVE
    samples: dict[str, list[float]] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)
    streaks: dict[str, Streak] = field(default_factory=dict)
    candidates: dict[str, list[Candidate]] = field(default_factory=dict)
    """Per rule with a window confirmation: its violations still inside the window, oldest first."""
    last_good_ns: int | None = None
    last_good_stress_s: float | None = None
    last_good_fields: dict[str, Any] = field(default_factory=dict)
    failure: Failure | None = None
    removed_stress_s: float | None = None
    counters: dict[str, float] = field(default_factory=dict)
    """Per event-count field: its value on the DUT's previous poll."""
    readouts: list[list[Any]] = field(default_factory=list)
    """ATE results at each readout it was tested at: ``[readout, stress_s, passed, bin]``."""

    @property
    def last_pass_stress_s(self) -> float | None:
        """Stress time of the last readout it passed (None: it passed none)."""
        return next((float(r[1]) for r in reversed(self.readouts) if r[2]), None)

    def to_json(self) -> dict[str, Any]:
        data = {
            "identity": self.identity,
            "instrument": self.instrument,
            "socket": self.socket,
            "status": self.status,
            "samples": self.samples,
            "baseline": self.baseline,
            "streaks": {name: streak.to_json() for name, streak in self.streaks.items()},
            "candidates": {name: [c.to_json() for c in items] for name, items in self.candidates.items()},
            "last_good_ns": self.last_good_ns,
            "last_good_stress_s": self.last_good_stress_s,
            "last_good_fields": self.last_good_fields,
            "failure": None if self.failure is None else self.failure.to_json(),
            "removed_stress_s": self.removed_stress_s,
        }
        if self.counters:  # only when used: a state of an earlier release writes back key for key
            data["counters"] = self.counters
        if self.readouts:
            data["readouts"] = self.readouts
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DutState:
        return cls(
            identity=dict(data["identity"]),
            instrument=str(data["instrument"]),
            socket=int(data["socket"]),
            status=DutStatus(data["status"]),
            samples={k: list(v) for k, v in data.get("samples", {}).items()},
            baseline=dict(data.get("baseline", {})),
            streaks={k: Streak.from_json(v) for k, v in data["streaks"].items()},
            candidates={k: [Candidate.from_json(c) for c in v] for k, v in data.get("candidates", {}).items()},
            last_good_ns=data.get("last_good_ns"),
            last_good_stress_s=data.get("last_good_stress_s"),
            last_good_fields=dict(data.get("last_good_fields", {})),
            failure=None if data.get("failure") is None else Failure.from_json(data["failure"]),
            removed_stress_s=data.get("removed_stress_s"),
            counters={str(k): float(v) for k, v in data.get("counters", {}).items()},
            readouts=[list(r) for r in data.get("readouts", [])],
        )

    @classmethod
    def new(cls, dut: DutConfig, instrument: str) -> DutState:
        return cls(identity=dut.identity(), instrument=instrument, socket=dut.socket)


class FailureDetector:
    """Judges one DUT's per-poll records against the rig's rules."""

    def __init__(self, config: FailuresConfig) -> None:
        self.config = config
        self._drift_fields = sorted({rule.field for rule in config.rules if rule.drift is not None})
        self._counter_fields = sorted({rule.field for rule in config.rules if rule.rises})

    def confirmation(self, rule: FailureRule) -> int | ConfirmWindow:
        return rule.confirm if rule.confirm is not None else self.config.confirm

    def observe(
        self,
        dut: DutState,
        fields: Mapping[str, Any],
        time_ns: int,
        stress_s: float,
        cycles: CycleCount | None = None,
    ) -> Failure | None:
        """Judge one record (taken under stress); the failure details when this record confirms one.

        ``cycles`` gives the cycle count now (windows counted in cycles, and the cycle of a failure).
        """
        if dut.status is not DutStatus.ACTIVE:
            return None
        count = cycles or _no_cycles
        since_s = None if dut.last_good_ns is None else (time_ns - dut.last_good_ns) / NS
        violated: dict[str, tuple[float, int]] = {}
        for rule in self.config.rules:
            value, weight = self._judge(rule, dut, fields, since_s)
            confirm = self.confirmation(rule)
            source = confirm.cycles_from if isinstance(confirm, ConfirmWindow) else None
            now_cycles = count(source)
            if isinstance(confirm, ConfirmWindow):
                self._window(dut, rule.name, confirm, value, weight, time_ns, stress_s, now_cycles)
            elif value is None:
                dut.streaks.pop(rule.name, None)
            elif (streak := dut.streaks.get(rule.name)) is None:
                dut.streaks[rule.name] = Streak(weight, time_ns, stress_s, value, now_cycles)
            else:
                streak.count += weight
            if value is not None:
                violated[rule.name] = (value, weight)
        self._remember_counters(dut, fields)
        for rule in self.config.rules:
            if rule.name in violated and (failure := self._confirmed(dut, rule, fields, time_ns, stress_s, count)):
                return failure
        if not violated:
            dut.last_good_ns, dut.last_good_stress_s = time_ns, stress_s
            dut.last_good_fields = dict(fields)
            self._learn_baseline(dut, fields)
        return None

    def _judge(
        self, rule: FailureRule, dut: DutState, fields: Mapping[str, Any], since_s: float | None
    ) -> tuple[float | None, int]:
        """The offending value (None: no violation) and how many violations it stands for."""
        if not rule.rises:
            return violation(rule, fields, dut.baseline, good=dut.last_good_fields, since_s=since_s), 1
        value = _number(fields.get(rule.field))
        previous = dut.counters.get(rule.field)
        if value is None or previous is None or value <= previous:
            return None, 0  # no count yet, no rise, or the count was cleared (it goes on from there)
        return value, max(1, round(value - previous))

    def _remember_counters(self, dut: DutState, fields: Mapping[str, Any]) -> None:
        for name in self._counter_fields:
            value = _number(fields.get(name))
            if value is not None:
                dut.counters[name] = value

    def _window(
        self,
        dut: DutState,
        name: str,
        confirm: ConfirmWindow,
        value: float | None,
        weight: int,
        time_ns: int,
        stress_s: float,
        cycles: float | None,
    ) -> None:
        """Drop the violations older than the window, then add this one."""
        if confirm.in_cycles and cycles is None:
            return  # no cycle count yet: nothing can be judged in cycles (the violation still is no good poll)
        kept = [c for c in dut.candidates.get(name, []) if confirm.holds(c.stress_s, c.cycles, stress_s, cycles)]
        if value is not None:
            kept.append(
                Candidate(
                    time_ns,
                    stress_s,
                    value,
                    dut.last_good_ns,
                    dut.last_good_stress_s,
                    dict(dut.last_good_fields),
                    cycles,
                    weight,
                )
            )
        if kept:
            dut.candidates[name] = kept
        else:
            dut.candidates.pop(name, None)

    def _confirmed(
        self,
        dut: DutState,
        rule: FailureRule,
        fields: Mapping[str, Any],
        time_ns: int,
        stress_s: float,
        cycles: CycleCount,
    ) -> Failure | None:
        confirm = self.confirmation(rule)
        if isinstance(confirm, ConfirmWindow):
            candidates = dut.candidates.get(rule.name, [])
            events = sum(c.events for c in candidates)
            if events < confirm.events:
                return None
            first = candidates[0]
            return self._fail(dut, rule, first, fields, time_ns, stress_s, events, cycles(confirm.cycles_from))
        streak = dut.streaks.get(rule.name)
        if streak is None or streak.count < confirm:
            return None
        first = Candidate(
            streak.first_ns, streak.first_stress_s, streak.value, dut.last_good_ns, dut.last_good_stress_s,
            dut.last_good_fields, streak.first_cycles,
        )  # fmt: skip
        return self._fail(dut, rule, first, fields, time_ns, stress_s, streak.count, cycles(None))

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
        events: int,
        cycles: float | None,
    ) -> Failure:
        """The DUT failed at ``first`` (the first violation), confirmed now by ``events`` violations."""
        dut.status = DutStatus.FAILED
        dut.failure = Failure(
            rule=rule.name,
            mode=rule.mode or rule.name,
            field=rule.field,
            limit="rises (event count)" if rule.rises else limit_of(rule, dut.baseline, first.before),
            value=first.value,
            time_ns=first.time_ns,
            stress_s=first.stress_s,
            detected_ns=time_ns,
            detected_stress_s=stress_s,
            events=events,
            last_good_ns=first.last_good_ns,
            last_good_stress_s=first.last_good_stress_s,
            before=dict(first.before),
            after=dict(fields),
            cycles=first.cycles,
            detected_cycles=cycles,
        )
        dut.streaks.clear()
        dut.candidates.clear()
        return dut.failure


def _no_cycles(source: str | None) -> float | None:
    return None
