"""Computed points, deadband and aggregation (edge_daq.processing), without servers."""

from __future__ import annotations

import math
import random
import statistics
import time
import timeit
from pathlib import Path

import pytest
import structlog.testing
import yaml

from edge_daq.buffer.ring import RingBuffer
from edge_daq.config.loader import check_config
from edge_daq.processing.aggregate import Aggregate
from edge_daq.processing.base import Emitted
from edge_daq.processing.computed import ComputedPoint, ExpressionError, compile_points, parse_expression
from edge_daq.processing.config import AggregateConfig, DeadbandConfig
from edge_daq.processing.deadband import Deadband
from edge_daq.processing.source import ReducedSource, load_floor
from edge_daq.record import FieldValue, Record, Series
from edge_daq.sinks.file import FileOutputConfig
from edge_daq.stats import OutputStats

SERIES = Series("dut", {"rig": "r", "socket": "1"})
OTHER = Series("dut", {"rig": "r", "socket": "2"})
EVENT = Series("edge_daq_event", {"rig": "r"})
SECOND = 1_000_000_000


# -- computed points


def test_computed_points_are_evaluated_in_order_and_missing_inputs_leave_them_missing() -> None:
    computed = compile_points(
        "board",
        [
            ComputedPoint(name="p", expr="v * i / 1000", unit="W"),
            ComputedPoint(name="p_mw", expr="p * 1000"),
            ComputedPoint(name="hot", expr="t > 100 and not oc"),
            ComputedPoint(name="ratio", expr="v / i"),
            ComputedPoint(name="mag", expr="sqrt(abs(v)) + max(v, i) if v >= 0 else -1"),
        ],
    )
    assert computed is not None
    fields: dict[str, FieldValue] = {"v": 3.3, "i": 20.0, "oc": False}
    computed.apply(fields)
    assert fields["p"] == pytest.approx(0.066)
    assert fields["p_mw"] == pytest.approx(66.0)
    assert "hot" not in fields  # t is missing from this record
    assert fields["ratio"] == pytest.approx(0.165)
    assert fields["mag"] == pytest.approx(math.sqrt(3.3) + 20.0)
    zero: dict[str, FieldValue] = {"v": 3.3, "i": 0.0}
    computed.apply(zero)
    assert "ratio" not in zero  # a division by zero: missing, and counted
    assert computed.errors == 1
    main: dict[str, FieldValue] = {"t": 120.0, "oc": False}
    computed.apply(main)
    assert main == {"t": 120.0, "oc": False, "hot": True}


@pytest.mark.parametrize(
    ("expr", "message", "column"),
    [
        ("v * (i", "never closed", 5),
        ("v.real", "Attribute is not allowed", 1),
        ("__import__('os')", "unknown function '__import__'", 1),
        ("v[0]", "Subscript is not allowed", 1),
        ("  v +* 2", "syntax error", 6),
        ("[v for v in x]", "ListComp is not allowed", 1),
    ],
)
def test_unsafe_or_malformed_expressions_are_refused_with_their_column(expr: str, message: str, column: int) -> None:
    with pytest.raises(ExpressionError, match=message) as caught:
        parse_expression(expr)
    assert caught.value.offset + 1 == column


def test_a_power_cannot_hang_the_daemon() -> None:
    computed = compile_points("x", [ComputedPoint(name="big", expr="v ** 100000000")])
    assert computed is not None
    fields: dict[str, FieldValue] = {"v": 10}
    computed.apply(fields)
    assert "big" not in fields
    assert computed.errors == 1


def test_evaluation_is_cheap_since_it_is_parsed_once() -> None:
    computed = compile_points("b", [ComputedPoint(name="p", expr="v * i / 1000")])
    assert computed is not None
    fields: dict[str, FieldValue] = {"v": 3.3, "i": 20.0}
    per_record = min(timeit.repeat(lambda: computed.apply(dict(fields)), number=2000, repeat=3)) / 2000
    parse = min(timeit.repeat(lambda: parse_expression("v * i / 1000"), number=2000, repeat=3)) / 2000
    print(f"\ncomputed point: {per_record * 1e6:.1f} us per record, a parse {parse * 1e6:.1f} us")
    assert per_record < parse * 3  # evaluating walks the parsed tree; it never parses again


def _rig(tmp_path: Path, computed: list[dict[str, str]], rules: list[dict[str, object]] | None = None) -> Path:
    (tmp_path / "rigs.d").mkdir()
    rig: dict[str, object] = {
        "rig": "htol-c",
        "instruments": [
            {"name": "board", "profile": "burnin-board", "host": "127.0.0.1", "port": 1502, "computed": computed}
        ],
    }
    if rules:
        rig["failures"] = {"rules": rules}
    (tmp_path / "rigs.d" / "htol-c.yaml").write_text(yaml.safe_dump(rig, default_flow_style=False, width=200))
    gateway = tmp_path / "edge-daq.yaml"
    gateway.write_text(yaml.safe_dump({"gateway": "gw", "rigs": "rigs.d/", "outputs": {"file": {"dir": "out"}}}))
    return gateway


