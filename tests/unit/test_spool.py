"""The durable spool: segment format, recovery, caps, cursors, several readers at different speeds.

Every test runs a real spool on a temporary folder; damage is done to the files themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edge_daq.buffer import segment as fmt
from edge_daq.buffer.ring import RingBuffer
from edge_daq.buffer.spool import Spool, SpoolReader, default_segment_bytes
from edge_daq.buffer.spool import core as spool_module
from edge_daq.record import Record, Series

CHAMBER = Series("chamber", {"rig": "htol-07", "instrument": "chamber", "note": "oven 7, rack=2"})
BOARD = Series("board", {"rig": "htol-07", "instrument": "board"})


def records(count: int, start: int = 0) -> list[Record]:
    """Records numbered by the field ``n`` and by their timestamp, alternating between two series."""
    return [
        Record(CHAMBER if n % 2 else BOARD, {"n": n, "temp": n / 10, "ok": n % 3 == 0, "note": f"#{n}\n"}, 10**18 + n)
        for n in range(start, start + count)
    ]


def numbers(batch: list[Record]) -> list[int]:
    return [int(record.fields["n"]) for record in batch]


class Clock:
    """An injectable clock that tests move by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_spool(folder: Path, ring: RingBuffer | None = None, **options: object) -> Spool:
    settings: dict[str, object] = {"max_bytes": 1 << 30, "fsync_interval": 0.01, "min_free": 0}
    settings.update(options)
    return Spool(folder, ring if ring is not None else RingBuffer(1_000_000), **settings)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(spool: Spool) -> AsyncIterator[Spool]:
    task = asyncio.create_task(spool.run())
    try:
        yield spool
    finally:
        await spool.flush(within=5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await spool.close()


async def written(spool: Spool, count: int) -> None:
    async with asyncio.timeout(5):
        while spool.stats.records_written < count:
            await asyncio.sleep(0.005)


async def deliver(reader: SpoolReader, count: int, *, batch: int = 500) -> list[int]:
    """Read and commit ``count`` records the way an output runner does."""
    delivered: list[int] = []
    async with asyncio.timeout(10):
        while len(delivered) < count:
            await reader.wait(1, max_wait=0.2)
            got = reader.read(min(batch, count - len(delivered)))
            delivered += numbers(got.records)
            reader.commit(got)
    return delivered


def segment_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*" + fmt.SEGMENT_SUFFIX))


# -- the format


def test_records_come_back_exactly_with_their_types_and_interned_series(tmp_path: Path) -> None:
    encoder = fmt.SeriesEncoder()
    frames: list[bytes] = []
    originals = records(50)
    for index, record in enumerate(originals):
        encoder.encode(record, index, frames)
    path = tmp_path / fmt.segment_name(1)
    path.write_bytes(fmt.encode_header(1, 123) + b"".join(frames))
    interned: dict[tuple[str, tuple[tuple[str, str], ...]], Series] = {}

    def intern(measurement: str, tags: dict[str, str]) -> Series:
        return interned.setdefault((measurement, tuple(tags.items())), Series(measurement, tags))

    chunk = fmt.read_records(
        path, fmt.HEADER_SIZE, path.stat().st_size, max_records=100, max_bytes=4096, series={}, intern=intern
    )
    assert [(r.series, r.fields, r.time_ns) for r in chunk.records] == [
        (r.series, r.fields, r.time_ns) for r in originals
    ]
    assert [type(v) for v in chunk.records[3].fields.values()] == [int, float, bool, str]
    assert chunk.records[0].series is chunk.records[2].series  # one Series object per distinct series
    assert len(interned) == 2
    assert len(frames) == 53  # two series definitions, one of the field names, and one frame per record
    # Resuming in the middle of the segment still knows the series defined before that point.
    middle = chunk.ends[24]
    resumed = fmt.read_records(
        path, middle, path.stat().st_size, max_records=100, max_bytes=64, series={}, intern=intern
    )
    assert numbers(resumed.records) == list(range(25, 50))


def test_a_damaged_record_is_skipped_and_the_next_one_found_again(tmp_path: Path) -> None:
    encoder = fmt.SeriesEncoder()
    frames: list[bytes] = []
    for index, record in enumerate(records(10)):
        encoder.encode(record, index, frames)
    data = bytearray(fmt.encode_header(1, 0) + b"".join(frames))
    record_frames = [i for i, frame in enumerate(frames) if frame[2] == fmt.RECORD]
    fourth = fmt.HEADER_SIZE + sum(len(f) for f in frames[: record_frames[3]])
    data[fourth + fmt.FRAME_OVERHEAD + 3] ^= 0x40  # a bit flip in the payload of record 3
    seventh = fmt.HEADER_SIZE + sum(len(f) for f in frames[: record_frames[7]])
    data[seventh + 3 : seventh + 7] = b"\xff\xff\xff\x00"  # a damaged length field in record 7
    path = tmp_path / fmt.segment_name(1)
    path.write_bytes(bytes(data))
    chunk = fmt.read_records(path, fmt.HEADER_SIZE, len(data), max_records=100, max_bytes=128, series={}, intern=Series)
    assert numbers(chunk.records) == [0, 1, 2, 4, 5, 6, 8, 9]
    assert (chunk.corrupt_regions, chunk.missing, chunk.next_index) == (2, 2, 10)  # records counted, not regions
    scan = fmt.scan_segment(path, fmt.HEADER_SIZE)
    assert (scan.records, scan.next_index, scan.valid_end) == (8, 10, len(data))


def test_a_torn_tail_is_found_by_the_scan(tmp_path: Path) -> None:
    encoder = fmt.SeriesEncoder()
    frames: list[bytes] = []
    for index, record in enumerate(records(5)):
        encoder.encode(record, index, frames)
    whole = fmt.encode_header(1, 0) + b"".join(frames)
    path = tmp_path / fmt.segment_name(1)
    path.write_bytes(whole[:-9])
    scan = fmt.scan_segment(path, fmt.HEADER_SIZE)
    assert (scan.records, scan.next_index) == (4, 4)
    assert scan.valid_end == len(whole) - len(frames[-1])


# -- the spool


async def test_records_flow_in_order_and_a_restart_resumes_from_the_persisted_cursor(tmp_path: Path) -> None:
    ring = RingBuffer(100_000)
    spool = open_spool(tmp_path, ring, segment_bytes=16 << 10)
    reader = spool.reader("influxdb")
    async with running(spool):
        ring.extend(records(3000))
        assert await deliver(reader, 2000) == list(range(2000))
        await written(spool, 3000)
        assert reader.pending == 1000
    assert ring.dropped == 0
    assert len(ring) == 0  # everything left the ring for the disk
    cursor = json.loads((tmp_path / "cursors" / "influxdb.json").read_text())
    assert set(cursor) == {"version", "segment", "offset", "index", "seq", "crc"}

    reopened = open_spool(tmp_path, segment_bytes=16 << 10)
    again = reopened.reader("influxdb")
    assert again.pending == 1000
    async with running(reopened):
        assert await deliver(again, 1000) == list(range(2000, 3000))
        # A new output starts at the oldest record still held, not at the end.
        newcomer = reopened.reader("archive")
        assert newcomer.pending >= 1000


async def test_uncommitted_records_are_replayed_after_a_restart(tmp_path: Path) -> None:
    ring = RingBuffer(10_000)
    spool = open_spool(tmp_path, ring)
    reader = spool.reader("influxdb")
    async with running(spool):
        ring.extend(records(100))
        await reader.wait(100, max_wait=2)
        reader.read(100)  # delivered but never acknowledged
    reopened = open_spool(tmp_path)
    async with running(reopened):
        assert await deliver(reopened.reader("influxdb"), 100) == list(range(100))


async def test_a_slow_reader_holds_segments_but_not_the_fast_one(tmp_path: Path) -> None:
    ring = RingBuffer(100_000)
    spool = open_spool(tmp_path, ring, segment_bytes=8 << 10)
    fast, slow = spool.reader("fast"), spool.reader("slow")
    async with running(spool):
        ring.extend(records(4000))
        assert await deliver(fast, 4000, batch=700) == list(range(4000))
        assert await deliver(slow, 1000, batch=100) == list(range(1000))
        await asyncio.sleep(0.1)  # a cursor save and deletion pass
        held_while_slow = len(segment_files(tmp_path))
        assert fast.pending == 0
        assert slow.pending == 3000
        assert await deliver(slow, 3000, batch=1000) == list(range(1000, 4000))
        async with asyncio.timeout(2):
            while len(segment_files(tmp_path)) > 1:
                await asyncio.sleep(0.02)
    assert held_while_slow > 5  # the slow reader kept its unread segments on disk
    assert spool.stats.dropped_records == 0


async def test_the_size_cap_drops_the_oldest_records_and_counts_them_per_reader(tmp_path: Path) -> None:
    ring = RingBuffer(100_000)
    spool = open_spool(tmp_path, ring, max_bytes=64 << 10, segment_bytes=8 << 10)
    delivered_all, stalled = spool.reader("live"), spool.reader("down")
    async with running(spool):
        for start in range(0, 6000, 500):
            ring.extend(records(500, start))
            await written(spool, start + 500)
            assert spool.total_bytes <= 64 << 10
        live = await deliver(delivered_all, 6000 - delivered_all.lost)
        pending = stalled.pending
        down = await deliver(stalled, pending)
    assert spool.stats.dropped_records > 0
    assert spool.stats.write_errors == 0
    # Record by record: each reader got a gap-free run of the newest records, plus what it lost, = all.
    for got, reader in ((live, delivered_all), (down, stalled)):
        assert got == list(range(6000 - len(got), 6000))
        assert reader.lost + len(got) == 6000
    assert delivered_all.lost == stalled.lost  # neither had delivered anything before the drops


async def test_the_age_cap_uses_the_monotonic_clock_so_a_wall_clock_step_drops_nothing(tmp_path: Path) -> None:
    monotonic, wall = Clock(1000.0), Clock(1.7e18)
    ring = RingBuffer(10_000)
    spool = open_spool(
        tmp_path, ring, max_age=60.0, segment_bytes=4 << 10, monotonic=monotonic, wall_ns=lambda: int(wall.now)
    )
    reader = spool.reader("down")
    async with running(spool):
        ring.extend(records(300))
        await written(spool, 300)
        wall.now += 3600e9  # the wall clock jumps an hour ahead: not a reason to drop anything
        ring.extend(records(10, 300))
        await written(spool, 310)
        assert spool.stats.dropped_records == 0
        monotonic.now += 61  # a minute passes for real
        ring.extend(records(10, 310))
        await written(spool, 320)
        assert spool.stats.dropped_records >= 300
        got = await deliver(reader, reader.pending)
    assert got[-1] == 319
    assert reader.lost + len(got) == 320


async def test_enospc_drops_the_oldest_segment_and_writing_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring = RingBuffer(100_000)
    spool = open_spool(tmp_path, ring, segment_bytes=4 << 10)
    reader = spool.reader("down")
    real_write_all = fmt.write_all
    failures = iter([True])

    def full_disk_once(fd: int, chunks: list[bytes]) -> int:
        if len(chunks) > 10 and next(failures, False):
            os.write(fd, chunks[0])  # a partial write, as a filling disk does
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_all(fd, chunks)

    async with running(spool):
        ring.extend(records(1000))
        await written(spool, 1000)
        # The spool core writes through this module (imported there as fmt).
        monkeypatch.setattr(fmt, "write_all", full_disk_once)
        ring.extend(records(1000, 1000))
        await written(spool, 2000)
        got = await deliver(reader, reader.pending)
    assert spool.stats.write_errors == 1
    assert spool.stats.dropped_segments == 1
    assert got == list(range(2000 - len(got), 2000))  # the oldest were dropped, the rest is whole
    assert reader.lost + len(got) == 2000
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".corrupt")]


