"""The spool under faults, counted to the record: produced = delivered + counted lost, and lost only where bytes
were really destroyed.

Each damage of issue 12's table is done to a copy of a real backlog written by the spool (records numbered by
their ``seq`` field); a full disk is a real tmpfs of 8 MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import threading
import zlib
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from edge_daq.buffer import segment as fmt
from edge_daq.buffer.ring import RingBuffer
from edge_daq.buffer.spool import Spool, SpoolReader
from edge_daq.buffer.spool import core as spool_core
from edge_daq.record import Record, Series
from edge_daq.stats import OutputStats
from tests.disks import mounted_tmpfs
from tests.unit.test_spool import open_spool, running

PRODUCED = 6000
DELIVERED_BEFORE = 1000
INSTRUMENTS = [Series("counter", {"rig": "htol-07", "instrument": f"dut{n}"}) for n in range(4)]


def numbered(start: int, count: int) -> list[Record]:
    return [
        Record(INSTRUMENTS[n % 4], {"seq": n, "v": n / 8, "ok": n % 5 == 0, "note": f"#{n}"}, 10**18 + n)
        for n in range(start, start + count)
    ]


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.01)


async def drain(reader: SpoolReader) -> list[int]:
    """Deliver everything the reader has, the way an output runner does; the ``seq`` of each record."""
    delivered: list[int] = []
    async with asyncio.timeout(20):
        while reader.pending:
            await reader.wait(1, max_wait=0.05)
            batch = reader.read(500)
            delivered += [int(record.fields["seq"]) for record in batch.records]
            reader.commit(batch)
    return delivered


@dataclass
class Frame:
    kind: int
    start: int
    end: int
    series_id: int
    seq: int | None


def frames_of(path: Path) -> list[Frame]:
    """Every frame of a segment, with the ``seq`` of each record (read independently of the spool's reader)."""
    found = []
    data = path.read_bytes()
    series: dict[int, Series] = {}
    chunk = fmt.read_records(path, fmt.HEADER_SIZE, len(data), max_records=10**9, max_bytes=1 << 20, series=series,
                             intern=Series)  # fmt: skip
    seqs = iter(int(record.fields["seq"]) for record in chunk.records)
    with path.open("rb") as file:
        for kind, payload, end in fmt.FrameReader(file, fmt.HEADER_SIZE, len(data)):
            series_id = int.from_bytes(payload[:4], "little") if kind in (fmt.SERIES, fmt.RECORD) else -1
            seq = next(seqs) if kind == fmt.RECORD else None
            found.append(Frame(kind, end - fmt.FRAME_OVERHEAD - len(payload), end, series_id, seq))
    return found


@pytest.fixture(scope="module")
def backlog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed spool of PRODUCED records in 16 KiB segments; output influxdb delivered the first 1,000."""
    folder = tmp_path_factory.mktemp("backlog") / "spool"

    async def write() -> None:
        ring = RingBuffer(100_000)
        spool = open_spool(folder, ring, segment_bytes=16 << 10)
        reader = spool.reader("influxdb")
        async with running(spool):
            ring.extend(numbered(0, PRODUCED))
            await until(lambda: spool.stats.records_written >= PRODUCED)
            delivered: list[int] = []
            while len(delivered) < DELIVERED_BEFORE:
                await reader.wait(1)
                batch = reader.read(DELIVERED_BEFORE - len(delivered))
                delivered += [int(r.fields["seq"]) for r in batch.records]
                reader.commit(batch)
            assert delivered == list(range(DELIVERED_BEFORE))

    asyncio.run(write())
    return folder


def copy_of(backlog: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    folder = tmp_path / "spool"
    shutil.copytree(backlog, folder)
    files = sorted(folder.glob("*" + fmt.SEGMENT_SUFFIX))
    cursor = json.loads((folder / "cursors" / "influxdb.json").read_text())
    assert len(files) > 8
    assert files[0].name == fmt.segment_name(cursor["segment"])
    return folder, files


def middle(files: list[Path]) -> Path:
    """A sealed segment well after the cursor and before the newest."""
    return files[len(files) // 2]


async def reopen_and_deliver(folder: Path) -> tuple[Spool, SpoolReader, list[int], list[MutableMapping[str, Any]]]:
    with capture_logs() as logs:
        spool = open_spool(folder, segment_bytes=16 << 10)
        reader = spool.reader("influxdb", OutputStats("influxdb"))
        async with running(spool):
            delivered = await drain(reader)
    return spool, reader, delivered, logs


def assert_counted(delivered: list[int], reader: SpoolReader, destroyed: set[int]) -> None:
    """Everything produced is delivered or counted lost, and what is lost is exactly what was destroyed."""
    got = set(delivered) | set(range(DELIVERED_BEFORE))
    assert got.isdisjoint(destroyed)
    assert len(got) + reader.lost == PRODUCED
    assert set(range(PRODUCED)) - got == destroyed


def recrc(document: dict[str, object]) -> dict[str, object]:
    """A cursor whose checksum matches its (wrong) content: cursors.py's canonical JSON, crc32."""
    document = {key: value for key, value in document.items() if key != "crc"}
    document["crc"] = zlib.crc32(json.dumps(document, sort_keys=True, separators=(",", ":")).encode())
    return document


def legacy(document: dict[str, object]) -> dict[str, object]:
    """The cursor as the release before wrote it: no version, no checksum."""
    return {key: document[key] for key in ("segment", "offset", "index")}


# -- the cursor


@pytest.mark.parametrize("checksummed", [False, True], ids=["v1 cursor", "checksum matching"])
async def test_a_cursor_naming_a_segment_after_the_newest_loses_nothing(
    backlog: Path, tmp_path: Path, checksummed: bool
) -> None:
    folder, files = copy_of(backlog, tmp_path)
    path = folder / "cursors" / "influxdb.json"
    cursor = json.loads(path.read_text())
    cursor["segment"] = 999_999
    path.write_text(json.dumps(recrc(cursor) if checksummed else legacy(cursor)))
    _, reader, delivered, logs = await reopen_and_deliver(folder)
    assert [e["reason"] for e in logs if e["event"] == "spool_cursor_invalid"] == [
        f"segment 999999 is after the newest held ({int(files[-1].name[:16])})"
    ]
    assert set(delivered) >= set(range(DELIVERED_BEFORE, PRODUCED))  # a replay from the oldest, nothing skipped
    assert_counted(delivered, reader, set())


@pytest.mark.parametrize("checksummed", [False, True], ids=["v1 cursor", "checksum matching"])
async def test_a_cursor_segment_off_by_a_few_loses_nothing(backlog: Path, tmp_path: Path, checksummed: bool) -> None:
    folder, _ = copy_of(backlog, tmp_path)
    path = folder / "cursors" / "influxdb.json"
    cursor = json.loads(path.read_text())
    cursor["segment"] += 3  # one flipped digit
    path.write_text(json.dumps(recrc(cursor) if checksummed else legacy(cursor)))
    _, reader, delivered, logs = await reopen_and_deliver(folder)
    assert len([e for e in logs if e["event"] == "spool_cursor_invalid"]) == 1
    assert_counted(delivered, reader, set())


# -- damaged segments


async def test_a_sealed_middle_segment_truncated_mid_record_loses_only_the_records_cut_off(
    backlog: Path, tmp_path: Path
) -> None:
    folder, files = copy_of(backlog, tmp_path)
    victim = middle(files)
    records = [frame for frame in frames_of(victim) if frame.kind == fmt.RECORD]
    cut = records[len(records) // 3]
    with victim.open("r+b") as file:
        file.truncate(cut.start + 7)  # inside that record's frame
    destroyed = {frame.seq for frame in records if frame.end > cut.start + 7 and frame.seq is not None}
    spool, reader, delivered, logs = await reopen_and_deliver(folder)
    assert_counted(delivered, reader, destroyed)
    assert reader.lost_by_reason == {"corrupt": len(destroyed)}
    assert spool.stats.corrupt_records == len(destroyed)  # counted once for the spool, and once for the output
    assert any(e["event"] == "spool_records_corrupt" and e["records"] == len(destroyed) for e in logs)


async def test_a_deleted_middle_segment_is_counted_exactly(backlog: Path, tmp_path: Path) -> None:
    folder, files = copy_of(backlog, tmp_path)
    victim = middle(files)
    destroyed = {frame.seq for frame in frames_of(victim) if frame.seq is not None}
    victim.unlink()
    spool, reader, delivered, logs = await reopen_and_deliver(folder)
    assert_counted(delivered, reader, destroyed)
    assert reader.lost_by_reason == {"missing_segment": len(destroyed)}
    assert (spool.stats.missing_segments, spool.stats.missing_records) == (1, len(destroyed))
    assert any(e["event"] == "spool_records_missing" and e["records"] == len(destroyed) for e in logs)


@pytest.mark.parametrize("byte", [0, 9, 20, 30, 36])  # magic, version, segment id, created, base / crc
async def test_one_flipped_header_byte_loses_no_record(backlog: Path, tmp_path: Path, byte: int) -> None:
    folder, files = copy_of(backlog, tmp_path)
    victim = middle(files)
    data = bytearray(victim.read_bytes())
    data[byte] ^= 0x04
    victim.write_bytes(bytes(data))
    spool, reader, delivered, logs = await reopen_and_deliver(folder)
    assert_counted(delivered, reader, set())
    assert (spool.stats.damaged_headers, spool.stats.corrupt_segments) == (1, 0)
    assert [e["segment"] for e in logs if e["event"] == "spool_segment_header_damaged"] == [victim.name]


async def test_one_damaged_series_definition_costs_only_the_records_that_need_it(backlog: Path, tmp_path: Path) -> None:
    folder, files = copy_of(backlog, tmp_path)
    victim = middle(files)
    frames = frames_of(victim)
    definition = next(frame for frame in frames if frame.kind == fmt.SERIES)
    data = bytearray(victim.read_bytes())
    data[definition.end - 3] ^= 0x01  # inside the definition's payload
    victim.write_bytes(bytes(data))
    # The records of that series after it, up to its next definition in the segment.
    destroyed: set[int] = set()
    for frame in frames[frames.index(definition) + 1 :]:
        if frame.series_id == definition.series_id:
            if frame.kind == fmt.SERIES:
                break
            assert frame.seq is not None
            destroyed.add(frame.seq)
    assert 0 < len(destroyed) <= fmt.SERIES_REPEAT
    spool, reader, delivered, _ = await reopen_and_deliver(folder)
    assert_counted(delivered, reader, destroyed)
    assert reader.lost_by_reason == {"corrupt": len(destroyed)}
    assert spool.stats.corrupt_records == len(destroyed)


# -- a full disk: a real 8 MiB tmpfs


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "small", "8m") as folder:
        yield folder


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_core, "NO_ROOM_RETRY", 0.1)


