"""Stress-time accounting: time is credited only while the rig's stress condition holds.

The clock is the records' own acquisition time. The state judged at one record holds until the next
judgement (a door opening between two chamber polls is seen at the second), so an exclusion's edges are
exact to one poll interval of the instrument that shows it. Every stretch that is not credited is an
exclusion interval with its reason; nothing is credited silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_daq.reliability.config import Condition, CyclingConfig, StressConfig

NS = 1_000_000_000
REASON_SILENT = "instrument silent"
REASON_PAUSED = "test paused"
REASON_DOWN = "daemon down"
REASON_NO_DATA = "no data yet"
REASON_READOUT = "readout"


@dataclass(slots=True)
class Exclusion:
    start_ns: int
    end_ns: int | None
    reason: str
    stress_s: float
    """Stress time when it began (the same when it ended: no time is credited inside it)."""

    def to_json(self) -> dict[str, Any]:
        return {"start_ns": self.start_ns, "end_ns": self.end_ns, "reason": self.reason, "stress_s": self.stress_s}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Exclusion:
        return cls(int(data["start_ns"]), data.get("end_ns"), str(data["reason"]), float(data["stress_s"]))

    @property
    def seconds(self) -> float | None:
        return None if self.end_ns is None else (self.end_ns - self.start_ns) / NS


class LiveValues:
    """The latest value of every point of a rig (``instrument.point``) and each instrument's health."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.last_data_ns: dict[str, int] = {}
        self.failing: dict[str, bool] = {}

    def update(self, instrument: str, fields: Mapping[str, Any], time_ns: int) -> None:
        for name, value in fields.items():
            self.values[f"{instrument}.{name}"] = value
        self.last_data_ns[instrument] = max(time_ns, self.last_data_ns.get(instrument, 0))

    def status(self, instrument: str, ok: bool) -> None:
        self.failing[instrument] = not ok

    def number(self, reference: str) -> float | None:
        value = self.values.get(reference)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        return float(value)


def condition_holds(condition: Condition, live: LiveValues) -> bool:
    value = live.values.get(condition.point)
    if value is None:
        return False
    if condition.equals is not None:
        expected = condition.equals
        if isinstance(value, bool) or isinstance(expected, bool):
            return bool(value) == bool(expected)
        return bool(value == expected)
    number = live.number(condition.point)
    if number is None:
        return False
    if condition.above is not None and not number > condition.above:
        return False
    if condition.below is not None and not number < condition.below:
        return False
    if condition.within is not None:
        reference = condition.of if isinstance(condition.of, int | float) else live.number(str(condition.of))
        if reference is None or abs(number - reference) > condition.within:
            return False
    return True


def first_failing(conditions: list[Condition], live: LiveValues) -> Condition | None:
    return next((condition for condition in conditions if not condition_holds(condition, live)), None)


@dataclass(slots=True)
class StressState:
    """What is persisted of a rig's stress clock."""

    stress_s: float = 0.0
    clock_ns: int | None = None
    reason: str | None = REASON_NO_DATA
    """Why stress is not accruing now (None: it is)."""
    exclusions: list[Exclusion] = field(default_factory=list)
    milestones_done: list[float] = field(default_factory=list)
    cycles: int = 0
    cycle_phase: str | None = None
    extreme_since_ns: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "stress_s": self.stress_s,
            "clock_ns": self.clock_ns,
            "reason": self.reason,
            "exclusions": [exclusion.to_json() for exclusion in self.exclusions],
            "milestones_done": self.milestones_done,
            "cycles": self.cycles,
            "cycle_phase": self.cycle_phase,
            "extreme_since_ns": self.extreme_since_ns,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StressState:
        return cls(
            stress_s=float(data["stress_s"]),
            clock_ns=data.get("clock_ns"),
            reason=data.get("reason"),
            exclusions=[Exclusion.from_json(item) for item in data.get("exclusions", [])],
            milestones_done=[float(m) for m in data.get("milestones_done", [])],
            cycles=int(data.get("cycles", 0)),
            cycle_phase=data.get("cycle_phase"),
            extreme_since_ns=data.get("extreme_since_ns"),
        )

    @property
    def open_exclusion(self) -> Exclusion | None:
        return self.exclusions[-1] if self.exclusions and self.exclusions[-1].end_ns is None else None


EventCallback = Callable[[str, str, dict[str, Any], int], None]
"""``(kind, message, details, time_ns)``."""


