"""Files of a rig's reliability state: ``state.json`` (replaced atomically) and ``journal.jsonl`` (append-only).

Layout under the gateway's state folder::

    <state_dir>/control.sock          the local control channel (edge_daq.reliability.control)
    <state_dir>/<rig>/state.json      stress clock, test, DUT states; rewritten at each heartbeat
    <state_dir>/<rig>/journal.jsonl   every event, one JSON object per line, never rewritten

Writing goes through a :class:`StateStore`: :class:`DirectStore` writes at once (tools, tests);
:class:`BackgroundStore` is the daemon's, which fsyncs in a worker thread so the event loop never waits on
the disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import structlog

log = structlog.get_logger("edge_daq.reliability")

STATE_FILE = "state.json"
JOURNAL_FILE = "journal.jsonl"
STATE_VERSION = 1


def rig_folder(state_dir: Path, rig: str) -> Path:
    return state_dir / rig


def encode_state(data: Mapping[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def encode_event(event: Mapping[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), default=str) + "\n"


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    write_text_atomic(path, encode_state(data))


def write_text_atomic(path: Path, text: str) -> None:
    """Write, fsync, rename over the old file, fsync the folder: a crash leaves the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def read_state(state_dir: Path, rig: str) -> dict[str, Any] | None:
    path = rig_folder(state_dir, rig) / STATE_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    if data.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: unknown state version {data.get('version')!r}")
    return data


def append_lines(path: Path, lines: list[str]) -> None:
    """Append journal lines, flushed and fsynced (the file is opened per write: no handle outlives it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as stream:
        stream.write("".join(lines))
        stream.flush()
        os.fsync(stream.fileno())


Snapshot = Callable[[], Mapping[str, Any]]
"""Builds a state to save; called on the event loop (the state it reads changes there) when it is written."""


class StateStore(Protocol):
    """Where a rig's engine puts its state and journal."""

    def save(self, path: Path, snapshot: Snapshot) -> None: ...

    def append(self, path: Path, event: Mapping[str, Any]) -> None: ...


class DirectStore:
    """Writes at once, on the caller's thread: for tools and tests, never on the daemon's event loop."""

    def save(self, path: Path, snapshot: Snapshot) -> None:
        write_json_atomic(path, snapshot())

    def append(self, path: Path, event: Mapping[str, Any]) -> None:
        append_lines(path, [encode_event(event)])


class BackgroundStore:
    """Writes in a worker thread, one write in flight: states coalesced (the latest of each file), journal
    lines in order, journal before state (a state never refers to an event its journal lacks).

    :meth:`run` does the writing and raises the first write error, so the engine's supervisor logs, counts
    and restarts it; :meth:`close` writes what is left, also when the run was cancelled.
    """

    def __init__(self) -> None:
        self._states: dict[Path, Snapshot] = {}
        self._lines: dict[Path, list[str]] = {}
        self._wake = asyncio.Event()
        self._writing = threading.Lock()  # the worker's write and a last write at close never interleave
        self._generation = 0
        self._written = 0
        # One worker thread: one write in flight, in order; its own, so a write cancelled before it started
        # is known not to have happened (concurrent.futures.Future.cancel says so).
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="reliability-state")
        self._inflight: concurrent.futures.Future[None] | None = None
        self._inflight_lines: dict[Path, list[str]] = {}
        self.writes = 0
        """Writes done (each of some journal lines and states): fewer than saves when they were coalesced."""

    def save(self, path: Path, snapshot: Snapshot) -> None:
        self._states[path] = snapshot
        self._wake.set()

    def append(self, path: Path, event: Mapping[str, Any]) -> None:
        self._lines.setdefault(path, []).append(encode_event(event))  # encoded now: the event's dicts may change
        self._wake.set()

    @property
    def pending(self) -> bool:
        return bool(self._states or self._lines)

    def _take(self) -> tuple[int, dict[Path, str], dict[Path, list[str]]]:
        states = {path: encode_state(snapshot()) for path, snapshot in self._states.items()}
        lines, self._states, self._lines = self._lines, {}, {}
        self._generation += 1
        return self._generation, states, lines

    def _write(self, generation: int, states: Mapping[Path, str], lines: Mapping[Path, list[str]]) -> None:
        with self._writing:
            for path, batch in lines.items():
                append_lines(path, batch)
            if generation > self._written:  # never an older state over a newer one
                for path, text in states.items():
                    write_text_atomic(path, text)
                self._written = generation
            self.writes += 1

    async def _write_pending(self) -> None:
        generation, states, lines = self._take()
        self._inflight_lines = lines
        self._inflight = self._worker.submit(self._write, generation, states, lines)
        # Shielded: a cancelled engine still lets the write under way finish (close waits for it).
        await asyncio.shield(asyncio.wrap_future(self._inflight))
        self._inflight = None

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.pending:
                await self._write_pending()

    async def close(self) -> None:
        """Write what is still pending; if cancelled meanwhile, write it here and now (only ever at the end)."""
        try:
            if self._inflight is not None:
                await asyncio.shield(asyncio.wrap_future(self._inflight))
                self._inflight = None
            if self.pending:
                await self._write_pending()
        finally:
            inflight = self._inflight
            if inflight is not None and inflight.cancel():  # never started: its lines go first
                for path, batch in self._inflight_lines.items():
                    self._lines[path] = batch + self._lines.get(path, [])
            if self.pending:
                self._write(*self._take())
            self._worker.shutdown(wait=False)


def read_journal(state_dir: Path, rig: str) -> Iterator[dict[str, Any]]:
    path = rig_folder(state_dir, rig) / JOURNAL_FILE
    if not path.exists():
        return
    with path.open(encoding="utf-8") as stream:
        for line in stream:
            if line.strip():
                yield json.loads(line)