async def test_a_backlog_that_fills_the_disk_sheds_a_little_at_a_time_and_never_stops_writing(tmpfs: Path) -> None:
    ring = RingBuffer(200_000)
    stats = OutputStats("influxdb")
    with capture_logs() as logs:
        spool = Spool(tmpfs / "spool", ring, max_bytes=2 << 30, fsync_interval=0.01)  # the default caps
        assert spool.segment_bytes < (8 << 20) // 50  # a 64th of what the spool may use here
        reader = spool.reader("influxdb", stats)  # the database is down: nothing is delivered
        produced, held_most = 0, 0
        async with running(spool):
            while produced < 200_000:
                ring.extend(numbered(produced, 5000))
                produced += 5000
                await until(lambda target=produced: spool.stats.records_written >= target)  # type: ignore[misc]
                if spool.stats.dropped_records:
                    assert spool.stats.records >= 0.9 * held_most  # each drop sheds a small part
                    assert stats.pending_records == spool.stats.records  # the backlog gauge follows the drops
                held_most = max(held_most, spool.stats.records)
            assert spool.stats.dropped_records > 0
            dropped = spool.stats.dropped_records
            delivered = await drain(reader)
    assert ring.dropped == 0
    assert len(set(delivered)) == len(delivered) == produced - reader.lost
    assert delivered == list(range(produced - len(delivered), produced))  # the newest, without a gap
    assert reader.lost_by_reason == {"disk_full": dropped}
    assert spool.stats.dropped_records == dropped
    events = [entry["event"] for entry in logs]
    assert events.count("spool_dropping_oldest") == 1  # once per episode


