"""Routing cost: what an ``include:`` filter adds to an output's reader, side by side with no filter.

Records of 85 float fields (one poll of the pipeline benchmark's instruments) from 200 instruments on 2 rigs;
the routed reader takes one rig (half the records). Three figures, each the best of several rounds:

- the ring reader: append, read and commit in batches of 5000, with one reader plain or routed;
- the spool reader: the same records read back from a spool on disk, plain or routed;
- the per-record cost of the routing decision next to the cost of encoding the record (what every output
  does with a record it takes), which is the figure that bounds routing's share of pipeline throughput.

    .venv/bin/python -m bench.routing
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from edge_daq.buffer.ring import RingBuffer, RingReader
from edge_daq.buffer.spool import Spool, SpoolReader
from edge_daq.record import Record, Series, encode_lines
from edge_daq.sinks.base import OutputConfig
from edge_daq.sinks.routing import Route

RECORDS = 200_000
BATCH = 5000
ROUNDS = 5


def make_records() -> list[Record]:
    series = [
        Series("chamber", {"rig": f"htol-0{7 + n % 2}", "instrument": f"i{n}", "lot": "L2611-03"}) for n in range(200)
    ]
    fields = {f"p{k}": 20.0 + k / 10 for k in range(85)}
    return [Record(series[n % 200], dict(fields), 10**18 + n) for n in range(RECORDS)]


def route() -> Route:
    routed = OutputConfig.model_validate({"include": {"rig": ["htol-07"]}}).route()
    assert routed is not None
    return routed


def drain(reader: RingReader | SpoolReader) -> int:
    taken = 0
    while True:
        batch = reader.read(BATCH)
        if not batch.records:
            return taken
        taken += len(batch.records)
        reader.commit(batch)


def ring_round(records: list[Record], routed: bool) -> float:
    ring = RingBuffer(RECORDS + 1)
    reader = ring.reader("bench")
    if routed:
        reader.set_route(route())
    started = time.perf_counter()
    for record in records:
        ring.append(record)
    taken = drain(reader)
    elapsed = time.perf_counter() - started
    assert taken == (RECORDS // 2 if routed else RECORDS)
    return elapsed


async def spool_round(folder: Path, records: list[Record], routed: bool) -> float:
    ring = RingBuffer(RECORDS + 1)
    spool = Spool(folder, ring, max_bytes=4 << 30, fsync_interval=0.05, min_free=0)
    reader = spool.reader(f"bench-{routed}-{time.monotonic_ns()}")
    if routed:
        reader.set_route(route())
    task = asyncio.create_task(spool.run())
    ring.extend(records)
    await spool.flush(within=60)  # every record on disk before the clock starts
    started = time.perf_counter()
    taken = 0
    while taken < (RECORDS // 2 if routed else RECORDS):
        await reader.wait(1, max_wait=0.5)
        batch = reader.read(BATCH)
        taken += len(batch.records)
        reader.commit(batch)
    elapsed = time.perf_counter() - started
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await spool.close()
    return elapsed


def per_record_costs(records: list[Record]) -> tuple[float, float]:
    chosen = route()
    started = time.perf_counter()
    taken = sum(1 for record in records if chosen.takes(record))
    decide = (time.perf_counter() - started) / len(records)
    assert taken == RECORDS // 2
    sample = records[:20_000]
    started = time.perf_counter()
    encode_lines(sample)
    encode = (time.perf_counter() - started) / len(sample)
    return decide, encode


def main() -> int:
    records = make_records()
    plain = min(ring_round(records, False) for _ in range(ROUNDS))
    routed = min(ring_round(records, True) for _ in range(ROUNDS))
    print(
        f"ring reader, {RECORDS} records: plain {plain * 1e9 / RECORDS:.0f} ns/record, "
        f"routed (takes half) {routed * 1e9 / RECORDS:.0f} ns/record"
    )
    with tempfile.TemporaryDirectory() as folder:
        spool_plain = min(asyncio.run(spool_round(Path(folder) / f"p{n}", records, False)) for n in range(3))
        spool_routed = min(asyncio.run(spool_round(Path(folder) / f"r{n}", records, True)) for n in range(3))
    print(
        f"spool reader, {RECORDS} records: plain {spool_plain * 1e9 / RECORDS:.0f} ns/record, "
        f"routed (takes half) {spool_routed * 1e9 / RECORDS:.0f} ns/record"
    )
    decide, encode = min(per_record_costs(records) for _ in range(ROUNDS))
    print(
        f"routing decision {decide * 1e9:.0f} ns/record (cached per series); encoding a record {encode * 1e9:.0f} ns:"
        f" routing is {100 * decide / encode:.1f} % of the encoding alone"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