async def test_without_room_the_records_wait_in_the_ring_and_are_written_when_room_returns(tmp_path: Path) -> None:
    ring = RingBuffer(500)
    spool = open_spool(tmp_path, ring, min_free=1 << 62)  # more free space than any disk has
    reader = spool.reader("influxdb")
    async with running(spool):
        ring.extend(records(800))  # the ring keeps the newest 500
        await asyncio.sleep(0.1)
        assert spool.stats.records_written == 0
        assert spool.stats.write_errors >= 1
        spool.min_free = 0
        async with asyncio.timeout(5):
            while spool.stats.records_written < 500:
                await asyncio.sleep(0.02)
        got = await deliver(reader, 500)
    assert got == list(range(300, 800))
    assert reader.lost == 300


async def test_recovery_cuts_a_torn_tail_reads_a_segment_with_a_bad_header_and_counts_damage(tmp_path: Path) -> None:
    ring = RingBuffer(100_000)
    spool = open_spool(tmp_path, ring, segment_bytes=8 << 10)
    spool.reader("influxdb")
    async with running(spool):
        ring.extend(records(2000))
        await written(spool, 2000)
    files = segment_files(tmp_path)
    assert len(files) >= 5
    # Index what each segment holds, then damage three of them.
    held = {path: numbers(read_segment(path)) for path in files}
    bad_header, flipped, torn = files[0], files[1], files[-1]
    with bad_header.open("r+b") as file:
        file.write(b"GARBAGE!")
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    last_record_gone = torn.stat().st_size - fmt.SEAL_FRAME_SIZE - 5
    with torn.open("r+b") as file:
        file.truncate(last_record_gone)  # no seal, and half a record at the end

    reopened = open_spool(tmp_path, segment_bytes=8 << 10)
    first, second = reopened.reader("influxdb"), reopened.reader("archive")
    assert (reopened.stats.corrupt_segments, reopened.stats.damaged_headers) == (0, 1)
    assert reopened.stats.torn_bytes > 0
    async with running(reopened):
        got_first = await deliver(first, first.pending - 1)
        got_second = await deliver(second, second.pending - 1)
    expected = [n for path in files for n in held[path]]  # the segment with the damaged header too
    expected.remove(held[torn][-1])  # the torn record
    for got, reader in ((got_first, first), (got_second, second)):
        assert set(got) < set(expected)
        assert len(set(expected) - set(got)) == 1  # the record with the flipped bit
        assert reader.lost == 1
    assert reopened.stats.corrupt_records == 1  # counted once for the spool, once per reader that met it