def test_check_reports_an_unknown_name_at_its_line_and_column(tmp_path: Path) -> None:
    gateway = _rig(tmp_path, [{"name": "p", "expr": "v * ii / 1000"}])
    issues = check_config([gateway]).issues
    assert len(issues) == 1, issues
    issue = issues[0]
    text = (tmp_path / "rigs.d" / "htol-c.yaml").read_text().splitlines()[issue.line - 1]
    assert text[issue.column - 1 :].startswith("ii / 1000"), (text, issue)
    assert "unknown name 'ii'" in issue.message


def test_check_reports_a_syntax_error_at_the_expression(tmp_path: Path) -> None:
    issues = check_config([_rig(tmp_path, [{"name": "p", "expr": "v * (i"}])]).issues
    assert len(issues) == 1, issues
    assert "never closed" in issues[0].message
    assert issues[0].path.endswith("htol-c.yaml")
    assert issues[0].line > 1


def test_check_reports_a_syntax_error_at_its_column_inside_the_expression(tmp_path: Path) -> None:
    issues = check_config([_rig(tmp_path, [{"name": "p", "expr": "v * * i / 1000"}])]).issues
    assert len(issues) == 1, issues
    issue = issues[0]
    text = (tmp_path / "rigs.d" / "htol-c.yaml").read_text().splitlines()[issue.line - 1]
    assert text[issue.column - 1 :].startswith("* i / 1000"), (text, issue)  # the second '*', not the key
    assert "syntax error" in issue.message


def test_a_failure_rule_may_use_a_computed_per_channel_field(tmp_path: Path) -> None:
    ok = _rig(tmp_path, [{"name": "p", "expr": "v * i / 1000"}], [{"name": "hot", "field": "p", "above": 1.0}])
    assert check_config([ok]).issues == []


# -- deadband


def _records(values: list[dict[str, FieldValue]], start: int = 0, step: int = SECOND) -> list[Record]:
    return [Record(SERIES, dict(fields), start + n * step) for n, fields in enumerate(values)]


def _feed(reducer: Deadband | Aggregate, records: list[Record]) -> list[Emitted]:
    out: list[Emitted] = []
    reducer.feed(records, 0, out)
    return out


def expected_deadband(
    series: list[float], times: list[int], band: float, heartbeat: int, relative: bool = False
) -> list[int]:
    """The indexes a deadband sends, written as plainly as possible (independent of the implementation)."""
    sent: list[int] = []
    for index, value in enumerate(series):
        if not sent:
            sent.append(index)
            continue
        last = series[sent[-1]]
        limit = band * abs(last) if relative else band
        if abs(value - last) > limit or times[index] - times[sent[-1]] >= heartbeat:
            sent.append(index)
    return sent