class StressClock:
    """Accrues a rig's stress time from its live values; reports interruptions and milestones as events."""

    def __init__(
        self,
        config: StressConfig | None,
        state: StressState,
        *,
        intervals: Mapping[str, float],
        emit: EventCallback,
    ) -> None:
        self.config = config
        self.state = state
        self._emit = emit
        self.time_scale = config.time_scale if config else 1.0
        self.pause_reason = REASON_PAUSED
        """The exclusion reason while the test is paused (an interlock pauses with its own name)."""
        instruments = {ref.rpartition(".")[0] for c in (config.all if config else []) for ref in c.referenced_points()}
        # An instrument is silent after silent_after, or three of its poll intervals, without good data.
        self._silent_after_ns = {
            name: int((config.silent_after if config and config.silent_after else 3 * intervals.get(name, 1.0)) * NS)
            for name in sorted(instruments)
        }

    def advance(self, now_ns: int, *, running: bool) -> None:
        """Credit (or exclude) the time since the last judgement under the state judged then."""
        state = self.state
        if state.clock_ns is None or not running:
            state.clock_ns = now_ns if state.clock_ns is None or not running else state.clock_ns
            return
        if now_ns <= state.clock_ns:
            return
        if state.reason is None:
            state.stress_s += (now_ns - state.clock_ns) / NS * self.time_scale
            self._check_milestones(now_ns)
        state.clock_ns = now_ns

    def judge(self, now_ns: int, live: LiveValues, *, running: bool, paused: bool, held: str | None = None) -> None:
        """Decide from the latest values whether stress holds from ``now_ns`` on; open or close exclusions.

        ``held``: why stress is held off whatever the values say (``readout``: the DUTs are out).
        """
        if not running:
            return
        reason = held or (self.pause_reason if paused else self.reason_now(now_ns, live))
        self._transition(reason, now_ns)
        if self.config and self.config.cycling:
            self._count_cycles(self.config.cycling, live, now_ns)

    def reason_now(self, now_ns: int, live: LiveValues) -> str | None:
        for instrument, silent_after in self._silent_after_ns.items():
            last = live.last_data_ns.get(instrument)
            if last is None:
                return REASON_NO_DATA
            if live.failing.get(instrument) or now_ns - last > silent_after:
                return f"{REASON_SILENT}: {instrument}"
        if self.config is None:
            return None
        failing = first_failing(self.config.all, live)
        return None if failing is None else failing.label

    def interrupt(self, start_ns: int, end_ns: int, reason: str) -> None:
        """Record a closed exclusion the clock could not see (the daemon's own downtime)."""
        state = self.state
        if (current := state.open_exclusion) is not None:
            current.end_ns = start_ns
        state.exclusions.append(Exclusion(start_ns, end_ns, reason, state.stress_s))
        state.reason = None
        state.clock_ns = end_ns
        self._emit(
            "interruption",
            f"{reason} for {(end_ns - start_ns) / NS:.1f} s",
            {"reason": reason, "start_ns": start_ns, "end_ns": end_ns, "stress_h": state.stress_s / 3600},
            end_ns,
        )
        self._transition(REASON_NO_DATA, end_ns)  # until fresh data shows the condition again

    def _transition(self, reason: str | None, now_ns: int) -> None:
        state = self.state
        if reason == state.reason:
            return
        current = state.open_exclusion
        if current is not None:
            current.end_ns = now_ns
            self._emit(
                "exclusion_ended",
                f"{current.reason}: {(now_ns - current.start_ns) / NS:.1f} s excluded",
                {"reason": current.reason, "start_ns": current.start_ns, "stress_h": state.stress_s / 3600},
                now_ns,
            )
        if reason is not None:
            state.exclusions.append(Exclusion(now_ns, None, reason, state.stress_s))
            self._emit("exclusion_started", reason, {"reason": reason, "stress_h": state.stress_s / 3600}, now_ns)
        state.reason = reason

    def close(self, now_ns: int) -> None:
        """The test stopped: end the open exclusion."""
        current = self.state.open_exclusion
        if current is not None:
            current.end_ns = now_ns
        self.state.reason = REASON_NO_DATA

    def _check_milestones(self, now_ns: int) -> None:
        if self.config is None:
            return
        for milestone in self.config.milestones:
            if milestone not in self.state.milestones_done and self.state.stress_s >= milestone:
                self.state.milestones_done.append(milestone)
                hours = milestone / 3600
                self._emit("milestone", f"readout point {hours:g} h of stress reached", {"milestone_h": hours}, now_ns)

    def _count_cycles(self, cycling: CyclingConfig, live: LiveValues, now_ns: int) -> None:
        """A cycle is counted when the temperature returns to the low extreme after dwelling at the high one."""
        temperature = live.number(cycling.point)
        if temperature is None:
            return
        state = self.state
        at = (
            "low"
            if temperature <= cycling.low + cycling.tolerance
            else "high"
            if temperature >= cycling.high - cycling.tolerance
            else None
        )
        if at is None:
            state.extreme_since_ns = None
            return
        if state.extreme_since_ns is None:
            state.extreme_since_ns = now_ns
        if at == state.cycle_phase or now_ns - state.extreme_since_ns < cycling.dwell * NS:
            return
        if at == "low" and state.cycle_phase == "high":
            state.cycles += 1
        state.cycle_phase = at
