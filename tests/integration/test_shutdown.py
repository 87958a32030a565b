"""A clean stop keeps the poll in flight: it gets its reply, its record is spooled and delivered, and no new poll
starts. The scheduler with scripted instruments, then SIGTERM to the real daemon process polling a real socket."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edge_daq.config.loader import load_config
from edge_daq.daemon import Daemon
from edge_daq.drivers.base import Instrument, InstrumentConfig, Link, PollResult
from edge_daq.record import Record
from edge_daq.scheduling import STOP_GRACE_TIMEOUTS, LinkScheduler, RecordBuilder, ScheduledInstrument
from edge_daq.stats import InstrumentStats
from tests.servers import free_port

# --- the scheduler alone ----------------------------------------------------------------------------------------


class OpenLink(Link):
    def __init__(self) -> None:
        self._open = False
        self.closed = 0

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False
        self.closed += 1

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def describe(self) -> str:
        return "scripted://shutdown"


class SlowInstrument(Instrument[InstrumentConfig, OpenLink]):
    """Answers each poll after ``reply_delay`` seconds; ``started`` is set while a poll waits for its reply."""

    def __init__(self, config: InstrumentConfig, reply_delay: float) -> None:
        super().__init__(config)
        self.reply_delay = reply_delay
        self.polls = 0
        self.started = asyncio.Event()

    async def poll(self, link: OpenLink) -> PollResult:
        self.polls += 1
        self.started.set()
        await asyncio.sleep(self.reply_delay)
        self.started.clear()
        return PollResult({"n": self.polls})


def scheduler_for(instrument: SlowInstrument, records: list[Record]) -> LinkScheduler:
    item = ScheduledInstrument(
        instrument=instrument,  # type: ignore[arg-type]
        builder=RecordBuilder(instrument.config, {"gateway": "gw", "rig": "r"}),
        stats=InstrumentStats(rig="r", instrument=instrument.config.name, link="scripted://shutdown"),
    )
    return LinkScheduler(link=OpenLink(), instruments=[item], emit=records.append)


def measured(records: list[Record]) -> list[int]:
    return [int(record.fields["n"]) for record in records if "n" in record.fields]


async def test_a_stop_during_a_poll_waits_for_its_reply_and_emits_its_record() -> None:
    records: list[Record] = []
    instrument = SlowInstrument(InstrumentConfig(name="i", driver="x", interval=0.05, timeout=1.0), reply_delay=0.3)
    scheduler = scheduler_for(instrument, records)
    task = asyncio.create_task(scheduler.run())
    await asyncio.wait_for(instrument.started.wait(), 2)
    scheduler.request_stop()
    await asyncio.wait_for(task, 2)  # ends by itself, not cancelled
    assert measured(records) == [1]  # the poll in flight, and no other after the request
    assert instrument.polls == 1
    assert scheduler.link.is_open is False
    assert scheduler.instruments[0].stats.failures == 0


async def test_a_stop_between_polls_ends_at_once() -> None:
    records: list[Record] = []
    instrument = SlowInstrument(InstrumentConfig(name="i", driver="x", interval=5.0, timeout=1.0), reply_delay=0.0)
    scheduler = scheduler_for(instrument, records)
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(0.1)  # the first poll is due at once, the next in 5 s
    started = time.monotonic()
    scheduler.request_stop()
    await asyncio.wait_for(task, 2)
    assert time.monotonic() - started < 0.5
    assert measured(records) == [1]


async def test_a_poll_that_outlasts_the_stop_grace_is_abandoned_and_counted() -> None:
    records: list[Record] = []
    timeout = 0.1
    instrument = SlowInstrument(InstrumentConfig(name="i", driver="x", interval=1.0, timeout=timeout), 30.0)
    scheduler = scheduler_for(instrument, records)
    task = asyncio.create_task(scheduler.run())
    await asyncio.wait_for(instrument.started.wait(), 2)
    started = time.monotonic()
    scheduler.request_stop()
    await asyncio.wait_for(task, 2)
    elapsed = time.monotonic() - started
    assert STOP_GRACE_TIMEOUTS * timeout - 0.02 <= elapsed < STOP_GRACE_TIMEOUTS * timeout + 0.5
    assert measured(records) == []
    assert scheduler.instruments[0].stats.failures == 1  # no record without a count
    assert scheduler.link.is_open is False


async def test_a_stop_before_the_run_starts_polls_nothing() -> None:
    records: list[Record] = []
    instrument = SlowInstrument(InstrumentConfig(name="i", driver="x", interval=0.05, timeout=1.0), reply_delay=0.0)
    scheduler = scheduler_for(instrument, records)
    scheduler.request_stop()
    await asyncio.wait_for(scheduler.run(), 1)
    assert instrument.polls == 0


# --- SIGTERM to the daemon process ------------------------------------------------------------------------------

REPLY_DELAY = 0.2  # seconds the device takes to answer: long enough to stop the daemon while a poll waits
POLL_INTERVAL = "500ms"


@dataclass
class SequenceServer:
    """A Modbus TCP device whose holding register 0 answers 1, 2, 3, ... one number per reply, late."""

    port: int = 0
    answered: list[int] = field(default_factory=list)  # sequence numbers whose reply reached the socket
    received: list[float] = field(default_factory=list)  # monotonic times at which requests arrived
    waiting: asyncio.Event = field(default_factory=asyncio.Event)  # a request is waiting for its reply


@asynccontextmanager
async def sequence_server() -> AsyncIterator[SequenceServer]:
    state = SequenceServer()
    counter = iter(range(1, 65536))
    handlers: list[asyncio.Task[object]] = []
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        handlers.append(handler)
        writers.append(writer)
        try:
            while True:
                request = await reader.readexactly(12)
                state.received.append(time.monotonic())
                transaction, _, _, unit, function, _, count = struct.unpack(">HHHBBHH", request)
                assert (function, count) == (3, 1)
                state.waiting.set()
                await asyncio.sleep(REPLY_DELAY)
                number = next(counter)
                pdu = struct.pack(">BBH", 3, 2, number)
                writer.write(struct.pack(">HHHB", transaction, 0, len(pdu) + 1, unit) + pdu)
                await writer.drain()
                state.answered.append(number)
                state.waiting.clear()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            state.waiting.clear()
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for writer in writers:
            writer.close()  # ends each handler's read (asyncio's server logs an error for a cancelled one)
        if handlers:
            await asyncio.wait(handlers, timeout=REPLY_DELAY + 1)
        await server.wait_closed()


def write_config(folder: Path, device_port: int) -> Path:
    rig = {
        "rig": "stop-rig",
        "instruments": [
            {
                "name": "counter",
                "driver": "modbus-tcp",
                "host": "127.0.0.1",
                "port": device_port,
                "unit": 1,
                "interval": POLL_INTERVAL,
                "timeout": "1s",
                "points": [{"name": "seq", "table": "holding", "address": 0, "type": "uint16"}],
            }
        ],
    }
    (folder / "rigs.d").mkdir(exist_ok=True)
    (folder / "rigs.d" / "stop-rig.yaml").write_text(yaml.safe_dump(rig))
    gateway = {
        "gateway": "gw-stop",
        "rigs": "rigs.d/",
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "buffer": {"spool_dir": str(folder / "spool")},
        "outputs": {"file": {"dir": str(folder / "archive"), "flush_interval": "100ms"}},
        "log": {"level": "warning"},
    }
    path = folder / "edge-daq.yaml"
    path.write_text(yaml.safe_dump(gateway))
    return path


def delivered_sequence_numbers(archive: Path) -> list[int]:
    numbers = []
    for path in sorted(archive.glob("*.lp")):
        numbers += [int(found) for found in re.findall(rb"^counter,.* seq=(\d+)i ", path.read_bytes(), re.MULTILINE)]
    return numbers


async def stop_while_a_poll_waits(config: Path, device: SequenceServer, rng: random.Random) -> tuple[float, float]:
    """Start the daemon, let it poll a few times, SIGTERM it while a request waits for its reply; when the signal
    was sent and when the daemon had exited."""
    daemon = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_daq",
        "run",
        "-c",
        str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"},
    )
    try:
        answered = len(device.answered)
        async with asyncio.timeout(30):
            while len(device.answered) < answered + 2:
                await asyncio.sleep(0.02)
            device.waiting.clear()
            await device.waiting.wait()
        await asyncio.sleep(rng.uniform(0.0, REPLY_DELAY * 0.6))  # anywhere in the wait for the reply
        stopped_at = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        _, log = await asyncio.wait_for(daemon.communicate(), 60)
        exited_at = time.monotonic()
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.wait()
    assert daemon.returncode == 0, log.decode()[-2000:]
    assert b"Traceback" not in log, log.decode()[-2000:]
    return stopped_at, exited_at


STOPS = 6


async def test_sigterm_while_polls_wait_for_their_replies_loses_no_record(tmp_path: Path) -> None:
    rng = random.Random(12)
    async with sequence_server() as device:
        config_path = write_config(tmp_path, device.port)
        stops = [await stop_while_a_poll_waits(config_path, device, rng) for _ in range(STOPS)]
        delivered = set(delivered_sequence_numbers(tmp_path / "archive"))
    lost = sorted(set(device.answered) - delivered)
    print(f"stops: {STOPS}, answered: {len(device.answered)}, delivered: {len(delivered)}, lost: {len(lost)}")
    assert lost == [], f"answered but never delivered: {lost}"
    assert delivered == set(device.answered)
    # No new poll starts after the request (the next one was due 300 ms after the reply in flight).
    late_requests = [t for t in device.received for stopped, exited in stops if stopped < t < exited]
    assert late_requests == []


async def test_a_reload_that_restarts_a_link_keeps_its_poll_in_flight(tmp_path: Path) -> None:
    async with sequence_server() as device:
        config_path = write_config(tmp_path, device.port)
        daemon = Daemon(load_config(config_path))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        try:
            await asyncio.wait_for(daemon.running.wait(), 10)
            for interval in ("400ms", "300ms"):  # a changed instrument: its link is stopped and started again
                async with asyncio.timeout(10):
                    device.waiting.clear()
                    await device.waiting.wait()
                rig = tmp_path / "rigs.d" / "stop-rig.yaml"
                rig.write_text(rig.read_text().replace(f"interval: {POLL_INTERVAL}", f"interval: {interval}"))
                report = await daemon.reload(load_config(config_path))
                assert (report.links_stopped, report.links_started) == (1, 1)
                rig.write_text(rig.read_text().replace(f"interval: {interval}", f"interval: {POLL_INTERVAL}"))
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
        answered = set(device.answered)
    assert len(device.received) == len(answered)  # no poll was cut off: each request sent got its reply
    assert set(delivered_sequence_numbers(tmp_path / "archive")) == answered