@pytest.mark.parametrize("relative", [False, True])
def test_deadband_sends_exactly_what_the_rule_implies(relative: bool) -> None:
    rng = random.Random(7)
    values = [20.0 + rng.gauss(0, 0.05) + (n // 200) * 0.5 for n in range(2000)]
    times = [n * SECOND // 10 for n in range(2000)]
    config = DeadbandConfig(rel=0.004, heartbeat=30) if relative else DeadbandConfig(abs=0.1, heartbeat=30)
    out = _feed(Deadband(config), [Record(SERIES, {"t": v}, t) for v, t in zip(values, times, strict=True)])
    expected = expected_deadband(values, times, 0.004 if relative else 0.1, 30 * SECOND, relative)
    assert [e.record.time_ns for e in out] == [times[i] for i in expected]
    assert 10 < len(out) < 400  # noise filtered, steps and heartbeats sent


def test_deadband_fields_globs_measurements_booleans_strings_and_passing_records() -> None:
    config = DeadbandConfig.model_validate(
        {"abs": 1.0, "heartbeat": "1h", "fields": {"i*": {"abs": 10.0}}, "measurements": {"chamber": {"rel": 0.5}}}
    )
    deadband = Deadband(config)
    records = _records(
        [
            {"v": 1.0, "i": 100.0, "oc": False, "mode": "run"},
            {"v": 1.5, "i": 105.0, "oc": False, "mode": "run"},  # nothing moved past its band
            {"v": 2.5, "i": 111.0, "oc": True, "mode": "run"},  # v, i and oc changed
            {"v": 2.5, "i": 111.0, "oc": True, "mode": "hold"},  # a string changed
        ]
    )
    records.insert(2, Record(EVENT, {"kind": "failure"}, 5))
    records.append(Record(Series("chamber", {}), {"t": 100.0}, 6))
    records.append(Record(Series("chamber", {}), {"t": 140.0}, 7))  # within 50 % of 100
    out = _feed(deadband, records)
    assert [e.record.fields for e in out] == [
        {"v": 1.0, "i": 100.0, "oc": False, "mode": "run"},
        {"kind": "failure"},
        {"v": 2.5, "i": 111.0, "oc": True},
        {"mode": "hold"},
        {"t": 100.0},
    ]
    assert [e.commit for e in out] == [1, 3, 4, 5, 6]


# -- aggregation


def _window_stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "count": len(values)}


def test_aggregate_windows_are_aligned_and_exact() -> None:
    config = AggregateConfig(every=10, stats=["mean", "min", "max", "count", "first", "last", "sum", "stdev"], grace=1)
    aggregate = Aggregate(config)
    rng = random.Random(3)
    start = 1_700_000_003 * SECOND  # not on a window boundary
    values = [rng.uniform(0, 100) for _ in range(95)]
    records = [Record(SERIES, {"t": v, "n": k, "flag": True}, start + k * SECOND // 2) for k, v in enumerate(values)]
    out = _feed(aggregate, records)
    out_times = [e.record.time_ns for e in out]
    assert out_times == sorted(out_times)
    assert all(t % (10 * SECOND) == 0 for t in out_times)
    by_window: dict[int, list[float]] = {}
    for record in records[: len(records)]:
        by_window.setdefault(record.time_ns - record.time_ns % (10 * SECOND), []).append(record.fields["t"])  # type: ignore[arg-type]
    for emitted in out:
        window = by_window[emitted.record.time_ns]
        fields = emitted.record.fields
        assert fields["t_count"] == len(window)
        assert fields["t_mean"] == pytest.approx(statistics.fmean(window))
        assert fields["t_stdev"] == pytest.approx(statistics.stdev(window))
        assert (fields["t_min"], fields["t_max"], fields["t_first"], fields["t_last"]) == (
            min(window),
            max(window),
            window[0],
            window[-1],
        )
        assert fields["t_sum"] == pytest.approx(sum(window))
        assert "flag_mean" not in fields
        assert fields["n_count"] == len(window)
    # The window of the last record, and the one before it (within the grace), are open: nothing of them is
    # committed, and the last window emitted commits up to the first record of the older one.
    assert len(out) == len(by_window) - 2
    held = aggregate.hold()
    assert held is not None
    assert records[held].time_ns == sorted(by_window)[-2]
    assert out[-1].commit == held


def test_aggregate_replay_from_the_commit_point_emits_every_window_once() -> None:
    """A crash after any delivered window: the source reads again from the commit point with the saved floor."""
    config = AggregateConfig(every=5, grace=1)
    rng = random.Random(11)
    records = []
    for k in range(300):  # two series, a little out of order between them (within the grace)
        t = 1_700_000_000 * SECOND + k * SECOND // 4
        records.append(Record(SERIES if k % 2 else OTHER, {"x": rng.random()}, t - (SECOND // 3 if k % 3 else 0)))
    reference = _feed(Aggregate(config), records)
    assert len(reference) > 20
    for crash_after in range(0, len(reference), 3):  # delivered up to this emitted record, then killed
        delivered = reference[: crash_after + 1]
        commit, floor = delivered[-1].commit, delivered[-1].floor
        replayed = _feed(Aggregate(config, floor), records[commit:])
        # offsets of the replay are relative to its start: only the records matter here
        combined = [e.record for e in delivered] + [e.record for e in replayed]
        keys = [(r.series.line_prefix, r.time_ns) for r in combined]
        reference_keys = [(e.record.series.line_prefix, e.record.time_ns) for e in reference]
        # a window delivered and emitted again is the same record (InfluxDB overwrites it with itself)
        assert sorted(set(keys)) == sorted(reference_keys)
        final = {(r.series.line_prefix, r.time_ns): r.fields for r in combined}
        assert final == {(e.record.series.line_prefix, e.record.time_ns): e.record.fields for e in reference}


def test_records_after_their_window_closed_are_late() -> None:
    aggregate = Aggregate(AggregateConfig(every=1, grace=0), floor=10 * SECOND)
    out = _feed(aggregate, _records([{"x": 1.0}] * 3, start=9 * SECOND, step=SECOND // 2))
    assert aggregate.late == 2
    assert out == []


# -- the source between a reader and the runner


async def test_reduced_source_holds_the_buffer_until_a_window_is_delivered(tmp_path: Path) -> None:
    ring = RingBuffer(1000)
    reader = ring.reader("cloud")
    stats = OutputStats(output="cloud")
    floor_path = tmp_path / "cloud.json"
    source = ReducedSource(reader, Aggregate(AggregateConfig(every=1, grace=0)), stats, floor_path)
    base = (time.time_ns() // SECOND + 60) * SECOND  # ahead of the clock: only records close windows here
    for k in range(25):
        ring.append(Record(SERIES, {"x": float(k)}, base + k * SECOND // 10))
    assert await source.wait(1, max_wait=1.0)
    batch = source.read(100)
    assert [r.fields["x_count"] for r in batch.records] == [10, 10]
    assert reader.cursor == 0  # nothing is committed before the output acknowledged
    source.commit(batch)
    # The buffer's batch of 25 holds the open window's first records: it is committed once they are emitted.
    assert reader.cursor == 0
    assert load_floor(floor_path) == base + 2 * SECOND  # the windows delivered are not emitted again
    assert (stats.values_in, stats.values_sent) == (25, 10)
    for k in range(25, 35):
        ring.append(Record(SERIES, {"x": float(k)}, base + k * SECOND // 10))
    assert await source.wait(1, max_wait=1.0)
    batch = source.read(100)
    assert [r.fields["x_count"] for r in batch.records] == [10]
    source.commit(batch)
    assert reader.cursor == 25
    source.rewind()  # an output restart: what is not committed is read again, past the floor
    assert await source.wait(1, max_wait=1.0) is False
    assert stats.late_records == 5  # records 25-29: their window was delivered, they are read again and skipped
    assert source.reducer.hold() == 30  # record 30, the first of the open window, is where the next commit stops


async def test_reduced_source_commits_filtered_records_when_nothing_is_pending() -> None:
    ring = RingBuffer(1000)
    reader = ring.reader("mqtt")
    source = ReducedSource(reader, Deadband(DeadbandConfig(abs=1.0)), OutputStats(output="mqtt"), None)
    for k in range(50):
        ring.append(Record(SERIES, {"x": 0.01 * k}, k))
    assert await source.wait(1, max_wait=1.0)
    first = source.read(10)
    assert len(first.records) == 1
    source.commit(first)
    assert not await source.wait(1, max_wait=0.05)
    assert reader.cursor == 50  # every record judged and nothing to send: the ring lets them go


def test_an_output_takes_one_reduction() -> None:
    with pytest.raises(ValueError, match="not both"):
        FileOutputConfig.model_validate({"dir": "x", "deadband": {"abs": 1}, "aggregate": {"every": "1m"}})
    config = FileOutputConfig.model_validate({"dir": "x", "aggregate": {"every": "1m", "stats": ["mean", "max"]}})
    assert config.aggregate is not None
    assert config.aggregate.every == 60


async def test_memory_only_aggregation_lets_the_ring_go_and_resends_after_an_output_restart() -> None:
    ring = RingBuffer(1000)
    reader = ring.reader("cloud")
    source = ReducedSource(
        reader, Aggregate(AggregateConfig(every=1, grace=0)), OutputStats(output="cloud"), None, eager=True
    )
    base = (time.time_ns() // SECOND + 60) * SECOND
    for k in range(25):
        ring.append(Record(SERIES, {"x": float(k)}, base + k * SECOND // 10))
    assert await source.wait(1, max_wait=1.0)
    assert reader.cursor == 25  # folded into windows: the ring does not hold a window of raw records
    assert len(ring) == 0
    batch = source.read(1)
    assert batch.records[0].fields["x_count"] == 10
    source.rewind()  # the write failed and the output restarted: the window goes out again, then the next
    again = source.read(10)
    assert [r.fields["x_count"] for r in again.records] == [10, 10]
    assert [r.time_ns for r in again.records] == [base, base + SECOND]
    source.commit(again)
    assert source.lost == 0


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"\x00\xff garbage",
        b'{"version": 1}',
        b'{"floor_ns": -5}',
        b'{"floor_ns": "12"}',
        b'{"floor_ns": 1.5}',
        b"[1, 2]",
        b'{"floor_ns": 1' + b"0" * 10_000 + b"}",
    ],
    ids=["empty", "truncated", "binary", "no-floor", "negative", "string", "float", "list", "huge"],
)
def test_a_damaged_floor_file_is_refused_and_logged_not_trusted(tmp_path: Path, content: bytes) -> None:
    """The saved floor decides which windows are not sent again: a damaged one must not skip or crash."""
    path = tmp_path / "floor.json"
    path.write_bytes(content)
    with structlog.testing.capture_logs() as logs:
        assert load_floor(path) is None
    assert [entry["event"] for entry in logs] == ["aggregate_floor_unreadable"]
    assert load_floor(tmp_path / "absent.json") is None  # nothing saved yet: no error