async def test_an_unreadable_cursor_replays_from_the_oldest_record(tmp_path: Path) -> None:
    ring = RingBuffer(10_000)
    spool = open_spool(tmp_path, ring)
    reader = spool.reader("influxdb")
    async with running(spool):
        ring.extend(records(100))
        await deliver(reader, 100)
    (tmp_path / "cursors" / "influxdb.json").write_text("{not json")
    reopened = open_spool(tmp_path)
    assert reopened.reader("influxdb").pending == 100


async def test_backlog_statistics(tmp_path: Path) -> None:
    from edge_daq.stats import OutputStats

    ring = RingBuffer(10_000)
    wall = Clock(10**18 + 1000 + 5e9)
    spool = open_spool(tmp_path, ring, wall_ns=lambda: int(wall.now))
    stats = OutputStats("influxdb")
    reader = spool.reader("influxdb", stats)
    async with running(spool):
        ring.extend(records(1000))
        await written(spool, 1000)
        await asyncio.sleep(0.05)
        assert stats.pending_records == 1000
        assert stats.pending_bytes > 1000 * 20
        assert stats.oldest_pending_seconds == pytest.approx(5.0, abs=0.01)
        await deliver(reader, 1000)
        assert (stats.pending_records, stats.pending_bytes, stats.oldest_pending_seconds) == (0, 0, None)


