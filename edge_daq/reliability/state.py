"""The typed ``state.json`` of a rig, shared by the engine and ``edge-daq test``/``life``/``report``.

Version 1 is the format of every release so far (``tests/fixtures/reliability-state-v1/`` keeps one written
by the release before these types): the types read it and write it back unchanged, key for key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_daq.reliability.enums import TestState
from edge_daq.reliability.failures import DutState
from edge_daq.reliability.journal import STATE_FILE, STATE_VERSION, read_state, rig_folder
from edge_daq.reliability.stress import StressState


@dataclass(slots=True)
class TestRun:
    """The rig's current (or last) test."""

    __test__ = False  # not a pytest test class

    id: str
    kind: str
    state: TestState
    started_ns: int
    stopped_ns: int | None = None
    readouts: list[dict[str, Any]] = field(default_factory=list)
    """Readouts of this test, oldest first; the last is under way while it has no ``ended_ns``."""

    @property
    def readout(self) -> dict[str, Any] | None:
        """The readout under way (the DUTs are out of the chamber), if any."""
        return self.readouts[-1] if self.readouts and self.readouts[-1].get("ended_ns") is None else None

    @property
    def active(self) -> bool:
        """Running or paused: the test is under way."""
        return self.state is not TestState.STOPPED

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "state": str(self.state),
            "started_ns": self.started_ns,
        }
        if self.stopped_ns is not None:  # absent until the test stops, as earlier releases wrote it
            data["stopped_ns"] = self.stopped_ns
        if self.readouts:  # absent until the first readout
            data["readouts"] = self.readouts
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TestRun:
        stopped = data.get("stopped_ns")
        return cls(
            id=str(data["id"]),
            kind=str(data["kind"]),
            state=TestState(data["state"]),
            started_ns=int(data["started_ns"]),
            stopped_ns=None if stopped is None else int(stopped),
            readouts=[dict(readout) for readout in data.get("readouts", [])],
        )


@dataclass(slots=True)
class RigState:
    """Everything persisted of one rig: its test, stress clock and DUTs."""

    rig: str
    config_hash: str | None = None
    heartbeat_ns: int | None = None
    test: TestRun | None = None
    stress: StressState = field(default_factory=StressState)
    duts: dict[str, DutState] = field(default_factory=dict)
    version: int = STATE_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "rig": self.rig,
            "heartbeat_ns": self.heartbeat_ns,
            "config_hash": self.config_hash,
            "test": None if self.test is None else self.test.to_json(),
            "stress": self.stress.to_json(),
            "duts": {serial: dut.to_json() for serial, dut in self.duts.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RigState:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unknown state version {data.get('version')!r} (this release reads {STATE_VERSION})")
        test = data.get("test")
        return cls(
            rig=str(data["rig"]),
            config_hash=data.get("config_hash"),
            heartbeat_ns=data.get("heartbeat_ns"),
            test=None if test is None else TestRun.from_json(test),
            stress=StressState.from_json(data["stress"]),
            duts={str(serial): DutState.from_json(dut) for serial, dut in data["duts"].items()},
        )


def load_state(state_dir: Path, rig: str) -> RigState | None:
    """The rig's saved state (None if it has none); ValueError naming the file if it cannot be read."""
    data = read_state(state_dir, rig)
    if data is None:
        return None
    try:
        return RigState.from_json(data)
    except (KeyError, TypeError, ValueError, IndexError) as error:
        path = rig_folder(state_dir, rig) / STATE_FILE
        raise ValueError(f"{path}: not a reliability state: {type(error).__name__}: {error}") from error
