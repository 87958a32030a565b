import asyncio

import pytest

from edge_daq.buffer.ring import RingBuffer, estimate_bytes
from edge_daq.record import Record, Series

SERIES = Series("m", {"rig": "r"})


def record(n: int) -> Record:
    return Record(SERIES, {"n": n}, n)


def values(records: list[Record]) -> list[int]:
    return [int(r.fields["n"]) for r in records]


def test_readers_keep_their_own_cursor_and_commit_releases_records() -> None:
    ring = RingBuffer(10)
    fast, slow = ring.reader("fast"), ring.reader("slow")
    ring.extend(record(n) for n in range(5))

    batch = fast.read(3)
    assert values(batch.records) == [0, 1, 2]
    fast.commit(batch)
    assert fast.pending == 2
    assert slow.pending == 5
    assert len(ring) == 5  # the slow reader still needs them

    slow.commit(slow.read(5))
    assert len(ring) == 2  # 0..2 are released: both readers have passed them


def test_full_ring_drops_oldest_and_counts_per_reader() -> None:
    ring = RingBuffer(4)
    reader = ring.reader("out")
    ring.extend(record(n) for n in range(10))
    assert ring.dropped == 6
    batch = reader.read(100)
    assert values(batch.records) == [6, 7, 8, 9]
    assert reader.lost == 6


def test_batch_delivered_while_ring_overflows_is_not_counted_lost() -> None:
    ring = RingBuffer(3)
    reader = ring.reader("out")
    ring.extend(record(n) for n in range(3))
    batch = reader.read(3)
    ring.extend(record(n) for n in range(3, 5))  # evicts 0 and 1 while the batch is in flight
    reader.commit(batch)
    assert reader.lost == 0
    assert values(reader.read(10).records) == [3, 4]


async def test_wait_returns_once_the_batch_is_complete_or_on_timeout() -> None:
    ring = RingBuffer(100)
    reader = ring.reader("out")
    assert await reader.wait(1, max_wait=0.01) is False

    async def produce() -> None:
        for n in range(5):
            await asyncio.sleep(0.001)
            ring.append(record(n))

    producer = asyncio.create_task(produce())
    assert await reader.wait(5, max_wait=2.0) is True
    await producer
    assert reader.pending == 5
    assert await reader.wait(10, max_wait=0.01) is False


async def test_wake_ends_a_wait_at_once() -> None:
    ring = RingBuffer(10)
    reader = ring.reader("out")
    waiter = asyncio.create_task(reader.wait(1))
    await asyncio.sleep(0)
    reader.wake()
    assert await asyncio.wait_for(waiter, 1.0) is False


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RingBuffer(0)


def test_reads_ahead_of_the_cursor_hand_out_consecutive_batches() -> None:
    ring = RingBuffer(100)
    reader = ring.reader("out")
    ring.extend(record(n) for n in range(10))
    first, second = reader.read(4), reader.read(4)
    assert values(first.records) == [0, 1, 2, 3]
    assert values(second.records) == [4, 5, 6, 7]
    assert (reader.pending, reader.unread) == (10, 2)  # both batches in flight, nothing committed
    reader.commit(first)
    assert (reader.pending, reader.unread, len(ring)) == (6, 2, 6)
    reader.commit(second)
    assert values(reader.read(10).records) == [8, 9]


def test_rewind_hands_out_the_uncommitted_records_again() -> None:
    ring = RingBuffer(100)
    reader = ring.reader("out")
    ring.extend(record(n) for n in range(6))
    reader.read(4)
    reader.rewind()
    assert values(reader.read(3).records) == [0, 1, 2]


def test_overflow_counts_lost_only_what_was_never_read() -> None:
    ring = RingBuffer(4)
    reader = ring.reader("out")
    ring.extend(record(n) for n in range(4))
    in_flight = reader.read(2)  # 0 and 1
    ring.extend(record(n) for n in range(4, 10))  # evicts 0..5: 2..5 were never read
    assert reader.lost == 4
    reader.commit(in_flight)
    assert values(reader.read(10).records) == [6, 7, 8, 9]
    assert reader.lost == 4


async def test_wait_counts_unread_records_not_those_in_flight() -> None:
    ring = RingBuffer(100)
    reader = ring.reader("out")
    ring.extend(record(n) for n in range(3))
    reader.read(3)
    assert not await reader.wait(1, max_wait=0.01)
    ring.append(record(3))
    assert await reader.wait(1, max_wait=0.01)


def test_the_ring_is_bounded_in_bytes_as_well_and_counts_what_it_drops() -> None:
    ring = RingBuffer(1_000_000, max_bytes=1 << 20)
    reader = ring.reader("influxdb")
    big = Series("scpi", {"instrument": "smu1"})
    for n in range(100):
        ring.append(Record(big, {"n": n, "reply": "x" * 100_000}, n))  # a runaway string point
    assert ring.bytes <= 1 << 20
    assert len(ring) == 10  # about 100 kB each: ten fit in a MiB
    assert ring.dropped == 90
    assert reader.lost == 90  # counted like the records cap
    batch = reader.read(100)
    assert [r.fields["n"] for r in batch.records] == list(range(90, 100))
    reader.commit(batch)
    assert (len(ring), ring.bytes) == (0, 0)  # released records give their bytes back
    small = [Record(big, {"v": 1.0}, n) for n in range(1000)]
    ring.extend(small)
    assert ring.bytes == 1000 * estimate_bytes(small[0])
