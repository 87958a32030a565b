"""What every output provides. The runner that feeds an output from the buffer lives in ``edge_daq.delivery``."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from pydantic import Field, SecretStr

from edge_daq.config.units import Duration
from edge_daq.drivers.base import StrictModel
from edge_daq.errors import RetriableSinkError
from edge_daq.record import Record


class OutputConfig(StrictModel):
    """Keys common to every output."""

    batch_size: int = Field(default=5000, ge=1, le=1_000_000)
    flush_interval: Duration = 1.0
    max_backoff: Duration = 300.0


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What happened to a batch that the output accepted: ``written + dropped == len(batch)``.

    ``dropped`` counts records the destination rejected for good (a malformed point, a type conflict):
    they are logged and counted, never retried, so one bad point cannot block the rest.
    """

    written: int
    dropped: int = 0


async def read_secret(value: SecretStr | None, path: Path | None, *, what: str = "secret file") -> str | None:
    """A token or password: from the config's SecretStr, or read from its file (trailing newline dropped)."""
    if path is None:
        return value.get_secret_value() if value is not None else None
    try:
        text = await asyncio.to_thread(path.read_text, encoding="utf-8")
    except OSError as error:
        # The file may appear later (systemd credentials, a mounted secret): retry rather than give up.
        raise RetriableSinkError(f"cannot read {what} {path}: {error.strerror}") from error
    return text.rstrip("\r\n")


class Output(ABC):
    """An output delivers batches of records. ``async with`` opens and closes its connections."""

    name: str
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

    @abstractmethod
    async def write(self, records: Sequence[Record]) -> WriteResult:
        """Deliver one batch, acknowledged by the destination when this returns.

        Raises :class:`~edge_daq.errors.RetriableSinkError` to have the same batch retried after a backoff
        (honouring ``retry_after``), :class:`~edge_daq.errors.FatalSinkError` for a configuration problem
        (also retried, with a long backoff: the data is kept). Splitting an oversized batch is done inside.
        """
