"""The states a test and a DUT can be in, as ``state.json``, the control channel and the journal spell them.

String enums: each member is its own JSON spelling, so files of earlier releases load unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class TestState(StrEnum):
    __test__ = False  # not a pytest test class, whatever the name says

    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


class DutStatus(StrEnum):
    ACTIVE = "active"
    FAILED = "failed"
    REMOVED = "removed"
