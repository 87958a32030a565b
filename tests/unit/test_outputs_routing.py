"""Routing per output: the decision per series, and ring and spool readers that see only what their output takes.

A routed reader's ``pending`` and ``unread`` count only the records it takes, so an output's backlog never
counts what it would not deliver; what it skips is as good as delivered for its cursor (the ring releases it,
the spool's cursor moves past it).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from edge_daq.buffer.ring import RingBuffer
from edge_daq.buffer.spool import Spool
from edge_daq.buffer.spool.tally import SkipTally
from edge_daq.record import Record, Series
from edge_daq.sinks.base import OutputConfig
from edge_daq.sinks.routing import RecordFilter, Route

HTOL_07 = Series("chamber", {"rig": "htol-07", "instrument": "chamber", "lot": "L2611-03"})
HTOL_08 = Series("chamber", {"rig": "htol-08", "instrument": "chamber", "lot": "L2599-01"})
BOARD_07 = Series("board_a", {"rig": "htol-07", "instrument": "board_a", "lot": "L2611-03"})
STATUS_07 = Series("edge_daq_status", {"rig": "htol-07", "instrument": "chamber"})
EVENT = Series("edge_daq_event", {"gateway": "gw"})


def route(**settings: object) -> Route:
    built = OutputConfig.model_validate(settings).route()
    assert built is not None
    return built


def mixed(count: int) -> list[Record]:
    """Records cycling through five series; ``n`` numbers them."""
    cycle = [HTOL_07, HTOL_08, BOARD_07, STATUS_07, EVENT]
    return [Record(cycle[n % 5], {"n": n}, 10**18 + n) for n in range(count)]


def test_an_output_without_routing_keys_takes_everything_and_costs_nothing() -> None:
    assert OutputConfig().route() is None
    assert OutputConfig(records=["data", "status", "events"]).route() is None


@pytest.mark.parametrize(
    ("settings", "taken"),
    [
        ({"include": {"rig": ["htol-07"]}}, [HTOL_07, BOARD_07, STATUS_07]),
        ({"include": {"rig": "htol-0*", "measurement": ["board*"]}}, [BOARD_07]),
        ({"include": {"tags": {"lot": "L26*"}}}, [HTOL_07, BOARD_07]),
        ({"exclude": {"rig": ["htol-08"]}}, [HTOL_07, BOARD_07, STATUS_07, EVENT]),
        ({"records": ["events", "status"]}, [STATUS_07, EVENT]),
        ({"records": ["data"], "include": {"rig": ["htol-07"]}, "exclude": {"measurement": "board_*"}}, [HTOL_07]),
    ],
)
def test_include_exclude_and_record_kinds(settings: dict[str, object], taken: list[Series]) -> None:
    chosen = route(**settings)
    assert [s for s in (HTOL_07, HTOL_08, BOARD_07, STATUS_07, EVENT) if chosen.decide(s)] == taken


def test_bad_routing_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="records"):
        OutputConfig.model_validate({"records": ["data", "alarms"]})
    with pytest.raises(ValueError, match="rigs"):
        OutputConfig.model_validate({"include": {"rigs": ["htol-07"]}})
    with pytest.raises(ValueError, match="records"):
        OutputConfig.model_validate({"records": []})


def test_the_decision_is_made_once_per_series() -> None:
    calls = 0
    chosen = route(include={"rig": ["htol-07"]})
    original = RecordFilter.matches

    def counting(self: RecordFilter, series: Series) -> bool:
        nonlocal calls
        calls += 1
        return original(self, series)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RecordFilter, "matches", counting)
        assert sum(chosen.takes(record) for record in mixed(1000)) == 600
    assert calls == 5


def test_a_routed_ring_reader_counts_reads_and_commits_only_what_it_takes() -> None:
    ring = RingBuffer(1000)
    everything = ring.reader("all")
    events = ring.reader("events")
    events.set_route(route(records=["events", "status"]))
    ring.extend(mixed(100))
    assert (everything.pending, events.pending, events.unread) == (100, 40, 40)
    batch = events.read(25)
    assert [r.measurement for r in batch.records] == ["edge_daq_status", "edge_daq_event"] * 12 + ["edge_daq_status"]
    assert (events.pending, events.unread) == (40, 15)
    events.commit(batch)
    assert (events.pending, events.unread) == (15, 15)
    events.rewind()
    rest = events.read(100)
    assert [r.fields["n"] for r in rest.records][:2] == [64, 68]
    events.commit(rest)
    assert events.pending == 0
    # What it skipped holds nothing back: once the other reader commits, the ring is empty.
    everything.commit(everything.read(100))
    assert len(ring) == 0
    ring.extend(mixed(3))  # data only: the events reader has nothing pending and lets the ring release them
    assert events.pending == 0
    everything.commit(everything.read(10))
    assert len(ring) == 0


def test_a_routed_ring_reader_counts_as_lost_only_the_dropped_records_it_takes() -> None:
    ring = RingBuffer(10)
    events = ring.reader("events")
    events.set_route(route(records=["events"]))
    ring.extend(mixed(50))  # 10 events among 50; the ring keeps the last 10 records (2 events)
    assert len(events._taken) == 2  # what the ring dropped is let go at once, not when the output reads next
    assert events.pending == 2
    assert events.lost == 8
    assert [r.fields["n"] for r in events.read(10).records] == [44, 49]


def test_a_route_set_on_a_reader_with_records_applies_from_its_cursor() -> None:
    ring = RingBuffer(100)
    reader = ring.reader("r")
    ring.extend(mixed(10))
    reader.set_route(route(include={"rig": "htol-08"}))
    assert reader.pending == 2
    reader.set_route(None)
    assert reader.pending == 9  # record 0 (htol-07) came before the first one it took: its cursor is past it


def open_spool(folder: Path, ring: RingBuffer) -> Spool:
    return Spool(folder, ring, max_bytes=1 << 30, fsync_interval=0.01, min_free=0)


async def test_a_routed_spool_reader_skips_on_read_and_its_cursor_passes_what_it_skipped(tmp_path: Path) -> None:
    ring = RingBuffer(100_000)
    spool = open_spool(tmp_path / "spool", ring)
    events = spool.reader("events")
    events.set_route(route(records=["events", "status"]))
    task = asyncio.create_task(spool.run())
    try:
        ring.extend(mixed(1000))
        async with asyncio.timeout(5):
            while spool.stats.records_written < 1000:
                await asyncio.sleep(0.005)
        assert await events.wait(1, max_wait=1)
        delivered: list[Record] = []
        async with asyncio.timeout(5):
            while len(delivered) < 400:
                await events.wait(1, max_wait=0.1)
                batch = events.read(150)
                delivered += batch.records
                events.commit(batch)
        assert {r.measurement for r in delivered} == {"edge_daq_status", "edge_daq_event"}
        assert [r.fields["n"] for r in delivered] == [n for n in range(1000) if n % 5 >= 3]
        # Everything read through: nothing left in its backlog, and the cursor is at the end of the spool.
        assert (events.pending, events.unread) == (0, 0)
        assert events.committed.seq == 1000
        # A data-only tail after its last event: read past, skipped, and the cursor follows.
        ring.extend([Record(HTOL_07, {"n": 1000 + n}, time.time_ns()) for n in range(50)])
        async with asyncio.timeout(5):
            while spool.stats.records_written < 1050:
                await asyncio.sleep(0.005)
        assert not await events.wait(1, max_wait=0.3)
        assert (events.pending, events.unread, events.committed.seq) == (0, 0, 1050)
    finally:
        await spool.flush(within=5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await spool.close()
    # The cursor saved is past the skipped records: a restart does not read them again.
    again = open_spool(tmp_path / "spool", RingBuffer(100))
    reader = again.reader("events")
    reader.set_route(route(records=["events", "status"]))
    assert reader.committed.seq == 1050
    await again.close()


@pytest.mark.parametrize(
    ("settings", "taken"),
    [
        ({"records": ["events", "status"]}, lambda n: n % 5 >= 3),  # whole batches skipped in part: by series kind
        ({"include": {"rig": "htol-08"}}, lambda n: n % 5 == 1),  # mixed batches
    ],
    ids=["events-and-status", "one-rig"],
)
async def test_a_routed_spool_readers_backlog_counts_only_what_it_takes_before_it_reads_it(
    tmp_path: Path, settings: dict[str, object], taken: object
) -> None:
    """An output that is down reads nothing back: its backlog still counts only the records it takes."""
    assert callable(taken)
    ring = RingBuffer(100_000)
    spool = open_spool(tmp_path / "spool", ring)
    reader = spool.reader("routed")
    reader.set_route(route(**settings))
    records = mixed(6_000)
    expected = [r.fields["n"] for r in records if taken(r.fields["n"])]
    task = asyncio.create_task(spool.run())
    try:
        for start in range(0, len(records), 1_000):  # several write batches
            ring.extend(records[start : start + 1_000])
            async with asyncio.timeout(5):
                while spool.stats.records_written < start + 1_000:
                    await asyncio.sleep(0.005)
        assert reader.pending == len(expected)  # nothing read yet
        delivered: list[object] = []
        while reader.pending:
            await reader.wait(1, max_wait=1)
            batch = reader.read(333)  # batches that end inside the spool's write batches
            assert reader.pending == len(expected) - len(delivered)  # in flight still counts
            delivered += [r.fields["n"] for r in batch.records]
            reader.commit(batch)
            assert reader.pending == len(expected) - len(delivered)
        assert delivered == expected
        # An output restarted after a failure reads again from its cursor: the count holds across the rewind.
        ring.extend(mixed(500))
        async with asyncio.timeout(5):
            while spool.stats.records_written < 6_500:
                await asyncio.sleep(0.005)
        more = sum(1 for n in range(500) if taken(n))
        await reader.wait(1, max_wait=1)
        reader.read(10)
        reader.rewind()
        assert reader.pending == more
    finally:
        await spool.flush(within=5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await spool.close()


def test_the_skip_tally_agrees_with_a_count_of_every_record_through_compaction() -> None:
    chosen = route(include={"rig": "htol-07"})
    tally = SkipTally(chosen)
    generator = random.Random(7)
    series = [HTOL_07, HTOL_08, BOARD_07, EVENT]
    written: list[bool] = []  # taken, by sequence number
    committed = 0
    for _ in range(3_000):
        size = generator.choice([1, 3, 50])
        kinds = generator.choice([[HTOL_07], [HTOL_08, EVENT], series])
        batch = [Record(generator.choice(kinds), {"x": 1.0}, 0) for _ in range(size)]
        tally.note_written(len(written), batch)
        written += [chosen.takes(record) for record in batch]
        committed = generator.randint(committed, len(written))
        tally.committed(committed)
        for seq in (committed, generator.randint(committed, len(written)), len(written)):
            assert tally.skipped_from(seq) == written[seq:].count(False)
    assert tally.entries < 3_000  # what was committed past was let go