async def test_a_disk_filled_by_something_else_holds_records_in_the_ring_and_writing_resumes_by_itself(
    tmpfs: Path,
) -> None:
    ring = RingBuffer(3000)
    with capture_logs() as logs:
        spool = Spool(tmpfs / "spool", ring, max_bytes=2 << 30, fsync_interval=0.01)
        reader = spool.reader("influxdb")
        ballast = tmpfs / "ballast"
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * (4 << 10))  # until the disk is full
        os.close(fd)
        async with running(spool):
            ring.extend(numbered(0, 5000))  # the ring keeps the newest 3,000
            await asyncio.sleep(0.5)
            assert spool.stats.records_written == 0
            assert spool.stats.write_errors >= 2
            ballast.unlink()  # someone makes room; the spool is not told
            await until(lambda: spool.stats.records_written == 3000, within=3)
            ring.extend(numbered(5000, 1000))
            await until(lambda: spool.stats.records_written == 4000)
            delivered = await drain(reader)
    assert delivered == list(range(2000, 6000))
    assert reader.lost_by_reason == {"ring_full": 2000}
    assert len(delivered) + reader.lost == 6000
    events = [entry["event"] for entry in logs]
    assert (events.count("spool_write_failed"), events.count("spool_write_recovered")) == (1, 1)


async def test_a_segment_deleted_while_the_spool_runs_is_counted_and_skipped(backlog: Path, tmp_path: Path) -> None:
    folder, files = copy_of(backlog, tmp_path)
    victim = middle(files)
    destroyed = {frame.seq for frame in frames_of(victim) if frame.seq is not None}
    spool = open_spool(folder, segment_bytes=16 << 10)
    reader = spool.reader("influxdb", OutputStats("influxdb"))
    victim.unlink()  # after the start: the spool still holds it in its index
    async with running(spool):
        delivered = await drain(reader)
    assert_counted(delivered, reader, destroyed)
    assert reader.lost_by_reason == {"missing_segment": len(destroyed)}


def test_cursor_saves_that_overlap_never_collide(tmp_path: Path) -> None:
    """A save abandoned by a cancelled task still runs in its thread while close() saves again: both use the
    cursor's temporary file, so without one save at a time one rename finds the file already gone."""
    spool = open_spool(tmp_path)
    documents = [("influxdb", b'{"segment": 1}'), ("mqtt", b'{"segment": 1}')]
    results: list[list[bool]] = []

    def save_often() -> None:
        for _ in range(300):
            results.append(spool._save_cursors_blocking(documents))

    threads = [threading.Thread(target=save_often) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 600
    assert all(all(saved) for saved in results)
