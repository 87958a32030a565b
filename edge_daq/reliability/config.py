"""Config models of the reliability keys of a rig file: DUTs, repeated channels, stress, failure rules, test.

Sample (rig file)::

    rig: htol-07
    test: {id: HTOL-2611-03, kind: HTOL}       # started when the daemon first runs the rig (optional)
    duts_csv: htol-07-duts.csv                 # or an inline list under duts:
    duts:
      - {socket: 1, serial: U0001, lot: L2611-03, wafer: "07", x: 12, y: 31, board: B03, slot: 1}
    instruments:
      - name: board1
        profile: burnin-board
        channels:                              # one record per socket and poll, tagged with its DUT
          count: 32
          stride: 10
          points:
            - {name: v, address: 1000, type: uint16, scale: 0.001, unit: V}
            - {name: i, address: 1001, type: uint16, scale: 0.1, unit: mA}
            - {name: oc, address: 1002, type: bool, bit: 0}
    stress:
      time_scale: 1                            # stress seconds per real second (simulations only)
      all:
        - {point: chamber.door_open, equals: false, reason: door open}
        - {point: board1.bias_enable, equals: 1, reason: bias off}
        - {point: chamber.temp_pv, within: 2, of: chamber.temp_sp, reason: out of tolerance}
      milestones: [168h, 500h, 1000h]
    failures:
      confirm: 2                               # or IPC-style: {events: 3, within: 10m}
                                               # or in cycles: {events: 10, within_fraction: 0.1}
      rules:
        - {name: over_current, field: oc, equals: true, mode: short}
        - {name: open, field: i, below: 1.0, mode: open}
        - {name: drift, field: i, drift: 0.10, mode: parametric drift}
        - {name: spike, field: i, max_change: 5, per: 1s, confirm: {events: 3, within: 10m}}
        - {name: intermittent, field: events, rises: true, confirm: {events: 4, within_cycles: 5}}
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from edge_daq.config.types import NAME_PATTERN, StrictModel
from edge_daq.config.units import Duration
from edge_daq.writes.action_config import WriteAction

TestKind = Literal[
    "HTOL", "burn-in", "ELFR", "TC", "THB", "HAST", "endurance", "vibration", "fatigue", "custom"
]  # fmt: skip
"""Test kinds; TC is temperature cycling."""

POINT_REF_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*\.[A-Za-z0-9_][A-Za-z0-9_\-]*$"
DUT_TAG_KEYS = ("serial", "lot", "sublot", "wafer", "x", "y", "date_code", "board", "slot", "bin")
"""Identity keys of a DUT, named as in STDF (PART_ID is `serial`, SBLOT_ID `sublot`, X_COORD `x`, ...)."""
DUT_CSV_COLUMNS = ("socket", "instrument", *DUT_TAG_KEYS)


def _number_as_text(value: object) -> object:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Text = Annotated[str, BeforeValidator(_number_as_text, json_schema_input_type=str | int)]
"""A string that may be written as a bare number (``wafer: 7``, ``slot: 1``)."""


class DutConfig(StrictModel):
    """One device under test: where it sits and where it comes from."""

    socket: int = Field(ge=0, description="channel number on its instrument (the socket)")
    instrument: str | None = Field(default=None, pattern=NAME_PATTERN)
    """The instrument with ``channels:`` the DUT sits on; may be left out when the rig has only one."""
    serial: Text = Field(min_length=1, description="part id / unit serial number (STDF PART_ID)")
    lot: Text | None = None
    sublot: Text | None = None
    wafer: Text | None = None
    x: int | None = None
    y: int | None = None
    date_code: Text | None = None
    board: Text | None = None
    slot: Text | None = None
    bin: int | None = None

    def identity(self) -> dict[str, str]:
        """The DUT's tags: ``dut`` (its serial, the join key) and every identity key that is set."""
        tags = {"dut": self.serial}
        for key in DUT_TAG_KEYS:
            value = getattr(self, key)
            if value is not None:
                tags[key] = str(value)
        return tags


class ChannelsConfig(StrictModel):
    """Repeated channels of an instrument: ``points`` of channel ``first`` repeated ``count`` times.

    Channel c's points are named ``{name}{c:02d}`` among the instrument's points; numeric ``address`` values
    move by ``stride`` per channel and ``{channel}`` in a string value (an SCPI query) becomes the channel
    number. Each poll gives one record per channel, with fields named as in ``points`` and the channel's
    DUT identity as tags (``socket``, ``dut``, ``lot``, ...).
    """

    count: int = Field(ge=1, le=4096)
    stride: int = Field(default=1, ge=0)
    first: int = Field(default=1, ge=0)
    measurement: str | None = None
    """Measurement of the per-channel records (default: the instrument's)."""
    points: list[dict[str, Any]] = Field(min_length=1)


