"""An output's reduction, between its buffer reader and its delivery runner: a :class:`BatchSource` itself.

The runner reads reduced records and commits them as it always does; the source commits the buffer beneath
only up to what the reducer no longer needs (:mod:`edge_daq.processing.base`). Reduction happens here, after
the spool, per output: the reliability engine and every other output still see every poll.

Aggregation saves its floor (the end of the newest window delivered) in ``<spool_dir>/processing/<output>.json``
when a delivered batch is committed, before the buffer's cursor is told to move: the cursor file is written
later (the spool coalesces its saves), so after a SIGKILL the floor on disk is never older than the cursor.
The file is a few bytes, written once per window, without fsync (the cursor's own fsync follows it).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from edge_daq.buffer.ring import Batch, BatchSource
from edge_daq.processing.aggregate import Aggregate
from edge_daq.processing.base import Emitted, Reducer
from edge_daq.processing.deadband import Deadband
from edge_daq.stats import OutputStats

if TYPE_CHECKING:
    from edge_daq.sinks.base import OutputConfig

log = structlog.get_logger("edge_daq.processing")

READ_RECORDS = 5000  # raw records read from the buffer at a time
COALESCE = 0.05  # seconds a reducing output waits for more records once one arrived
FLOOR_DIR = "processing"
MAX_FLOOR_BYTES = 4096
MAX_READY = 100_000  # aggregates waiting for a memory-only output (one per series and window)


class ReducedSource:
    def __init__(
        self,
        inner: BatchSource,
        reducer: Reducer,
        stats: OutputStats,
        floor_path: Path | None,
        *,
        eager: bool = False,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.reducer = reducer
        self.stats = stats
        self._floor_path = floor_path
        self._position = 0  # raw records read from inner since the start (or the last rewind)
        self._committed = 0  # raw position committed on inner
        self._committed_floor = reducer.floor
        self._saved_floor = reducer.floor
        self._read: deque[tuple[int, Batch]] = deque()  # inner batches read, not committed: (end position, batch)
        self._ready: deque[Emitted] = deque()
        # batch id -> (commit position, floor, values, what was handed out)
        self._out: dict[int, tuple[int, int | None, int, list[Emitted]]] = {}
        self._eager = eager
        """Memory only (no spool) and aggregating: the ring is let go of each record once it is in a window, so
        that it does not hold a window of raw records (bench/pipeline.py: a minute of them slowed the garbage
        collector down for the whole pipeline). Nothing survives a restart of the daemon without a spool anyway;
        an output's restart keeps its windows and sends again what it had not delivered."""
        self._dropped = 0
        self._batches = 0
        self._woken = False

    @property
    def committed_floor(self) -> int | None:
        return self._committed_floor

    # -- BatchSource

    @property
    def pending(self) -> int:
        return self.inner.pending

    @property
    def unread(self) -> int:
        if self._woken:
            self._pump_now()  # draining: the runner reads without waiting (a blocking read is allowed then)
        return len(self._ready)

    @property
    def lost(self) -> int:
        return self.inner.lost + self._dropped

    async def wait(self, min_records: int = 1, max_wait: float | None = None) -> bool:
        loop = asyncio.get_running_loop()
        deadline = None if max_wait is None else loop.time() + max_wait
        while True:
            await self._pump(min_records)
            if len(self._ready) >= min_records or self._woken:
                return len(self._ready) >= min_records
            timeout = None if deadline is None else deadline - loop.time()
            due = self.reducer.deadline_ns()
            if due is not None:
                until_due = max(0.0, (due - time.time_ns()) / 1e9) + 0.001
                timeout = until_due if timeout is None else min(timeout, until_due)
            if timeout is not None and timeout <= 0:
                return False
            if await self.inner.wait(1, timeout) and not self._woken:
                # Then gather a little more: waking for every record the reducer then filters out cost the
                # loop a turn per record (bench/pipeline.py). Reduced outputs can wait COALESCE more.
                coalesce = COALESCE if deadline is None else max(0.0, min(COALESCE, deadline - loop.time()))
                await self.inner.wait(READ_RECORDS, coalesce)

    def wake(self) -> None:
        self._woken = True
        self.inner.wake()

    def read(self, max_records: int) -> Batch:
        ready = self._ready
        taken = [ready.popleft() for _ in range(min(max_records, len(ready)))]
        self._batches += 1
        if taken:
            last = taken[-1]
            values = sum(len(item.record.fields) for item in taken)
            self._out[self._batches] = (last.commit, last.floor, values, taken if self._eager else [])
        return Batch([item.record for item in taken], self._batches)

    def commit(self, batch: Batch) -> None:
        entry = self._out.pop(batch.end, None)
        for earlier in [key for key in self._out if key < batch.end]:
            self._out.pop(earlier)
        if entry is None:
            return
        position, floor, values, _ = entry
        self.stats.values_sent += values
        self._commit_inner(position, floor)

    def rewind(self) -> None:
        """Read again from the last commit (an output restarted): what was read and not committed is redone."""
        rewind = getattr(self.inner, "rewind", None)
        if rewind is not None:
            rewind()
        if self._eager:  # the reducer keeps its windows; what was handed out and not delivered goes out again
            for key in sorted(self._out, reverse=True):
                self._ready.extendleft(reversed(self._out[key][3]))
            self._out.clear()
            return
        self._read.clear()
        self._ready.clear()
        self._out.clear()
        self._position = self._committed
        self.reducer.reset(self._committed_floor)

    # -- reading and reducing

    async def _pump(self, wanted: int) -> None:
        inner = self.inner
        while inner.unread > 0 and len(self._ready) < max(wanted, 1) and not self._woken:
            await inner.wait(READ_RECORDS, max_wait=0)  # fills the spool reader's read-ahead, off the loop
            if not self._take(inner.read(READ_RECORDS)):
                break
            await asyncio.sleep(0)
        self._close_due()

    def _pump_now(self) -> None:
        while self.inner.unread > 0 and self._take(self.inner.read(READ_RECORDS)):
            pass
        self._close_due()

    def _take(self, batch: Batch) -> bool:
        start = self._position
        self._position += len(batch.records)
        out: list[Emitted] = []
        self.reducer.feed(batch.records, start, out)
        if self._eager:
            self.inner.commit(batch)
            self._committed = self._position
        else:
            self._read.append((self._position, Batch([], batch.end)))  # only its end is needed to commit it
        self.stats.values_in += sum(len(record.fields) for record in batch.records)
        self.stats.late_records = self.reducer.late
        self._ready.extend(out)
        if self._eager and len(self._ready) > MAX_READY:  # the output is down for long: the oldest go, counted
            for _ in range(len(self._ready) - MAX_READY):
                self._ready.popleft()
                self._dropped += 1
        return bool(batch.records)

    def _close_due(self) -> None:
        if self.inner.unread == 0:  # everything buffered so far was read: a window past its time may close
            out: list[Emitted] = []
            self.reducer.close_due(time.time_ns(), self._position, out)
            self._ready.extend(out)
        if not self._ready and not self._out:  # nothing to deliver: let the buffer go of what is not held
            held = self.reducer.hold()
            self._commit_inner(self._position if held is None else held, self.reducer.floor)

    def _commit_inner(self, position: int, floor: int | None) -> None:
        if floor is not None and floor != self._saved_floor:
            self._save_floor(floor)
        self._committed_floor = floor
        last: Batch | None = None
        while self._read and self._read[0][0] <= position:
            self._committed, last = self._read.popleft()
        if last is not None:
            self.inner.commit(last)

    def _save_floor(self, floor: int) -> None:
        self._saved_floor = floor
        if self._floor_path is None:
            return
        temporary = self._floor_path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps({"version": 1, "floor_ns": floor}))
            os.replace(temporary, self._floor_path)
        except OSError as error:
            log.error("aggregate_floor_not_saved", output=self.name, error=str(error))


