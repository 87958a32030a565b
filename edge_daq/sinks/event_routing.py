"""Reliability events published at once on MQTT, to every MQTT output that takes them under its own routing.

The engine hands its events over as mappings (:class:`~edge_daq.reliability.engine.EventPublisher`). Each is
judged as the ``edge_daq_event`` record the engine also puts into the pipeline: the rig's tags, the event kind
and the DUT's identity, so an output's ``records:``, ``include:`` and ``exclude:`` mean the same for the
immediate copy as for the record that reaches it through the buffer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from edge_daq.errors import SinkError
from edge_daq.record import Series
from edge_daq.sinks.routing import EVENT_MEASUREMENT, Route


class EventOutput(Protocol):
    """What an output needs to take events at once (the MQTT output is one)."""

    async def publish_event(self, rig: str, event: Mapping[str, object]) -> None: ...


@dataclass(frozen=True, slots=True)
class RoutedEventPublisher:
    targets: Sequence[tuple[EventOutput, Route | None]]
    rig_tags: Mapping[str, Mapping[str, str]]
    """Each rig's base tags (gateway, site, rig and the rig's own tags), as on its records."""
    identity_keys: frozenset[str]
    """The event keys that are DUT identity tags on the event record (``dut``, ``lot``, ...)."""

    def series_of(self, rig: str, event: Mapping[str, object]) -> Series:
        tags = {**self.rig_tags.get(rig, {"rig": rig}), "event": str(event.get("event", ""))}
        for key in self.identity_keys:
            value = event.get(key)
            if value is not None:
                tags[key] = str(value)
        return Series(EVENT_MEASUREMENT, tags)

    async def publish_event(self, rig: str, event: Mapping[str, object]) -> None:
        """Publish to each output whose routing takes the event; raise the first failure after trying all."""
        series: Series | None = None
        failure: SinkError | None = None
        for output, route in self.targets:
            if route is not None:
                series = series or self.series_of(rig, event)
                if not route.decide(series):
                    continue
            try:
                await output.publish_event(rig, event)
            except SinkError as error:
                failure = failure or error
        if failure is not None:
            raise failure