Scalar = bool | int | float | str


class Condition(StrictModel):
    """One term of a condition over live points, written ``instrument.point``."""

    point: str = Field(pattern=POINT_REF_PATTERN)
    equals: Scalar | None = None
    within: float | None = Field(default=None, ge=0)
    of: float | str | None = None
    """With ``within``: a number or another point (``chamber.temp_sp``)."""
    above: float | None = None
    below: float | None = None
    reason: str | None = None
    """What an exclusion caused by this term is called (default: ``<point> out of tolerance``)."""

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        tests = sum(value is not None for value in (self.equals, self.within, self.above, self.below))
        if tests == 0:
            raise ValueError("a condition needs equals, within (with of), above or below")
        if self.equals is not None and tests > 1:
            raise ValueError("equals cannot be combined with within, above or below")
        if (self.within is None) != (self.of is None):
            raise ValueError("within and of go together: |point - of| <= within")
        return self

    @property
    def label(self) -> str:
        return self.reason or f"{self.point} out of tolerance"

    def referenced_points(self) -> list[str]:
        refs = [self.point]
        if isinstance(self.of, str):
            refs.append(self.of)
        return refs


class CyclingConfig(StrictModel):
    """Temperature cycles counted from a measured temperature: low extreme, dwell, high extreme, dwell."""

    point: str = Field(pattern=POINT_REF_PATTERN)
    low: float
    high: float
    tolerance: float = Field(default=2.0, ge=0)
    """An extreme is reached within this many degrees of it."""
    dwell: Duration = 0.0
    """Time to stay at an extreme for it to count (stress seconds of the record clock, unscaled)."""

    @model_validator(mode="after")
    def _order(self) -> CyclingConfig:
        if self.low >= self.high:
            raise ValueError("low must be below high")
        return self


class StressConfig(StrictModel):
    all: list[Condition] = Field(min_length=1)
    """Every term must hold for stress time to accrue."""
    silent_after: Duration | None = None
    """An instrument is silent after this long without a good poll (default: 3 of its intervals)."""
    milestones: list[Duration] = Field(default_factory=list)
    """Readout points in stress time (``168h``): an event when reached."""
    time_scale: float = Field(default=1.0, gt=0)
    """Stress seconds credited per real second: 1 on a real rig; simulations run faster."""
    cycling: CyclingConfig | None = None


class ConfirmWindow(StrictModel):
    """IPC-style confirmation: the first violation is a candidate, confirmed by further ones within a window.

    A failure is confirmed when ``events`` violations of the rule (the candidate included) fall within the
    window after the candidate; the failure is back-dated to the candidate. Polls between them may be good.
    A candidate not confirmed in time is dropped: the next violation in its window, if any, becomes the
    candidate. The window is one of:

    - ``within``: stress time after the candidate (paused and excluded stretches do not count);
    - ``within_cycles``: cycles (or drops, or any counted stress) after the candidate's cycle count;
    - ``within_fraction``: a fraction of the cycle count at the candidate (IPC-9701 / IPC-SM-785: 10
      events within 10 % of the cycles to the first is ``{events: 10, within_fraction: 0.1}``).

    Cycles are the rig's ``stress.cycling`` count, or ``cycles_from``: a counter point (``rig.drop_count``).
    """

    events: int = Field(ge=2, le=1000)
    """Violations in the window that confirm a failure, the first (the candidate) included."""
    within: Duration | None = Field(default=None, gt=0)
    """Stress time after the candidate (paused and excluded stretches do not count)."""
    within_cycles: float | None = Field(default=None, ge=0)
    """Cycles after the candidate's cycle count (0: in the same cycle)."""
    within_fraction: float | None = Field(default=None, gt=0, le=10)
    """A fraction of the cycle count at the candidate (0.1: within 10 % of the cycles to the first event)."""
    cycles_from: str | None = Field(default=None, pattern=POINT_REF_PATTERN)
    """A counter point that counts the cycles (``rig.drop_count``); default: the rig's ``stress.cycling``."""

    @model_validator(mode="after")
    def _one_window(self) -> ConfirmWindow:
        windows = sum(value is not None for value in (self.within, self.within_cycles, self.within_fraction))
        if windows != 1:
            raise ValueError("a confirmation window needs exactly one of within, within_cycles, within_fraction")
        if self.cycles_from is not None and self.within is not None:
            raise ValueError("cycles_from goes with within_cycles or within_fraction (a window counted in cycles)")
        return self

    @property
    def in_cycles(self) -> bool:
        return self.within is None

    def holds(
        self, candidate_stress_s: float, candidate_cycles: float | None, stress_s: float, cycles: float | None
    ) -> bool:
        """Whether a violation at (``stress_s``, ``cycles``) is inside the window of the candidate's."""
        if self.within is not None:
            return stress_s - candidate_stress_s <= self.within
        if candidate_cycles is None or cycles is None:
            return False
        width = (
            self.within_cycles if self.within_cycles is not None else (self.within_fraction or 0.0) * candidate_cycles
        )
        return cycles - candidate_cycles <= width


