"""The typed state: files of the previous release load; state and journal are written off the event loop,
coalesced, one write at a time, and the last state is on disk when the engine's run returns."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from edge_daq.buffer.ring import RingBuffer
from edge_daq.config.loader import load_config
from edge_daq.record import Record, Series
from edge_daq.reliability.engine import ReliabilityEngine
from edge_daq.reliability.enums import DutStatus, TestState
from edge_daq.reliability.journal import BackgroundStore, read_journal, read_state
from edge_daq.reliability.life import COLUMNS, life_table
from edge_daq.reliability.state import RigState, load_state
from tests.unit.test_reliability_config import RIG, write

FIXTURE = Path(__file__).parents[1] / "fixtures" / "reliability-state-v1"


@pytest.fixture
def previous_release(tmp_path: Path) -> Path:
    """A state folder as the previous release left it."""
    state_dir = tmp_path / "state"
    shutil.copytree(FIXTURE, state_dir / "r1", ignore=shutil.ignore_patterns("*.md", "*.csv"))
    return state_dir


def test_a_state_of_the_previous_release_loads_typed_and_writes_back_unchanged(previous_release: Path) -> None:
    state = load_state(previous_release, "r1")
    assert state is not None
    assert state.test is not None
    assert state.test.state is TestState.RUNNING
    assert (state.test.id, state.test.kind, state.test.stopped_ns) == ("T1", "HTOL", None)
    assert {serial: dut.status for serial, dut in state.duts.items()} == {
        "U1": DutStatus.REMOVED,
        "U3": DutStatus.FAILED,
    }
    failure = state.duts["U3"].failure
    assert failure is not None
    assert (failure.rule, failure.mode, failure.value, failure.events) == ("drift", "leakage", 60.0, 2)
    assert (failure.last_good_ns, failure.before["i"], failure.after["i"]) == (1_700_000_004_000_000_000, 45.0, 60.0)
    assert state.duts["U1"].failure is None
    assert state.stress.stress_s == 11.0
    assert [e.reason for e in state.stress.exclusions] == ["no data yet", "bias off", "test paused"]
    # Key for key what was read: nothing renamed, nothing lost, nothing added.
    assert state.to_json() == read_state(previous_release, "r1")


def test_the_life_table_of_a_previous_release_state_is_the_one_that_release_printed(previous_release: Path) -> None:
    import csv

    state = load_state(previous_release, "r1")
    assert state is not None
    with (FIXTURE / "life.csv").open(newline="") as stream:
        expected = list(csv.DictReader(stream))
    rows = [{key: "" if value is None else str(value) for key, value in zip(COLUMNS, row_values(row), strict=True)}
            for row in life_table(state)]  # fmt: skip
    # Columns added since keep the earlier ones in place: that release's columns are its values, in order.
    assert list(COLUMNS[: len(expected[0])]) == list(expected[0])
    assert [{key: row[key] for key in expected[0]} for row in rows] == expected


def row_values(row: Any) -> list[Any]:
    return [getattr(row, column) for column in COLUMNS]


def test_an_unknown_state_is_refused_with_its_file(tmp_path: Path) -> None:
    folder = tmp_path / "r1"
    folder.mkdir()
    data = json.loads((FIXTURE / "state.json").read_text())
    data["duts"]["U1"]["status"] = "exploded"
    (folder / "state.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"r1/state.json: not a reliability state: .*exploded"):
        load_state(tmp_path, "r1")
    assert RigState.from_json({**data, "duts": {}}).duts == {}


async def test_saves_are_coalesced_and_fsynced_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.current_thread()
    fsync_threads: list[threading.Thread] = []
    release = threading.Event()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # the real fsync, held until released, noting the thread it ran on
        fsync_threads.append(threading.current_thread())
        release.wait(5)
        real_fsync(fd)

    monkeypatch.setattr("edge_daq.reliability.journal.os.fsync", fsync)
    store = BackgroundStore()
    writer = asyncio.create_task(store.run())
    path = tmp_path / "r1" / "state.json"
    try:
        store.save(path, lambda: {"n": 0})
        await asyncio.sleep(0.05)  # the first write is under way, held in fsync
        for n in range(1, 101):  # the loop goes on meanwhile: saves only replace the pending state
            store.save(path, functools.partial(dict, n=n))
            store.append(tmp_path / "r1" / "journal.jsonl", {"event": "note", "n": n})
            await asyncio.sleep(0)
        release.set()
        for _ in range(100):
            if not store.pending and store.writes >= 2:
                break
            await asyncio.sleep(0.02)
    finally:
        writer.cancel()
        await store.close()
    assert fsync_threads
    assert loop_thread not in fsync_threads
    assert store.writes == 2  # the first, then one for all 100 saves
    assert json.loads(path.read_text()) == {"n": 100}
    assert [event["n"] for event in read_journal(tmp_path, "r1")] == list(range(1, 101))


async def test_the_last_state_is_on_disk_when_the_run_returns_even_if_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsync_threads: list[threading.Thread] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        fsync_threads.append(threading.current_thread())
        real_fsync(fd)

    monkeypatch.setattr("edge_daq.reliability.journal.os.fsync", fsync)
    config = load_config(write(tmp_path, RIG))
    ring = RingBuffer(10_000)
    engine = ReliabilityEngine(
        rigs=config.rigs,
        gateway=config.gateway,
        config_hash=config.hash,
        reader=ring.reader("reliability"),
        emit=ring.append,
        state_dir=tmp_path / "state",
        heartbeat=3600.0,  # no heartbeat save during the test: only the last one counts
    )
    stop = asyncio.Event()
    run = asyncio.create_task(engine.run(stop))
    base = {"rig": "r1", "gateway": "gw", "instrument": "chamber"}
    await asyncio.sleep(0.1)
    rig = engine.rigs["r1"]
    assert rig.command({"command": "test", "action": "pause"})["ok"]
    ring.append(Record(Series("chamber", base), {"temp_pv": 125.0}, 1))
    await asyncio.sleep(0.1)
    assert rig.command({"command": "note", "text": "the last word"})["ok"]
    run.cancel()  # not even a stop: a cancelled engine still writes what it has
    with pytest.raises(asyncio.CancelledError):
        await run
    state = load_state(tmp_path / "state", "r1")
    assert state is not None
    assert state.test is not None
    assert state.test.state is TestState.PAUSED
    assert [event["event"] for event in read_journal(tmp_path / "state", "r1")][-1] == "note"
    # Start, heartbeat-less run, commands and the last save: every fsync in the worker, none on the loop.
    assert fsync_threads
    assert threading.current_thread() not in fsync_threads
