"""Files of a rig's reliability state: ``state.json`` (replaced atomically) and ``journal.jsonl`` (append-only).

Layout under the gateway's state folder::

    <state_dir>/control.sock          the local control channel (edge_daq.reliability.control)
    <state_dir>/<rig>/state.json      stress clock, test, DUT states; rewritten at each heartbeat
    <state_dir>/<rig>/journal.jsonl   every event, one JSON object per line, never rewritten
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
JOURNAL_FILE = "journal.jsonl"
STATE_VERSION = 1


def rig_folder(state_dir: Path, rig: str) -> Path:
    return state_dir / rig


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write, fsync, rename over the old file, fsync the folder: a crash leaves the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as stream:
        json.dump(data, stream, separators=(",", ":"), sort_keys=True)
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


class Journal:
    """The append-only event journal of one rig: each event is one line, flushed and fsynced.

    The file is opened for each event (events are rare), so no handle outlives a write.
    """

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / JOURNAL_FILE

    def append(self, event: Mapping[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(event, separators=(",", ":"), default=str) + "\n")
            stream.flush()
            os.fsync(stream.fileno())


def read_journal(state_dir: Path, rig: str) -> Iterator[dict[str, Any]]:
    path = rig_folder(state_dir, rig) / JOURNAL_FILE
    if not path.exists():
        return
    with path.open(encoding="utf-8") as stream:
        for line in stream:
            if line.strip():
                yield json.loads(line)
