"""What every driver provides: an instrument config model, a link, and a poll that returns one result.

Drivers know a protocol and an instrument's points. They never sleep to schedule and never know about sinks:
the bus scheduler (``edge_daq.scheduling``) owns the link, decides when each instrument is polled, stamps
the acquisition time and turns a :class:`PollResult` into a record.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from edge_daq.config.units import Duration
from edge_daq.errors import DriverError
from edge_daq.record import FieldValue

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, so a typo is never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


class InstrumentConfig(StrictModel):
    """Keys common to every instrument of a rig file; each driver extends this model."""

    name: str = Field(pattern=NAME_PATTERN)
    profile: str | None = None
    driver: str
    interval: Duration = 1.0
    timeout: Duration = 1.0
    measurement: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)

    @property
    def measurement_name(self) -> str:
        return self.measurement or self.name

    def field_tags(self) -> dict[str, dict[str, str]]:
        """Extra tags of individual fields (per-point ``tags``); such fields go into records of their own."""
        return {}


@dataclass(slots=True)
class PollResult:
    """What one poll read. Points that could not be read are absent from ``fields`` and named in ``failed``."""

    fields: dict[str, FieldValue]
    failed: list[str] = field(default_factory=list)
    errors: list[DriverError] = field(default_factory=list)


class Link(ABC):
    """One physical connection (a TCP socket, a serial port) shared by every instrument behind it."""

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

    name: ClassVar[str]
    config_model: ClassVar[type[InstrumentConfig]]

    @abstractmethod
    def link_key(self, config: ConfigT) -> str:
        """Instruments whose keys are equal share one link and one bus scheduler."""

    @abstractmethod
    def open_link(self, configs: Sequence[ConfigT]) -> LinkT:
        """Create (not yet open) the link for the instruments that share it."""

    @abstractmethod
    def make_instrument(self, config: ConfigT) -> Instrument[ConfigT, LinkT]: ...