def read_segment(path: Path) -> list[Record]:
    chunk = fmt.read_records(
        path, fmt.HEADER_SIZE, path.stat().st_size, max_records=10**9, max_bytes=1 << 20, series={}, intern=Series
    )
    return chunk.records


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "RETRY_INITIAL", 0.02)
    monkeypatch.setattr(spool_module, "RETRY_MAXIMUM", 0.05)


# -- format version 1 (the release before): read after the upgrade

FIXTURE_V1 = Path(__file__).parents[1] / "fixtures" / "spool-v1"


def fixture_record(i: int) -> tuple[str, dict[str, str], dict[str, object], int]:
    """Record ``i`` of the v1 fixture, as the README there describes it."""
    tags = {"rig": "htol-07", "instrument": f"i{i % 4}"}
    fields = {"seq": i, "temp": i * 0.5, "door": i % 2 == 0, "model": f"M-{i}", "big": 2**62 + i}
    return ("chamber" if i % 3 else "smu", tags, fields, 1_700_000_000_000_000_000 + i * 1_000_000)


def as_tuple(record: Record) -> tuple[str, dict[str, str], dict[str, object], int]:
    return (record.measurement, dict(record.tags), dict(record.fields), record.time_ns)


async def test_a_v1_spool_is_read_exactly_after_the_upgrade_and_its_cursor_kept(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    shutil.copytree(FIXTURE_V1, folder)
    ring = RingBuffer(10_000)
    spool = open_spool(folder, ring)
    assert spool.stats.corrupt_records == spool.stats.damaged_headers == spool.stats.missing_records == 0
    influx, archive = spool.reader("influxdb"), spool.reader("archive")
    assert influx.pending == 260  # its v1 cursor (no checksum) fits the segments: it resumes after record 40
    async with running(spool):
        got_influx = await deliver_records(influx, 260)
        got_archive = await deliver_records(archive, 300)
        ring.extend(records(10))  # new records go into a v2 segment after the v1 ones
        await written(spool, 10)
        assert numbers(await deliver_records(archive, 10)) == list(range(10))
    assert [as_tuple(r) for r in got_influx] == [fixture_record(i) for i in range(40, 300)]
    assert [as_tuple(r) for r in got_archive] == [fixture_record(i) for i in range(300)]
    assert [type(v) for v in got_archive[2].fields.values()] == [int, float, bool, str, int]
    assert influx.lost == archive.lost == 0
    # The cursor is now a v2 one, and the mixed spool opens again.
    assert "crc" in json.loads((folder / "cursors" / "archive.json").read_text())
    reopened = open_spool(folder)
    assert reopened.reader("archive").pending == 0
    assert reopened.reader("influxdb").pending == 10


async def deliver_records(reader: SpoolReader, count: int) -> list[Record]:
    delivered: list[Record] = []
    async with asyncio.timeout(10):
        while len(delivered) < count:
            await reader.wait(1, max_wait=0.2)
            got = reader.read(100)
            delivered += got.records
            reader.commit(got)
    return delivered


# -- cursors


async def spool_with_backlog(folder: Path, total: int = 3000, delivered: int = 1000) -> list[Path]:
    """A closed spool of ``total`` records in many segments, output influxdb delivered the first ``delivered``."""
    ring = RingBuffer(100_000)
    spool = open_spool(folder, ring, segment_bytes=8 << 10)
    reader = spool.reader("influxdb")
    async with running(spool):
        ring.extend(records(total))
        await written(spool, total)
        await deliver(reader, delivered, batch=delivered)
    return segment_files(folder)


def rewrite_cursor(folder: Path, change: dict[str, object], *, keep_crc: bool = True) -> None:
    path = folder / "cursors" / "influxdb.json"
    document = json.loads(path.read_text())
    document.update(change)
    if not keep_crc:
        document.pop("crc")
        document.pop("version")
        document.pop("seq")
    path.write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ({"segment": 999_999}, "bad checksum"),
        ({"offset": 1}, "bad checksum"),
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ("x" * 5000, "file too large"),
    ],
)
async def test_a_damaged_cursor_replays_from_the_oldest_record_and_deletes_nothing(
    tmp_path: Path, damage: dict[str, object] | str, reason: str
) -> None:
    files = await spool_with_backlog(tmp_path)
    if isinstance(damage, dict):
        rewrite_cursor(tmp_path, damage)
    else:
        (tmp_path / "cursors" / "influxdb.json").write_text(damage)
    with capture_logs() as logs:
        reopened = open_spool(tmp_path, segment_bytes=8 << 10)
        reader = reopened.reader("influxdb")
    invalid = [entry for entry in logs if entry["event"] == "spool_cursor_invalid"]
    assert len(invalid) == 1
    assert reason in invalid[0]["reason"]
    assert reader.pending == reopened.stats.records >= 2000  # everything held, from the oldest
    async with running(reopened):
        await asyncio.sleep(0.15)  # cursor saves and deletion passes
        assert set(files) <= set(segment_files(tmp_path))  # nothing deleted on the word of that cursor
        got = await deliver(reader, reader.pending)
    assert set(range(1000, 3000)) <= set(got)  # nothing undelivered was skipped (a replay is harmless)
    assert reader.lost == 0


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"segment": 999_999}, "after the newest"),
        ({"segment": +3}, "is not before record"),  # off by a few: 3 segments later than it should be
        ({"offset": 4000}, "not before record"),
        ({"index": 7}, "not before record"),
        ({"offset": 10**9}, "outside segment"),
    ],
)
async def test_a_v1_cursor_that_does_not_fit_the_segments_is_not_trusted(
    tmp_path: Path, change: dict[str, object], reason: str
) -> None:
    files = await spool_with_backlog(tmp_path)
    if change.get("segment") == 3:
        cursor = json.loads((tmp_path / "cursors" / "influxdb.json").read_text())
        change = {"segment": cursor["segment"] + 3}
    rewrite_cursor(tmp_path, change, keep_crc=False)  # written by the release before: no checksum to catch it
    with capture_logs() as logs:
        reopened = open_spool(tmp_path, segment_bytes=8 << 10)
        reader = reopened.reader("influxdb")
    assert [reason in entry["reason"] for entry in logs if entry["event"] == "spool_cursor_invalid"] == [True]
    assert reader.pending == reopened.stats.records >= 2000  # everything held, from the oldest
    async with running(reopened):
        await asyncio.sleep(0.15)
        assert set(files) <= set(segment_files(tmp_path))  # nothing deleted on the word of that cursor
        got = await deliver(reader, reader.pending)
    assert set(range(1000, 3000)) <= set(got)


