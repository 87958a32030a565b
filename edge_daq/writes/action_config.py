"""Actions in the rig file: writes at test start and stop, on a confirmed DUT failure, and interlocks.

Sample (rig file)::

    test:
      id: HTOL-2611-03
      on_start: [{write: chamber.temp_sp, value: 125}]
      on_stop:  [{write: chamber.temp_sp, value: 25}, {write: board1.bias_enable, value: 0}]
    failures:
      on_failure: [{write: "board1.enable{socket}", value: 0}]   # the failed DUT's socket only
      rules:
        - {name: over_current, field: oc, equals: true, on_failure: [...]}   # a rule's own, instead
    interlocks:
      - name: over_temperature
        when: {point: chamber.temp_pv, above: 150, for: 10s}
        do: [{write: board1.bias_enable, value: 0}]
        then: pause          # pause the test; the exclusion's reason is the interlock's name

Every write goes through the same guards as ``edge-daq write`` (the point needs ``write:``; limits, step
and rate apply). Config only: pydantic and edge_daq.config.types.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edge_daq.config.types import NAME_PATTERN, Duration, StrictModel

TARGET_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*\.[A-Za-z0-9_{}][A-Za-z0-9_\-{}]*$"
SOCKET_PLACEHOLDER = "{socket}"


class WriteAction(StrictModel):
    write: str = Field(pattern=TARGET_PATTERN, description="instrument.point; {socket}: the failed DUT's socket")
    value: float

    @property
    def instrument(self) -> str:
        return self.write.rsplit(".", 1)[0]

    @property
    def point(self) -> str:
        return self.write.rsplit(".", 1)[1]


class InterlockCondition(StrictModel):
    point: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*\.[A-Za-z0-9_][A-Za-z0-9_\-]*$")
    above: float | None = None
    below: float | None = None
    for_: Duration = Field(default=0.0, alias="for", description="the violation must last this long")

    @model_validator(mode="after")
    def _one_limit(self) -> InterlockCondition:
        if (self.above is None) == (self.below is None):
            raise ValueError("an interlock condition needs exactly one of above or below")
        return self

    def violated(self, value: float) -> bool:
        return (self.above is not None and value > self.above) or (self.below is not None and value < self.below)


class Interlock(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    when: InterlockCondition
    do: list[WriteAction] = Field(min_length=1)
    then: Literal["pause", "continue"] = "continue"
