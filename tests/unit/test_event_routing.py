"""Reliability events published at once go to every MQTT output that takes them, under that output's routing."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from edge_daq.errors import RetriableSinkError
from edge_daq.sinks.event_routing import RoutedEventPublisher
from edge_daq.sinks.routing import RecordFilter, Route

RIG_TAGS = {
    "htol-07": {"gateway": "gw", "rig": "htol-07", "lot": "L2611-03"},
    "htol-08": {"gateway": "gw", "rig": "htol-08", "lot": "L2612-01"},
}
FAILURE = {"event": "dut_failed", "dut": "U0001", "serial": "U0001", "board": "B03", "message": "short"}


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.published: list[tuple[str, str]] = []

    async def publish_event(self, rig: str, event: Mapping[str, object]) -> None:
        if self.fail:
            raise RetriableSinkError("broker down")
        self.published.append((rig, str(event["event"])))


def publisher(*targets: tuple[Recorder, Route | None]) -> RoutedEventPublisher:
    return RoutedEventPublisher(
        targets=list(targets), rig_tags=RIG_TAGS, identity_keys=frozenset(("dut", "serial", "lot", "board"))
    )


async def test_each_output_gets_the_events_its_routing_takes() -> None:
    everything, only_07, not_board_b03, status_only = Recorder(), Recorder(), Recorder(), Recorder()
    events = publisher(
        (everything, None),
        (only_07, Route(include=RecordFilter(rig=["htol-07"]))),
        (not_board_b03, Route(exclude=RecordFilter(tags={"board": ["B0[0-3]"]}))),
        (status_only, Route(kinds=frozenset({"status"}))),
    )
    await events.publish_event("htol-07", FAILURE)
    await events.publish_event("htol-08", {"event": "stress_started", "message": "oven at 125 C"})
    assert everything.published == [("htol-07", "dut_failed"), ("htol-08", "stress_started")]
    assert only_07.published == [("htol-07", "dut_failed")]
    assert not_board_b03.published == [("htol-08", "stress_started")]  # the DUT's identity routes its event
    assert status_only.published == []


async def test_a_failing_output_does_not_keep_the_event_from_the_others() -> None:
    down, up = Recorder(fail=True), Recorder()
    events = publisher((down, None), (up, None))
    with pytest.raises(RetriableSinkError):
        await events.publish_event("htol-07", FAILURE)  # the engine counts it as not published
    assert up.published == [("htol-07", "dut_failed")]


def test_an_event_is_judged_as_its_record_in_the_pipeline() -> None:
    series = publisher().series_of("htol-07", FAILURE)
    assert series.measurement == "edge_daq_event"
    assert series.tags == {
        "gateway": "gw",
        "rig": "htol-07",
        "lot": "L2611-03",
        "event": "dut_failed",
        "dut": "U0001",
        "serial": "U0001",
        "board": "B03",
    }