async def test_a_v1_cursor_that_fits_is_kept(tmp_path: Path) -> None:
    await spool_with_backlog(tmp_path)
    rewrite_cursor(tmp_path, {}, keep_crc=False)
    with capture_logs() as logs:
        reader = open_spool(tmp_path, segment_bytes=8 << 10).reader("influxdb")
    assert not [entry for entry in logs if entry["event"] == "spool_cursor_invalid"]
    assert reader.pending == 2000


# -- series definitions and segment size


def test_series_are_defined_again_so_one_damaged_definition_costs_at_most_a_thousand_records(tmp_path: Path) -> None:
    encoder = fmt.SeriesEncoder()
    frames: list[bytes] = []
    for index, record in enumerate(records(5000)):
        encoder.encode(record, index, frames)
    definitions = [i for i, frame in enumerate(frames) if frame[2] == fmt.SERIES]
    assert len(definitions) == 10  # two series, defined again after every 1,000 records
    data = bytearray(fmt.encode_header(1, 0) + b"".join(frames))
    first_definition = fmt.HEADER_SIZE + sum(len(f) for f in frames[: definitions[0]])
    data[first_definition + fmt.FRAME_OVERHEAD + 6] ^= 0x01
    path = tmp_path / fmt.segment_name(1)
    path.write_bytes(bytes(data))
    chunk = fmt.read_records(path, fmt.HEADER_SIZE, len(data), max_records=10**6, max_bytes=1 << 20, series={},
                             intern=Series)  # fmt: skip
    assert chunk.missing == 500  # the records of that series up to its next definition, counted exactly
    assert len(chunk.records) == 4500


def test_the_default_segment_size_scales_down_on_a_small_file_system() -> None:
    assert default_segment_bytes(2 << 30) == 32 << 20
    assert default_segment_bytes(2 << 30, fs_bytes=8 << 20, min_free=400 << 10) == ((8 << 20) - (400 << 10)) // 64
    assert default_segment_bytes(2 << 30, fs_bytes=1 << 20, min_free=0) == 64 << 10  # the floor
    assert default_segment_bytes(1 << 50) == 64 << 20  # the ceiling


async def test_a_record_no_format_can_hold_is_counted_and_the_rest_written(tmp_path: Path) -> None:
    ring = RingBuffer(10_000)
    spool = open_spool(tmp_path, ring)
    reader = spool.reader("influxdb")
    batch = records(10)
    batch[4].fields["n"] = 2**70  # beyond msgpack's 64 bits (a computed point could make one)
    async with running(spool):
        ring.extend(batch)
        await written(spool, 9)
        got = await deliver(reader, 9)
    assert got == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert reader.lost_by_reason == {"unencodable": 1}
    assert spool.stats.unencodable_records == 1
