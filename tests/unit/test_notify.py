"""sd_notify against real AF_UNIX datagram sockets (a path and an abstract name), exact messages."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from edge_daq.service.notify import AcquisitionProgress, Notifier, StatusLine, watchdog_loop
from edge_daq.stats import InstrumentStats, OutputStats, PipelineStats


class Receiver:
    """The systemd side: a bound datagram socket."""

    def __init__(self, sock: socket.socket, notify_socket: str) -> None:
        self.sock = sock
        self.notify_socket = notify_socket

    def recv(self, timeout: float = 2.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    async def arecv(self) -> str:
        async with asyncio.timeout(2.0):
            return (await asyncio.get_running_loop().sock_recv(self.sock, 4096)).decode()

    def assert_empty(self) -> None:
        self.sock.settimeout(0.05)
        with pytest.raises(TimeoutError):
            self.sock.recv(4096)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    # Short folder: an AF_UNIX path is limited to 107 bytes, and pytest's tmp_path can be longer.
    folder = tempfile.mkdtemp(prefix="sdn-")
    path = os.path.join(folder, "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        yield Receiver(sock, path)
    shutil.rmtree(folder)


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"edge-daq-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield Receiver(sock, "@" + name)


def test_messages_are_exact(receiver: Receiver) -> None:
    with Notifier({"NOTIFY_SOCKET": receiver.notify_socket}) as notifier:
        assert notifier.enabled
        assert notifier.ready("instruments 0/2 up")
        assert receiver.recv() == "READY=1\nSTATUS=instruments 0/2 up"
        assert notifier.ready()
        assert receiver.recv() == "READY=1"
        assert notifier.status("line one\nline two")
        assert receiver.recv() == "STATUS=line one line two"
        assert notifier.watchdog()
        assert receiver.recv() == "WATCHDOG=1"
        assert notifier.stopping("draining")
        assert receiver.recv() == "STOPPING=1\nSTATUS=draining"
        assert notifier.extend_timeout(20_000_000)
        assert receiver.recv() == "EXTEND_TIMEOUT_USEC=20000000"


def test_reloading_carries_the_monotonic_clock(receiver: Receiver) -> None:
    with Notifier({"NOTIFY_SOCKET": receiver.notify_socket}) as notifier:
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert notifier.reloading("reloading configuration")
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second, third = receiver.recv().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    assert third == "STATUS=reloading configuration"


def test_abstract_socket(abstract_receiver: Receiver) -> None:
    with Notifier({"NOTIFY_SOCKET": abstract_receiver.notify_socket}) as notifier:
        assert notifier.ready()
    assert abstract_receiver.recv() == "READY=1"


def test_without_notify_socket_nothing_is_sent() -> None:
    with Notifier({}) as notifier:
        assert not notifier.enabled
        assert not notifier.ready()
        assert notifier.watchdog_interval() is None


def test_a_send_failure_is_logged_once_and_never_raised(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs, Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}) as notifier:
        assert not notifier.ready()
        assert not notifier.watchdog()
        assert not notifier.status("x")
    assert [entry["event"] for entry in logs] == ["sd_notify_failed"]


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"}
    assert Notifier(env).watchdog_interval() == 15.0
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval() == 15.0
    # Meant for another process (this one inherited the environment): no pings.
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_interval() is None
    assert Notifier({**env, "WATCHDOG_USEC": "0"}).watchdog_interval() is None
    assert Notifier({**env, "WATCHDOG_USEC": "nonsense"}).watchdog_interval() is None
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval() is None


async def test_watchdog_is_withheld_while_there_is_no_progress(receiver: Receiver) -> None:
    receiver.sock.setblocking(False)
    progress = iter([True, False, False, True])
    statuses = iter(["s1", "s2", "s3", "s4"])
    # 40 ms watchdog: a ping every 20 ms.
    env = {"NOTIFY_SOCKET": receiver.notify_socket, "WATCHDOG_USEC": "40000"}
    with structlog.testing.capture_logs() as logs, Notifier(env) as notifier:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(
                watchdog_loop(notifier, lambda: next(progress), status=lambda: next(statuses)), name="watchdog"
            )
            received = [await receiver.arecv() for _ in range(4)]
            task.cancel()
    assert received == [
        "WATCHDOG=1\nSTATUS=s1",
        "STATUS=stalled, watchdog withheld: s2",
        "STATUS=stalled, watchdog withheld: s3",
        "WATCHDOG=1\nSTATUS=s4",
    ]
    assert [entry["event"] for entry in logs] == ["watchdog_withheld", "watchdog_resumed"]


async def test_watchdog_loop_without_watchdog_sends_status_only(receiver: Receiver) -> None:
    receiver.sock.setblocking(False)
    with Notifier({"NOTIFY_SOCKET": receiver.notify_socket}) as notifier:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(
                watchdog_loop(notifier, lambda: True, status=lambda: "fine", status_interval=0.01), name="watchdog"
            )
            assert await receiver.arecv() == "STATUS=fine"
            assert await receiver.arecv() == "STATUS=fine"
            task.cancel()


async def test_watchdog_loop_returns_when_there_is_nothing_to_send(receiver: Receiver) -> None:
    with Notifier({}) as outside_systemd:
        await asyncio.wait_for(watchdog_loop(outside_systemd, lambda: True, status=lambda: "x"), 1)
    with Notifier({"NOTIFY_SOCKET": receiver.notify_socket}) as no_watchdog:
        await asyncio.wait_for(watchdog_loop(no_watchdog, lambda: True), 1)
    receiver.assert_empty()


def _scheduler(describe: str, *dues: float) -> Any:
    return SimpleNamespace(
        link=SimpleNamespace(describe=describe), instruments=[SimpleNamespace(next_due=due) for due in dues]
    )


def test_acquisition_progress_detects_a_stalled_link() -> None:
    now = 1000.0
    fast = _scheduler("tcp 10.0.4.17:502", 999.0, 1001.0)
    slow = _scheduler("serial /dev/ttyUSB0", 950.0, 2000.0)
    not_started = _scheduler("tcp 10.0.4.18:502", 0.0)
    schedulers = [fast, slow, not_started]
    progress = AcquisitionProgress(lambda: schedulers, stall_after=60.0, clock=lambda: now)
    with structlog.testing.capture_logs() as logs:
        assert progress()
        assert progress.reason == ""
        now = 1011.0  # slow's oldest due time is 61 s old: a poll that never ended
        assert not progress()
        assert progress.reason == "link serial /dev/ttyUSB0 is 61 s behind its schedule"
        now = 1020.0
        assert not progress()
        slow.instruments[0].next_due = 1021.0
        assert progress()
        assert progress.reason == ""
    assert [(entry["event"], entry.get("link")) for entry in logs] == [
        ("acquisition_stalled", "serial /dev/ttyUSB0"),
        ("acquisition_resumed", "serial /dev/ttyUSB0"),
    ]


def test_acquisition_progress_with_no_instruments() -> None:
    assert AcquisitionProgress(list, clock=lambda: 5.0)()


def test_status_line() -> None:
    now = 100.0
    stats = PipelineStats(
        instruments=[
            InstrumentStats(rig="htol-07", instrument="chamber", link="a", polls=10, records=10),
            InstrumentStats(rig="htol-07", instrument="board", link="a", polls=10, records=5, consecutive_failures=2),
        ],
        outputs=[OutputStats(output="influxdb"), OutputStats(output="file")],
    )
    backlogs = {"influxdb": 250, "file": 3}
    line = StatusLine(stats, backlog=backlogs.__getitem__, clock=lambda: now)
    now = 104.0
    stats.instruments[0].records += 30
    stats.instruments[1].records += 20
    assert line() == "instruments 1/2 up, 12.5 records/s, backlog 250"
    now = 106.0
    stats.outputs[0].failing_since = 105.0
    assert line() == "instruments 1/2 up, 0.0 records/s, backlog 250, failing: influxdb"
    # An instrument removed at a reload takes its records with it: no negative rate.
    del stats.instruments[0]
    now = 107.0
    assert StatusLine(stats)() == "instruments 0/1 up, 0.0 records/s, failing: influxdb"
    assert line() == "instruments 0/1 up, 0.0 records/s, backlog 250, failing: influxdb"