def load_floor(path: Path) -> int | None:
    """The floor saved by a previous run, or None (none saved, or unreadable: logged, and windows are then
    only as exact as the cursor; InfluxDB overwrites a window written again with the same values)."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FLOOR_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        log.error("aggregate_floor_unreadable", path=str(path), error=str(error))
        return None
    try:
        document = json.loads(data) if len(data) <= MAX_FLOOR_BYTES else None
        floor = document.get("floor_ns") if isinstance(document, dict) else None
    except ValueError:
        floor = None
    if type(floor) is not int or floor < 0:
        log.error("aggregate_floor_unreadable", path=str(path), error="not a floor document")
        return None
    return floor


def reduce_source(
    inner: BatchSource,
    config: OutputConfig,
    stats: OutputStats,
    spool_dir: Path | None,
    previous: ReducedSource | None = None,
) -> BatchSource:
    """``inner`` with the output's reduction (``deadband:`` or ``aggregate:``), or ``inner`` itself if it has none.

    ``previous``: the source this one replaces (a reload), whose floor carries over when there is no spool.
    """
    if config.aggregate is not None:
        path = None
        floor = previous.committed_floor if previous is not None else None
        if spool_dir is not None:
            path = spool_dir / FLOOR_DIR / f"{inner.name}.json"
            try:
                path.parent.mkdir(exist_ok=True)
            except OSError as error:
                log.error("aggregate_floor_not_saved", output=inner.name, error=str(error))
            floor = load_floor(path)
        return ReducedSource(inner, Aggregate(config.aggregate, floor), stats, path, eager=spool_dir is None)
    if config.deadband is not None:
        return ReducedSource(inner, Deadband(config.deadband), stats, None)
    return inner
