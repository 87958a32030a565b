"""Fault tests of the durable spool against the real InfluxDB 1.6.7 and real Modbus simulators.

Each test checks record by record what reached InfluxDB: timestamps are fixed at acquisition and unique per
series, so the set of timestamps in the database is the set of records delivered (a replayed record overwrites
itself, it cannot show twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

import simulators
from edge_daq import delivery, scheduling
from edge_daq.buffer import segment as fmt
from edge_daq.buffer.spool import core as spool_module
from edge_daq.config.loader import load_config
from edge_daq.daemon import Daemon
from edge_daq.record import Series
from tests.disks import mounted_tmpfs
from tests.servers import InfluxDBv1Server, free_port

_databases = itertools.count()
EDGE_DAQ = Path(sys.executable).with_name("edge-daq")
INTERVAL = 0.02  # 50 polls a second: enough records per fsync window to see one being lost
FSYNC_INTERVAL = 0.1


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "INITIAL_BACKOFF", 0.05)


def write_gateway(
    folder: Path,
    *,
    influx_url: str,
    database: str,
    sim_port: int,
    profile: str = "watlow-f4",
    instruments: int = 1,
    buffer: dict[str, Any] | None = None,
) -> Path:
    rig = {
        "rig": "htol-dur",
        "instruments": [
            {
                "name": f"i{n}",
                "profile": profile,
                "host": "127.0.0.1",
                "port": sim_port,
                "unit": 1,
                "interval": f"{INTERVAL}s",
                "timeout": "500ms",
                "measurement": "dut",
            }
            for n in range(instruments)
        ],
    }
    (folder / "rigs.d").mkdir(exist_ok=True)
    (folder / "rigs.d" / "htol-dur.yaml").write_text(yaml.safe_dump(rig))
    gateway = {
        "gateway": "gw-dur",
        "rigs": "rigs.d/",
        "buffer": {"spool_dir": str(folder / "spool"), "fsync_interval": f"{FSYNC_INTERVAL}s", **(buffer or {})},
        "outputs": {
            "influxdb": {
                "url": influx_url,
                "api": "v1",
                "database": database,
                "flush_interval": "100ms",
                "max_backoff": "300ms",
                "timeout": "2s",
            }
        },
        "log": {"level": "warning"},
    }
    path = folder / "edge-daq.yaml"
    path.write_text(yaml.safe_dump(gateway))
    return path


@contextlib.asynccontextmanager
async def running(gateway: Path, *, drain_timeout: float = 10) -> AsyncIterator[Daemon]:
    daemon = Daemon(load_config(gateway), drain_timeout=drain_timeout)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await asyncio.wait_for(daemon.running.wait(), 5)
        yield daemon
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def until(condition: Any, within: float = 15.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.02)


async def times_in(influxdb: InfluxDBv1Server, database: str, measurement: str) -> list[int]:
    rows = await influxdb.select(f'SELECT * FROM "{measurement}"', database=database)
    return [int(row["time"]) for row in rows]


async def all_times(influxdb: InfluxDBv1Server, database: str) -> set[tuple[str, str, str, int]]:
    """Every point of the database as (measurement, instrument, socket, time): a burn-in board gives one record
    per socket and poll (repeated channels)."""
    points: set[tuple[str, str, str, int]] = set()
    for measurement in ("dut", scheduling.STATUS_MEASUREMENT):
        rows = await influxdb.select(f'SELECT * FROM "{measurement}" GROUP BY *', database=database)
        points.update((measurement, row["instrument"], row.get("socket") or "", int(row["time"])) for row in rows)
    return points


def held_in_spool(spool_dir: Path) -> dict[Path, list[tuple[str, str, str, int, int]]]:
    """Per segment: (measurement, instrument, socket, time, end offset) of every record it holds."""
    held = {}
    for path in sorted(spool_dir.glob("*" + fmt.SEGMENT_SUFFIX)):
        chunk = fmt.read_records(
            path, fmt.HEADER_SIZE, path.stat().st_size, max_records=10**9, max_bytes=1 << 20, series={}, intern=Series
        )
        held[path] = [
            (r.measurement, r.tags["instrument"], r.tags.get("socket", ""), r.time_ns, end)
            for r, end in zip(chunk.records, chunk.ends, strict=True)
        ]
    return held


# -- (1) the database stopped for a while, then restarted


async def test_database_outage_everything_arrives_once(influxdb_v1: InfluxDBv1Server, tmp_path: Path) -> None:
    database = f"dur_outage_{next(_databases)}"
    async with simulators.serve("watlow-f4", seed=1) as sim:
        gateway = write_gateway(tmp_path, influx_url=influxdb_v1.url, database=database, sim_port=sim.port)
        try:
            async with running(gateway) as daemon:
                output = daemon.stats.outputs[0]
                await until(lambda: output.delivered >= 20)
                await asyncio.to_thread(influxdb_v1.stop)
                outage_start = daemon.ring.appended
                await asyncio.sleep(2.0)
                assert daemon.ring.appended - outage_start > 50  # acquisition went on
                assert output.pending_records > 50
                assert output.retries > 0
                assert output.oldest_pending_seconds is not None
                assert output.oldest_pending_seconds > 1.0
                await asyncio.to_thread(influxdb_v1.start)
                await until(lambda: output.pending_records == 0 and output.delivered >= daemon.ring.appended - 5)
        finally:
            if not influxdb_v1.running:
                await asyncio.to_thread(influxdb_v1.start)
    acquired = daemon.ring.appended
    stored = await all_times(influxdb_v1, database)
    assert len(stored) == acquired  # every record arrived: one point per record
    assert output.lost == 0
    assert daemon.stats.spool is not None
    assert daemon.stats.spool.dropped_records == 0
    # The daemon sent each record once (a batch is resent only if its acknowledgement was lost).
    assert acquired <= output.delivered <= acquired + 5000


# -- (2) SIGKILL during ingest, repeatedly


def _start_daemon(gateway: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([str(EDGE_DAQ), "run", "-c", str(gateway)], stdout=out, stderr=subprocess.STDOUT)


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]


async def _points(influxdb: InfluxDBv1Server, database: str) -> int:
    """Records of the "dut" measurement in the database so far; 0 until the first write created it."""
    try:
        return len(await times_in(influxdb, database, "dut"))
    except AssertionError as error:  # the query's own error: "database not found" before the first write
        if "not found" in str(error):
            return 0
        raise


async def _until_more_points(influxdb: InfluxDBv1Server, database: str, above: int, log: Path) -> None:
    deadline = time.monotonic() + 30
    while await _points(influxdb, database) <= above:
        if time.monotonic() > deadline:
            pytest.fail(f"no new record reached InfluxDB within 30 s of the start: {_tail(log)}")
        await asyncio.sleep(0.05)


async def test_sigkill_during_ingest_loses_at_most_one_fsync_window(
    influxdb_v1: InfluxDBv1Server, tmp_path: Path
) -> None:
    database = f"dur_kill_{next(_databases)}"
    sim_port = free_port()
    sim = subprocess.Popen(  # noqa: ASYNC220 - starting a child is quick; waiting for it is done in a thread
        [str(EDGE_DAQ), "simulate", "watlow-f4", "--tcp", f"127.0.0.1:{sim_port}", "--seed", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    gateway = write_gateway(tmp_path, influx_url=influxdb_v1.url, database=database, sim_port=sim_port)
    log = tmp_path / "daemon.log"
    rng = random.Random(4)
    kills: list[int] = []
    try:
        for _ in range(3):
            delivered = await _points(influxdb_v1, database)
            daemon = _start_daemon(gateway, log)
            # Once this run's records reach the database (start-up takes seconds on a loaded CI machine, so a
            # fixed sleep left some runs no time to ingest), a random moment during ingest.
            await _until_more_points(influxdb_v1, database, delivered, log)
            await asyncio.sleep(0.5 + rng.random())
            kills.append(time.time_ns())
            daemon.send_signal(signal.SIGKILL)
            await asyncio.to_thread(daemon.wait)
        delivered = await _points(influxdb_v1, database)
        daemon = _start_daemon(gateway, log)
        await _until_more_points(influxdb_v1, database, delivered, log)
        await asyncio.sleep(1.0)
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(daemon.wait, 30) == 0, log.read_text()[-3000:]
    finally:
        sim.terminate()
        sim.wait()
    times = sorted(await times_in(influxdb_v1, database, "dut"))
    assert len(times) > 100, log.read_text()[-3000:]

    windows = []
    for kill in kills:
        before = [t for t in times if t <= kill]
        assert before, "records of the run before the kill were delivered after the restart"
        windows.append((kill - before[-1]) / 1e9)
    lost_records = [int(window / INTERVAL) for window in windows]
    print(
        f"\nSIGKILL x{len(kills)}: newest record kept before each kill was {[round(w, 3) for w in windows]} s old "
        f"(at most ~{lost_records} polls of {INTERVAL} s lost; fsync window {FSYNC_INTERVAL} s)"
    )
    # What a kill can lose: the records still gathering for the next write (one fsync window), plus the poll
    # in flight and the write itself (slack for a busy CI machine).
    for window in windows:
        assert window <= FSYNC_INTERVAL + INTERVAL + 0.15
    # And nothing is lost anywhere else: every other gap between consecutive records is a poll interval or so.
    for earlier, later in itertools.pairwise(times):
        if not any(earlier <= kill < later for kill in kills):
            assert (later - earlier) / 1e9 < 0.25, f"a gap at {earlier} not explained by a kill"
    # The clean stop left every record delivered: only the current, empty segment remains.
    assert len(list((tmp_path / "spool").glob("*" + fmt.SEGMENT_SUFFIX))) <= 2


# -- (3) a full disk: a spool cap, and a tiny tmpfs when the test may mount one


@pytest.mark.parametrize("limit", ["spool_max_bytes", "tmpfs"])
async def test_full_disk_drops_the_oldest_counts_them_and_keeps_acquiring(
    influxdb_v1: InfluxDBv1Server, tmp_path: Path, limit: str
) -> None:
    database = f"dur_full_{next(_databases)}"
    spool_dir = tmp_path / "spool"
    if limit == "tmpfs":
        # The disk itself fills up: 1 MiB of tmpfs under a larger cap, no free-space reserve, so writes hit ENOSPC.
        buffer = {"spool_max_bytes": "8MiB", "spool_min_free": 0, "spool_segment_bytes": "64KiB"}
        context: contextlib.AbstractContextManager[object] = mounted_tmpfs(spool_dir, "1m")
    else:
        buffer = {"spool_max_bytes": "1MiB", "spool_segment_bytes": "64KiB"}
        context = contextlib.nullcontext()
    with context:
        async with simulators.serve("burnin-board", seed=3) as sim:
            # Four boards of 100 points at 50 Hz: about 1 MB a second into the spool while InfluxDB is unreachable.
            down = write_gateway(
                tmp_path, influx_url=f"http://127.0.0.1:{free_port()}", database=database, sim_port=sim.port,
                profile="burnin-board", instruments=4, buffer=buffer,
            )  # fmt: skip
            async with running(down, drain_timeout=0.5) as first:
                spool_stats, output = first.stats.spool, first.stats.outputs[0]
                assert spool_stats is not None
                await until(lambda: spool_stats.dropped_records > 200, within=15)
                polls = sum(s.polls for s in first.stats.instruments)
                await asyncio.sleep(0.5)
                assert sum(s.polls for s in first.stats.instruments) > polls + 40  # acquisition goes on
                if limit == "spool_max_bytes":
                    assert spool_stats.bytes <= 1 << 20
                else:
                    assert spool_stats.write_errors >= 1
                    assert "No space left" in spool_stats.last_error
                assert output.lost >= spool_stats.dropped_records
            first_lost = output.lost
            up = write_gateway(
                tmp_path, influx_url=influxdb_v1.url, database=database, sim_port=sim.port,
                profile="burnin-board", instruments=4, buffer=buffer,
            )  # fmt: skip
            async with running(up) as second:
                await asyncio.sleep(0.5)
                await until(lambda: second.stats.outputs[0].pending_records == 0, within=20)
    acquired = first.ring.appended + second.ring.appended
    lost = first_lost + second.stats.outputs[0].lost
    stored = await all_times(influxdb_v1, database)
    # Record by record: what is in the database plus what was counted lost is everything acquired.
    assert len(stored) + lost == acquired
    assert lost > 200


# -- (4) a truncated and a corrupted segment


async def test_truncated_and_corrupted_segments_are_repaired_and_the_rest_delivered(
    influxdb_v1: InfluxDBv1Server, tmp_path: Path
) -> None:
    database = f"dur_damage_{next(_databases)}"
    buffer = {"spool_segment_bytes": "16KiB"}
    async with simulators.serve("watlow-f4", seed=5) as sim:
        down = write_gateway(
            tmp_path, influx_url=f"http://127.0.0.1:{free_port()}", database=database, sim_port=sim.port,
            instruments=2, buffer=buffer,
        )  # fmt: skip
        async with running(down, drain_timeout=0.2) as first:
            assert first.stats.spool is not None
            await until(lambda: first.stats.spool is not None and first.stats.spool.segments >= 6)
        held = held_in_spool(tmp_path / "spool")
        segments = [path for path, records in held.items() if records]
        bad_header, flipped, torn = segments[1], segments[2], segments[-1]
        with bad_header.open("r+b") as file:
            file.write(b"\x00" * 8)
        victim = held[flipped][len(held[flipped]) // 2]
        data = bytearray(flipped.read_bytes())
        data[victim[4] - 3] ^= 0x10  # inside that record's payload
        flipped.write_bytes(bytes(data))
        with torn.open("r+b") as file:
            file.truncate(held[torn][-1][4] - 4)  # the last record half written, and no seal

        up = write_gateway(
            tmp_path, influx_url=influxdb_v1.url, database=database, sim_port=sim.port, instruments=2, buffer=buffer
        )
        async with running(up) as second:
            spool_stats = second.stats.spool
            assert spool_stats is not None
            await until(lambda: second.stats.outputs[0].pending_records == 0)
    expected = {record[:4] for path in segments for record in held[path]}  # a damaged header costs no record
    expected -= {victim[:4], held[torn][-1][:4]}
    stored = await all_times(influxdb_v1, database)
    from_before = {point for point in stored if point[3] <= max(r[3] for r in held[torn])}
    assert from_before == expected
    assert len(stored - from_before) == second.ring.appended  # and the new run's records, all of them
    assert (spool_stats.corrupt_segments, spool_stats.damaged_headers, spool_stats.corrupt_records) == (0, 1, 1)
    assert spool_stats.torn_bytes > 0
    assert second.stats.outputs[0].lost_by_reason == {"corrupt": 1}


async def test_a_deleted_middle_segment_and_a_cursor_past_the_newest_cost_exactly_the_destroyed_records(
    influxdb_v1: InfluxDBv1Server, tmp_path: Path
) -> None:
    """Issue 12's table through the daemon: a middle segment deleted costs its records, counted as
    ``missing_segment``; a cursor naming a segment after the newest costs nothing (a replay from the oldest)."""
    database = f"dur_missing_{next(_databases)}"
    buffer = {"spool_segment_bytes": "16KiB"}
    async with simulators.serve("watlow-f4", seed=7) as sim:
        down = write_gateway(
            tmp_path, influx_url=f"http://127.0.0.1:{free_port()}", database=database, sim_port=sim.port,
            instruments=2, buffer=buffer,
        )  # fmt: skip
        async with running(down, drain_timeout=0.2) as first:
            await until(lambda: first.stats.spool is not None and first.stats.spool.segments >= 6)
        held = held_in_spool(tmp_path / "spool")
        segments = [path for path, records in held.items() if records]
        deleted = segments[len(segments) // 2]
        deleted.unlink()
        cursor = tmp_path / "spool" / "cursors" / "influxdb.json"
        cursor.write_text('{"segment": 999999, "offset": 32, "index": 0}')  # valid JSON, pointing past the end

        up = write_gateway(
            tmp_path, influx_url=influxdb_v1.url, database=database, sim_port=sim.port, instruments=2, buffer=buffer
        )
        async with running(up) as second:
            output = second.stats.outputs[0]
            await until(lambda: output.pending_records == 0)
    produced = {record[:4] for path in segments for record in held[path]}
    destroyed = {record[:4] for record in held[deleted]}
    stored = await all_times(influxdb_v1, database)
    from_before = {point for point in stored if point[3] <= max(r[3] for r in held[segments[-1]])}
    assert from_before == produced - destroyed  # the cursor's damage cost nothing
    assert output.lost_by_reason == {"missing_segment": len(destroyed)}  # the deletion, counted to the record
    assert len(from_before) + output.lost == len(produced)
    assert len(stored - from_before) == second.ring.appended


# -- (5) the wall clock steps while polling


class SteppedClock:
    """``time`` as the daemon sees it, with the wall clock offset by hand; the monotonic clock is untouched
    (asyncio schedules on it, and so does the spool: that is what this test checks)."""

    def __init__(self) -> None:
        self.offset_ns = 0

    def time_ns(self) -> int:
        return time.time_ns() + self.offset_ns

    def time(self) -> float:
        return self.time_ns() / 1e9

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


async def test_a_wall_clock_step_stalls_nothing_and_drops_nothing(
    influxdb_v1: InfluxDBv1Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = SteppedClock()
    monkeypatch.setattr(scheduling, "time", clock)  # record timestamps
    monkeypatch.setattr(spool_module, "time", SimpleNamespace(time_ns=clock.time_ns, monotonic=time.monotonic))
    database = f"dur_clock_{next(_databases)}"
    buffer = {"spool_max_age": "10m", "spool_segment_bytes": "16KiB"}
    polls_per_phase = []
    async with simulators.serve("watlow-f4", seed=6) as sim:
        gateway = write_gateway(
            tmp_path, influx_url=influxdb_v1.url, database=database, sim_port=sim.port, buffer=buffer
        )
        async with running(gateway) as daemon:
            stats = daemon.stats.instruments[0]
            for offset_s in (0, 3600, -3600, 0):  # an hour ahead, then an hour behind real time
                clock.offset_ns = offset_s * 10**9
                before = stats.polls
                await asyncio.sleep(0.6)
                polls_per_phase.append(stats.polls - before)
            await until(lambda: daemon.stats.outputs[0].pending_records == 0)
    assert daemon.stats.spool is not None
    assert daemon.stats.spool.dropped_records == 0
    # Polling kept its cadence through both steps (the scheduler runs on the monotonic clock).
    assert all(polls >= 0.6 / INTERVAL * 0.6 for polls in polls_per_phase), polls_per_phase
    stored = await times_in(influxdb_v1, database, "dut")
    assert len(stored) == stats.records
    now = time.time_ns()
    assert any(t > now + 3000 * 10**9 for t in stored)  # the records taken an hour ahead
    assert any(t < now - 3000 * 10**9 for t in stored)  # and an hour behind: replay order is spool order
    assert os.listdir(tmp_path / "spool" / "cursors") == ["influxdb.json"]
