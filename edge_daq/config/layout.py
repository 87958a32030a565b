"""How the sockets of a board sit on it, for the status page's board map (the rig file's ``layout:`` key).

``layout: {board1: {rows: 4, columns: 8}}`` names instruments with ``channels:``; either count may be left
out and follows from the other. Without a layout the page lays the channels out as :func:`grid` says.
"""

from __future__ import annotations

import math
from typing import Literal, Self

from pydantic import Field, model_validator

from edge_daq.config.types import StrictModel
from edge_daq.drivers.base import InstrumentConfig

MAX_SIDE = 256


class BoardLayout(StrictModel):
    rows: int | None = Field(default=None, ge=1, le=MAX_SIDE)
    columns: int | None = Field(default=None, ge=1, le=MAX_SIDE)
    order: Literal["rows", "columns"] = "rows"
    """``rows``: socket 1, 2, 3 ... run along the first row; ``columns``: down the first column."""

    @model_validator(mode="after")
    def _one_count(self) -> Self:
        if self.rows is None and self.columns is None:
            raise ValueError("give rows, columns or both")
        return self

    def shape(self, sockets: int) -> tuple[int, int]:
        """(rows, columns) for ``sockets`` sockets; a missing count is what it takes to hold them all."""
        rows, columns = self.rows, self.columns
        if rows is None:
            rows = max(1, math.ceil(sockets / (columns or 1)))
        if columns is None:
            columns = max(1, math.ceil(sockets / rows))
        return rows, columns


def grid(sockets: int) -> tuple[int, int]:
    """A board's (rows, columns) from its socket count: the flattest exact grid no more than twice as wide
    as it is high (32 -> 4 x 8, 48 -> 6 x 8), else a near-square one."""
    if sockets <= 0:
        return 0, 0
    for rows in range(math.isqrt(sockets), 0, -1):
        if sockets % rows == 0:
            columns = sockets // rows
            if columns <= 2 * rows:
                return rows, columns
            break
    columns = math.ceil(math.sqrt(sockets))
    return math.ceil(sockets / columns), columns


def channel_sockets(instrument: InstrumentConfig) -> list[int]:
    """The socket numbers of an instrument's ``channels:`` (expanded by the loader into tagged points)."""
    sockets = set()
    for tags in instrument.field_tags().values():
        socket = tags.get("socket")
        if socket is not None and socket.isdigit():
            sockets.add(int(socket))
    return sorted(sockets)


def layout_issues(layout: dict[str, BoardLayout], channels: dict[str, int]) -> list[str]:
    """What is wrong with a rig's ``layout:`` given its instruments' channel counts (None: no channels)."""
    issues = []
    for name, board in layout.items():
        if name not in channels:
            known = ", ".join(sorted(channels)) or "none"
            issues.append(f"layout: {name!r} is not an instrument with channels: (those are: {known})")
            continue
        rows, columns = board.shape(channels[name])
        if rows * columns < channels[name]:
            issues.append(f"layout: {name}: {rows} x {columns} cells cannot hold its {channels[name]} channels")
    return issues