Confirm = Annotated[int, Field(ge=1)] | ConfirmWindow
"""``confirm: 3`` (violations on consecutive polls) or a window: ``confirm: {events: 3, within: 10m}``,
``{events: 4, within_cycles: 5}`` or ``{events: 10, within_fraction: 0.1}``."""


class FailureRule(StrictModel):
    """A DUT fails when its ``field`` violates this rule, confirmed as ``confirm`` says."""

    name: str = Field(pattern=NAME_PATTERN)
    field: str = Field(pattern=NAME_PATTERN)
    above: float | None = None
    below: float | None = None
    equals: Scalar | None = None
    drift: float | None = Field(default=None, gt=0)
    """Relative change from the DUT's own baseline: |x/x0 - 1| > drift."""
    max_change: float | None = Field(default=None, gt=0)
    """Spike / rate of change: |x - xg| > max_change, xg the value on the DUT's last known-good poll."""
    max_relative_change: float | None = Field(default=None, gt=0)
    """Relative spike: |x/xg - 1| > max_relative_change (a fraction: 0.2 is 20 %)."""
    rises: Literal[True] | None = None
    """The field is a latched event count (an event detector's): a rise of n since the DUT's previous poll is
    n violations at once; a fall (the count was cleared) is none, and the count goes on from there."""
    per: Duration | None = Field(default=None, gt=0)
    """With a change limit: the limit is a rate, the change per this much acquisition time (``per: 1s``)."""
    mode: str | None = None
    """Failure mode written to the life table (default: the rule's name)."""
    confirm: Confirm | None = None
    on_failure: list[WriteAction] | None = None
    """Protective writes when this rule confirms a failure (instead of ``failures.on_failure``)."""

    @model_validator(mode="after")
    def _one_test(self) -> FailureRule:
        tests = (self.above, self.below, self.equals, self.drift, self.max_change, self.max_relative_change, self.rises)
        if sum(value is not None for value in tests) != 1:
            raise ValueError(
                "a failure rule needs exactly one of above, below, equals, drift, max_change, max_relative_change,"
                " rises"
            )
        if self.per is not None and self.max_change is None and self.max_relative_change is None:
            raise ValueError("per goes with max_change or max_relative_change (a rate of change)")
        return self

    @property
    def is_change(self) -> bool:
        return self.max_change is not None or self.max_relative_change is not None


class FailuresConfig(StrictModel):
    confirm: Confirm = 2
    """Consecutive violating polls that confirm a failure (its time is that of the first), or a window."""
    baseline_samples: int = Field(default=3, ge=1)
    """Polls under stress whose median is each DUT's baseline for drift rules."""
    when: list[Condition] | None = None
    """Rules are judged only while these hold (default: the stress condition, so bias off is no failure)."""
    rules: list[FailureRule] = Field(min_length=1)
    on_failure: list[WriteAction] = Field(default_factory=list)
    """Protective writes on a confirmed failure; ``{socket}`` in a point is the failed DUT's socket."""


class TestConfig(StrictModel):
    """A test started when the daemon first runs the rig, unless one was started from the command line."""

    __test__ = False  # not a pytest class

    id: str = Field(pattern=NAME_PATTERN)
    kind: TestKind = "custom"
    on_start: list[WriteAction] = Field(default_factory=list)
    """Writes when a test starts (from the YAML or ``edge-daq test start``)."""
    on_stop: list[WriteAction] = Field(default_factory=list)
