"""What every driver provides: an instrument config model, a link, and a poll that returns one result.

Drivers know a protocol and an instrument's points. They never sleep to schedule and never know about sinks:
the bus scheduler (``edge_daq.scheduling``) owns the link, decides when each instrument is polled, stamps
the acquisition time and turns a :class:`PollResult` into a record.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import Field

# NAME_PATTERN and StrictModel live in edge_daq.config.types; re-exported here for older imports.
from edge_daq.config.types import NAME_PATTERN as NAME_PATTERN
from edge_daq.config.types import Interval, Timeout
from edge_daq.config.types import StrictModel as StrictModel
from edge_daq.config.yaml_loader import LocatedDict
from edge_daq.errors import DriverError
from edge_daq.processing.computed import ComputedPoint
from edge_daq.record import FieldValue
from edge_daq.stats import LinkStats


class InstrumentConfig(StrictModel):
    """Keys common to every instrument of a rig file; each driver extends this model."""

    name: str = Field(pattern=NAME_PATTERN)
    profile: str | None = None
    driver: str  # the registry's name of the driver (edge_daq.drivers): the union picks the model by it
    interval: Interval = 1.0  # 1 ms to 1 day: zero, NaN or infinity cannot be scheduled
    timeout: Timeout = 1.0  # 1 ms to 1 hour
    measurement: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    computed: list[ComputedPoint] = Field(default_factory=list, max_length=256)  # edge_daq.processing.computed

    @property
    def measurement_name(self) -> str:
        return self.measurement or self.name

    def field_tags(self) -> dict[str, dict[str, str]]:
        """Extra tags of individual fields (per-point ``tags``); such fields go into records of their own."""
        return {}


@dataclass(frozen=True, slots=True)
class PlacedInstrument:
    """A validated instrument with the YAML mapping it came from (after the profile merge), for positions.

    What a driver's gateway checks (see :mod:`edge_daq.drivers`) are given.
    """

    config: InstrumentConfig
    source: LocatedDict


@dataclass(slots=True)
class PollResult:
    """What one poll read. Points that could not be read are absent from ``fields`` and named in ``failed``."""

    fields: dict[str, FieldValue]
    failed: list[str] = field(default_factory=list)
    errors: list[DriverError] = field(default_factory=list)
    samples: list[tuple[int, dict[str, FieldValue]]] | None = None
    """Values that carry their own time (ns), such as the data changes of an OPC UA subscription since the last
    poll: when set, each becomes a record at its time and ``fields`` is not used."""


class Link(ABC):
    """One physical connection (a TCP socket, a serial port) shared by every instrument behind it."""

    stats: LinkStats
    """The wire's counters (late replies, garbled frames); set by each link, kept by the daemon across reloads."""

    @abstractmethod
    async def open(self) -> None:
        """Connect; raise :class:`~edge_daq.errors.DriverConnectionError` if the link cannot be opened."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect; never raises."""

    @property
    @abstractmethod
    def is_open(self) -> bool: ...

    @property
    @abstractmethod
    def describe(self) -> str:
        """Where this link goes, for logs and metrics (``tcp://10.0.4.17:502``); never contains secrets."""


ConfigT = TypeVar("ConfigT", bound=InstrumentConfig)
LinkT = TypeVar("LinkT", bound=Link)


class Instrument(ABC, Generic[ConfigT, LinkT]):
    """Reads one instrument's points over a link it does not own."""

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    @abstractmethod
    async def poll(self, link: LinkT) -> PollResult:
        """Read every point once.

        Returns what could be read; raises :class:`~edge_daq.errors.DriverError` when nothing could be
        read (a timeout, a lost connection). Must respect ``config.timeout`` itself and must not leave a
        request in flight when it returns or raises.
        """


class DriverPlugin(ABC, Generic[ConfigT, LinkT]):
    """The registry entry of a driver: one per ``driver:`` value."""

    @abstractmethod
    def link_key(self, config: ConfigT) -> str:
        """Instruments whose keys are equal share one link and one bus scheduler."""

    @abstractmethod
    def open_link(self, configs: Sequence[ConfigT]) -> LinkT:
        """Create (not yet open) the link for the instruments that share it."""

    @abstractmethod
    def make_instrument(self, config: ConfigT) -> Instrument[ConfigT, LinkT]: ...
