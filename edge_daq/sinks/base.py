"""What every output provides. The runner that feeds an output from the buffer lives in ``edge_daq.delivery``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Self

from pydantic import Field, model_validator

from edge_daq.config.types import StrictModel
from edge_daq.config.units import Duration
from edge_daq.processing.config import AggregateConfig, DeadbandConfig
from edge_daq.record import Record
from edge_daq.sinks.routing import ALL_KIND_LIST, RecordFilter, RecordKind, Route, route_of
from edge_daq.sinks.secrets import read_secret as read_secret  # outputs import it from here


class OutputConfig(StrictModel):
    """Keys common to every output."""

    batch_size: int = Field(default=5000, ge=1, le=1_000_000)
    flush_interval: Duration = 1.0
    max_backoff: Duration = 300.0
    # Routing (edge_daq.sinks.routing): the record kinds this output takes, then the filters on their series.
    records: list[RecordKind] = Field(default_factory=lambda: list(ALL_KIND_LIST), min_length=1)
    include: RecordFilter | None = None
    exclude: RecordFilter | None = None
    # Reduction after the buffer (edge_daq.processing): report by exception, or downsampling; one of the two.
    deadband: DeadbandConfig | None = None
    aggregate: AggregateConfig | None = None

    @model_validator(mode="after")
    def _one_reduction(self) -> Self:
        if self.deadband is not None and self.aggregate is not None:
            raise ValueError("an output takes deadband or aggregate, not both (use two outputs)")
        return self

    def route(self) -> Route | None:
        """A new route for these settings; None if the output takes every record."""
        return route_of(frozenset(self.records), self.include, self.exclude)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What happened to a batch that the output accepted: ``written + dropped == len(batch)``.

    ``dropped`` counts records the destination rejected for good (a malformed point, a type conflict):
    they are logged and counted, never retried, so one bad point cannot block the rest. ``resent`` counts
    records of earlier batches the output delivered again with this one (the MQTT output's ``resend_window``).
    """

    written: int
    dropped: int = 0
    resent: int = 0


class Output(ABC):
    """An output delivers batches of records. ``async with`` opens and closes its connections."""

    name: str
    """The instance name (the key under ``outputs:``); the type's name by default."""
    writes_in_flight: ClassVar[int] = 1
    """How many :meth:`write` calls the runner may have under way at once, on consecutive batches. More than
    one only where the destination does not care in which order batches arrive; they are committed in order."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Prepare the output (create a database, open a file); failures here are retried like writes."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files; never raises."""

    @property
    def target(self) -> str | None:
        """Where it delivers now, for /status (a URL, a broker, a folder; never credentials); None if unsaid."""
        return None

    async def probe(self) -> bool | None:
        """Whether the destination answers right now, checked cheaply (a connect, a ping) and within a few seconds.

        While the runner backs off after a failure, it probes about once a second, and retries at once when a
        probe that failed succeeds: delivery resumes within seconds of the destination coming back, whatever
        the backoff reached. Never raises. None (the default): this output cannot tell, so the runner waits out
        its backoff.
        """
        return None

    @abstractmethod
    async def write(self, records: Sequence[Record]) -> WriteResult:
        """Deliver one batch, acknowledged by the destination when this returns.

        Raises :class:`~edge_daq.errors.RetriableSinkError` to have the same batch retried after a backoff
        (honouring ``retry_after``), :class:`~edge_daq.errors.FatalSinkError` for a configuration problem
        (also retried, with a long backoff: the data is kept). Splitting an oversized batch is done inside.
        """
