"""The InfluxDB output against real servers (InfluxDB 1.6 for v1, VictoriaMetrics for v2) and, only for the
InfluxDB 2.x/3.x replies no installed server produces, against the scripted fake."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from edge_daq.errors import FatalSinkError, RetriableSinkError
from edge_daq.record import FieldValue, Record, Series
from edge_daq.sinks.base import WriteResult
from edge_daq.sinks.influxdb import InfluxDBOutput, InfluxDBOutputConfig
from tests.fake_influx import FakeInfluxDB, Reply, WriteRequest
from tests.servers import InfluxDBv1Server, VictoriaMetricsServer, free_port

TOKEN = "tok-SECRET-7f3a9c"
PASSWORD = "pw-SECRET-51b2"


def record(series: Series, time_ns: int, **fields: FieldValue) -> Record:
    return Record(series=series, fields=dict(fields), time_ns=time_ns)


def numbered_batch(count: int, *, measurement: str = "rig", start_ns: int = 1_700_000_000_000_000_000) -> list[Record]:
    series = Series(measurement, {"rig": "htol-07"})
    return [record(series, start_ns + index, n=index) for index in range(count)]


def v1_config(url: str, database: str, **overrides: Any) -> InfluxDBOutputConfig:
    return InfluxDBOutputConfig.model_validate({"url": url, "api": "v1", "database": database, **overrides})


def v2_config(url: str, **overrides: Any) -> InfluxDBOutputConfig:
    settings = {"url": url, "api": "v2", "org": "lab", "bucket": "reliability", "token": TOKEN, "timeout": "2s"}
    return InfluxDBOutputConfig.model_validate({**settings, **overrides})


@pytest.fixture
def database() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


# --- api v1 against InfluxDB 1.6.7 -------------------------------------------------------------------------


@pytest.mark.parametrize("gzip", [True, False], ids=["gzip", "plain"])
async def test_v1_creates_the_database_and_writes_exact_values_and_ns_timestamps(
    influxdb_v1: InfluxDBv1Server, database: str, gzip: bool
) -> None:
    series = Series("chamber", {"rig": "htol-07", "instrument": "chamber"})
    t0 = 1_763_000_000_123_456_789  # nanosecond digits that a ms or µs round trip would lose
    records = [
        record(series, t0, temp=125.0000001, count=-(2**63), ok=True, model='F4 "T", v2\\b'),
        record(series, t0 + 1, temp=-1.5e-300, count=2**63 - 1, ok=False, model="a=b c,d"),
        record(series, t0 + 2, temp=0.1, count=0, ok=True, model=""),
    ]
    async with InfluxDBOutput(v1_config(influxdb_v1.url, database, gzip=gzip)) as output:
        assert database in await influxdb_v1.databases()
        assert await output.write(records) == WriteResult(written=3)

    rows = await influxdb_v1.select("SELECT temp, count, ok, model FROM chamber", database=database)
    assert rows == [
        {"time": t0, "temp": 125.0000001, "count": -(2**63), "ok": True, "model": 'F4 "T", v2\\b'},
        {"time": t0 + 1, "temp": -1.5e-300, "count": 2**63 - 1, "ok": False, "model": "a=b c,d"},
        {"time": t0 + 2, "temp": 0.1, "count": 0, "ok": True, "model": ""},
    ]
    field_types = await influxdb_v1.query("SHOW FIELD KEYS FROM chamber", database=database)
    assert sorted(map(tuple, field_types["series"][0]["values"])) == [
        ("count", "integer"),
        ("model", "string"),
        ("ok", "boolean"),
        ("temp", "float"),
    ]


async def test_v1_escapes_spaces_commas_and_equals_in_measurement_and_tags(
    influxdb_v1: InfluxDBv1Server, database: str
) -> None:
    measurement = "oven 3,zone=a"
    tags = {"lot id": "L2611, 03", "a=b": "x=y z", "plain": "p"}
    async with InfluxDBOutput(v1_config(influxdb_v1.url, database)) as output:
        result = await output.write([record(Series(measurement, tags), 1_000, v=1.5)])
    assert result == WriteResult(written=1)

    rows = await influxdb_v1.select(
        'SELECT * FROM "oven 3,zone=a" GROUP BY "lot id", "a=b", "plain"', database=database
    )
    assert rows == [{"lot id": "L2611, 03", "a=b": "x=y z", "plain": "p", "time": 1_000, "v": 1.5}]


async def test_v1_partial_write_counts_the_conflicting_point_and_keeps_the_others(
    influxdb_v1: InfluxDBv1Server, database: str
) -> None:
    series = Series("psu", {"rig": "burn-in-2"})
    async with InfluxDBOutput(v1_config(influxdb_v1.url, database)) as output:
        assert await output.write([record(series, 1, current=1)]) == WriteResult(written=1)  # current: integer
        batch = [record(series, 2, current=2), record(series, 3, current=3.5), record(series, 4, current=4)]
        with capture_logs() as logs:
            result = await output.write(batch)

    assert result == WriteResult(written=2, dropped=1)
    rows = await influxdb_v1.select("SELECT current FROM psu", database=database)
    assert [(row["time"], row["current"]) for row in rows] == [(1, 1), (2, 2), (4, 4)]
    rejected = [entry for entry in logs if entry["event"] == "influxdb_points_rejected"]
    assert len(rejected) == 1
    assert "field type conflict" in rejected[0]["message"]


async def test_v1_a_conflict_inside_one_batch_is_isolated_by_bisection(
    influxdb_v1: InfluxDBv1Server, database: str
) -> None:
    # 1.6 rejects a whole batch whose own points disagree on a field's type (400 without "partial write").
    series = Series("vfd", {"rig": "fatigue-1"})
    batch = [record(series, index, freq=index) for index in range(8)]
    batch[5] = record(series, 5, freq=5.5)
    async with InfluxDBOutput(v1_config(influxdb_v1.url, database)) as output:
        result = await output.write(batch)

    assert result == WriteResult(written=7, dropped=1)
    rows = await influxdb_v1.select("SELECT freq FROM vfd", database=database)
    assert [row["time"] for row in rows] == [0, 1, 2, 3, 4, 6, 7]


async def test_v1_missing_database_without_auto_creation_is_fatal(influxdb_v1: InfluxDBv1Server, database: str) -> None:
    async with InfluxDBOutput(v1_config(influxdb_v1.url, database, create_database=False)) as output:
        with pytest.raises(FatalSinkError, match=r"not found \(404\)"):
            await output.write(numbered_batch(2))
    assert database not in await influxdb_v1.databases()


async def test_v1_open_with_the_server_unreachable_is_retriable(database: str) -> None:
    output = InfluxDBOutput(v1_config(f"http://127.0.0.1:{free_port()}", database))
    with pytest.raises(RetriableSinkError, match="unreachable"):
        await output.open()
    await output.close()


async def test_v1_server_stopped_is_retriable_and_writes_resume_after_restart(
    influxdb_v1: InfluxDBv1Server, database: str
) -> None:
    batch = numbered_batch(3)
    async with InfluxDBOutput(v1_config(influxdb_v1.url, database)) as output:
        await asyncio.to_thread(influxdb_v1.stop)
        try:
            with pytest.raises(RetriableSinkError):
                await output.write(batch)
        finally:
            await asyncio.to_thread(influxdb_v1.start)  # same ports, same data folder
        assert await output.write(batch) == WriteResult(written=3)

    rows = await influxdb_v1.select("SELECT n FROM rig", database=database)
    assert [row["n"] for row in rows] == [0, 1, 2]


@pytest.fixture(scope="module")
def influxdb_v1_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDBv1Server]:
    """InfluxDB 1.6 with authentication on, and an admin user ``edge`` whose password is PASSWORD."""
    with InfluxDBv1Server(tmp_path_factory.mktemp("influxdb-v1-auth"), auth_enabled=True) as server:
        # With no user yet, 1.x lets anyone create the first admin.
        asyncio.run(server.query(f"CREATE USER edge WITH PASSWORD '{PASSWORD}' WITH ALL PRIVILEGES"))
        yield server


async def test_v1_basic_auth_with_a_password_file(
    influxdb_v1_auth: InfluxDBv1Server, database: str, tmp_path: Path
) -> None:
    password_file = tmp_path / "influx-password"
    password_file.write_text(PASSWORD + "\n")  # as `echo` or systemd-creds leave it
    config = v1_config(influxdb_v1_auth.url, database, username="edge", password_file=password_file)
    async with InfluxDBOutput(config) as output:
        assert await output.write(numbered_batch(2)) == WriteResult(written=2)

    authorization = aiohttp.encode_basic_auth("edge", PASSWORD)
    rows = await influxdb_v1_auth.select("SELECT n FROM rig", database=database, authorization=authorization)
    assert [row["n"] for row in rows] == [0, 1]


async def test_v1_wrong_password_is_fatal_and_never_shows_the_password(
    influxdb_v1_auth: InfluxDBv1Server, database: str
) -> None:
    wrong = "wrong-" + PASSWORD
    output = InfluxDBOutput(v1_config(influxdb_v1_auth.url, database, username="edge", password=wrong))
    with capture_logs() as logs, pytest.raises(FatalSinkError, match=r"username or password \(401\)") as raised:
        await output.open()  # CREATE DATABASE is the first request
    await output.close()

    config = v1_config(influxdb_v1_auth.url, database, username="edge", password=wrong, create_database=False)
    async with InfluxDBOutput(config) as output:
        with pytest.raises(FatalSinkError, match=r"\(401\)") as raised_on_write:
            await output.write(numbered_batch(1))
    for text in (str(raised.value), str(raised_on_write.value), repr(output), repr(output.config), str(logs)):
        assert PASSWORD not in text


# --- api v2 against VictoriaMetrics ------------------------------------------------------------------------


@pytest.mark.parametrize("gzip", [True, False], ids=["gzip", "plain"])
async def test_v2_values_and_timestamps_read_back_from_victoria_metrics(
    victoria_metrics: VictoriaMetricsServer, gzip: bool
) -> None:
    measurement = f"rig_{uuid.uuid4().hex[:8]}"
    series = Series(measurement, {"rig": "htol-07", "lot": "L2611-03"})
    t0 = time.time_ns() - 60 * 10**9  # VictoriaMetrics keeps recent samples only (retention)
    records = [
        record(series, t0 + index * 10**6 + 123, temp=20.5 + index, cycles=index, door=index % 2 == 0)
        for index in range(5)
    ]
    async with InfluxDBOutput(v2_config(victoria_metrics.url, gzip=gzip)) as output:
        assert await output.write(records) == WriteResult(written=5)

    exported = await victoria_metrics.export(f'{{__name__=~"{measurement}_.*"}}', min_samples=15)
    by_name = {item["metric"]["__name__"]: item for item in exported}
    assert set(by_name) == {f"{measurement}_temp", f"{measurement}_cycles", f"{measurement}_door"}
    expected_ms = [(t0 + index * 10**6) // 10**6 for index in range(5)]  # VictoriaMetrics keeps ms
    for name, values in [
        ("temp", [20.5, 21.5, 22.5, 23.5, 24.5]),
        ("cycles", [0, 1, 2, 3, 4]),
        ("door", [1, 0, 1, 0, 1]),  # booleans become 1/0
    ]:
        item = by_name[f"{measurement}_{name}"]
        assert item["metric"]["rig"] == "htol-07"
        assert item["metric"]["lot"] == "L2611-03"
        assert item["timestamps"] == expected_ms
        assert item["values"] == values


async def test_v2_unreachable_server_is_retriable() -> None:
    async with InfluxDBOutput(v2_config(f"http://127.0.0.1:{free_port()}")) as output:
        with pytest.raises(RetriableSinkError, match="unreachable"):
            await output.write(numbered_batch(1))


# --- api v2: InfluxDB 2.x/3.x replies from the scripted fake ------------------------------------------------


@pytest.fixture
async def fake_influx_factory() -> AsyncIterator[Any]:
    """Start a FakeInfluxDB with a given respond function; stopped after the test."""
    started: list[FakeInfluxDB] = []

    async def start(respond: Any) -> FakeInfluxDB:
        fake = FakeInfluxDB(respond)
        await fake.__aenter__()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        await fake.__aexit__(None, None, None)


async def test_413_splits_the_batch_in_halves_until_it_fits(fake_influx_factory: Any) -> None:
    def at_most_two_lines(request: WriteRequest) -> Reply:
        if len(request.lines) > 2:
            return Reply(413, {"code": "request too large", "message": "unable to read data: too large"})
        return Reply(204)

    fake: FakeInfluxDB = await fake_influx_factory(at_most_two_lines)
    batch = numbered_batch(8)
    async with InfluxDBOutput(v2_config(fake.url)) as output:
        assert await output.write(batch) == WriteResult(written=8)

    assert [len(request.lines) for request in fake.requests] == [8, 4, 2, 2, 4, 2, 2]
    assert [line.split()[-1] for line in fake.written_lines] == [str(r.time_ns) for r in batch]
    first = fake.requests[0]
    assert first.path == "/api/v2/write"
    assert first.query == {"org": "lab", "bucket": "reliability", "precision": "ns"}
    assert first.headers["Content-Encoding"] == "gzip"
    assert first.headers["Authorization"] == f"Token {TOKEN}"


async def test_413_for_a_single_record_drops_only_that_record(fake_influx_factory: Any) -> None:
    def rejects_the_big_one(request: WriteRequest) -> Reply:
        if any("n=2i" in line for line in request.lines):
            return Reply(413, {"code": "request too large", "message": "too large"})
        return Reply(204)

    fake: FakeInfluxDB = await fake_influx_factory(rejects_the_big_one)
    async with InfluxDBOutput(v2_config(fake.url)) as output:
        assert await output.write(numbered_batch(4)) == WriteResult(written=3, dropped=1)
    assert len(fake.written_lines) == 3


async def test_422_partial_write_is_not_resent(fake_influx_factory: Any) -> None:
    message = (
        'failure writing points to database: partial write: field type conflict: input field "n" on '
        'measurement "rig" is type float, already exists as type integer dropped=2'
    )
    fake: FakeInfluxDB = await fake_influx_factory(
        lambda _: Reply(422, {"code": "unprocessable entity", "message": message})
    )
    async with InfluxDBOutput(v2_config(fake.url)) as output:
        with capture_logs() as logs:
            assert await output.write(numbered_batch(10)) == WriteResult(written=8, dropped=2)
    assert len(fake.requests) == 1
    assert [entry["message"] for entry in logs if entry["event"] == "influxdb_points_rejected"] == [message]


async def test_influxdb3_partial_write_counts_the_rejected_lines_it_lists(fake_influx_factory: Any) -> None:
    body = {
        "error": "partial write of line protocol occurred",
        "data": [{"original_line": "rig n=1i 1", "line_number": 2, "error_message": "invalid column type"}],
    }
    fake: FakeInfluxDB = await fake_influx_factory(lambda _: Reply(400, body))
    async with InfluxDBOutput(v2_config(fake.url)) as output:
        assert await output.write(numbered_batch(5)) == WriteResult(written=4, dropped=1)
    assert len(fake.requests) == 1


async def test_400_for_the_whole_batch_bisects_to_drop_only_the_bad_record(fake_influx_factory: Any) -> None:
    def rejects_batches_with_the_bad_line(request: WriteRequest) -> Reply:
        if any("n=11i" in line for line in request.lines):
            return Reply(400, {"code": "invalid", "message": "unable to parse 'rig n=11i': bad timestamp"})
        return Reply(204)

    fake: FakeInfluxDB = await fake_influx_factory(rejects_batches_with_the_bad_line)
    batch = numbered_batch(16)
    async with InfluxDBOutput(v2_config(fake.url)) as output:
        assert await output.write(batch) == WriteResult(written=15, dropped=1)

    assert sorted(int(line.split("n=")[1].split("i")[0]) for line in fake.written_lines) == [
        n for n in range(16) if n != 11
    ]
    assert len(fake.requests) <= 1 + 2 * 4  # one rejected request, then two per level of log2(16)


@pytest.mark.parametrize(
    ("status", "retry_after", "expected_delay"),
    [
        (429, "30", 30.0),
        (429, "86400", 600.0),  # capped at 10 minutes
        (503, "5", 5.0),
        (503, None, None),
        (502, None, None),
        (504, None, None),
        (500, None, None),
    ],
)
async def test_throttling_and_server_errors_are_retriable_with_retry_after(
    fake_influx_factory: Any, status: int, retry_after: str | None, expected_delay: float | None
) -> None:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    fake: FakeInfluxDB = await fake_influx_factory(
        lambda _: Reply(status, {"code": "unavailable", "message": "busy"}, headers)
    )
    async with InfluxDBOutput(v2_config(fake.url)) as output:
        with pytest.raises(RetriableSinkError) as raised:
            await output.write(numbered_batch(3))
    assert raised.value.retry_after == expected_delay
    assert len(fake.requests) == 1  # the runner retries, after its backoff


@pytest.mark.parametrize(
    ("status", "expected_message"),
    [
        (401, r"InfluxDB rejected the token \(401\)"),
        (403, r"permission denied \(403\)"),
        (404, r"bucket 'reliability' of org 'lab' not found \(404\)"),
    ],
)
async def test_auth_and_missing_bucket_are_fatal_and_never_show_the_token(
    fake_influx_factory: Any, tmp_path: Path, status: int, expected_message: str
) -> None:
    fake: FakeInfluxDB = await fake_influx_factory(lambda _: Reply(status, {"code": "unauthorized", "message": "nope"}))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    config = v2_config(fake.url, token=None, token_file=token_file)
    with capture_logs() as logs:
        async with InfluxDBOutput(config) as output:
            with pytest.raises(FatalSinkError, match=expected_message) as raised:
                await output.write(numbered_batch(2))
    assert fake.requests[0].headers["Authorization"] == f"Token {TOKEN}"  # trailing newline stripped
    for text in (str(raised.value), repr(raised.value), repr(output), str(logs)):
        assert TOKEN not in text
    assert TOKEN not in repr(v2_config(fake.url))


async def test_a_server_that_does_not_answer_in_time_is_retriable(fake_influx_factory: Any) -> None:
    release = asyncio.Event()

    async def never_answers(_: WriteRequest) -> Reply:
        await release.wait()
        return Reply(204)

    fake: FakeInfluxDB = await fake_influx_factory(never_answers)
    try:
        async with InfluxDBOutput(v2_config(fake.url, timeout="300ms")) as output:
            with pytest.raises(RetriableSinkError, match="did not answer in time"):
                await output.write(numbered_batch(1))
    finally:
        release.set()


async def test_records_without_a_writable_field_are_counted_dropped(fake_influx_factory: Any) -> None:
    fake: FakeInfluxDB = await fake_influx_factory(lambda _: Reply(204))
    series = Series("rig", {})
    batch = [record(series, 1, v=1.0), record(series, 2, v=float("nan")), record(series, 3)]
    async with InfluxDBOutput(v2_config(fake.url)) as output:
        assert await output.write(batch) == WriteResult(written=1, dropped=2)
    assert fake.written_lines == ["rig v=1.0 1"]


async def test_v1_api_against_the_fake_sends_db_rp_precision_and_basic_auth(fake_influx_factory: Any) -> None:
    fake: FakeInfluxDB = await fake_influx_factory(lambda _: Reply(204))
    config = v1_config(
        fake.url, "lab", retention_policy="one_year", username="edge", password=PASSWORD, create_database=False
    )
    async with InfluxDBOutput(config) as output:
        assert await output.write(numbered_batch(2)) == WriteResult(written=2)
    request = fake.requests[0]
    assert request.path == "/write"
    assert request.query == {"db": "lab", "rp": "one_year", "precision": "ns"}
    assert request.headers["Authorization"] == aiohttp.encode_basic_auth("edge", PASSWORD)
    assert request.headers["Content-Encoding"] == "gzip"
    assert PASSWORD not in repr(output)


def test_credentials_in_the_url_are_refused_so_they_never_reach_a_log() -> None:
    with pytest.raises(ValueError, match="not in url"):
        v1_config(f"http://edge:{PASSWORD}@127.0.0.1:8086", "lab")


# --- a path prefix in the URL, and failover between urls --------------------------------------------------


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def recent_batch(measurement: str, count: int, *, rig: str = "htol-07") -> list[Record]:
    series = Series(measurement, {"rig": rig})
    t0 = time.time_ns() - 60 * 10**9  # VictoriaMetrics keeps recent samples only (retention)
    return [record(series, t0 + index * 10**6, n=float(index)) for index in range(count)]


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_a_path_prefix_in_the_url_is_kept(victoria_metrics: VictoriaMetricsServer, api: str) -> None:
    """Single-node VictoriaMetrics serves /influx/write and /influx/api/v2/write, like vminsert's
    /insert/<tenant>/influx/...: the prefix must reach the server, and a wrong one is refused."""
    measurement = f"prefix_{api}_{uuid.uuid4().hex[:8]}"

    def config(url: str) -> InfluxDBOutputConfig:
        return v1_config(url, "ignored", create_database=False) if api == "v1" else v2_config(url)

    async with InfluxDBOutput(config(f"{victoria_metrics.url}/influx/")) as output:
        assert await output.probe() is True
        assert await output.write(recent_batch(measurement, 3)) == WriteResult(written=3)
    [series] = await victoria_metrics.export(f'{{__name__="{measurement}_n"}}', min_samples=3)
    assert series["values"] == [0, 1, 2]
    async with InfluxDBOutput(config(f"{victoria_metrics.url}/no/such/prefix")) as output:
        with pytest.raises(FatalSinkError, match="does not serve this write path"):
            await output.write(recent_batch(measurement, 1))  # kept and retried, not dropped as bad points


def test_url_and_urls_are_exclusive_and_each_url_is_checked() -> None:
    with pytest.raises(ValueError, match="url or urls, not both"):
        v1_config("http://a:8086", "d", urls=["http://b:8086"])
    with pytest.raises(ValueError, match="credentials"):
        InfluxDBOutputConfig.model_validate({"api": "v1", "database": "d", "urls": ["http://u:p@a:8086"]})
    config = InfluxDBOutputConfig.model_validate({"api": "v1", "database": "d", "urls": ["http://a", "http://b"]})
    assert config.targets == ["http://a", "http://b"]
    assert InfluxDBOutputConfig.model_validate({"api": "v1", "database": "d"}).targets == ["http://127.0.0.1:8086"]


async def test_urls_fail_over_on_a_connection_failure_and_fail_back_later(
    victoria_metrics: VictoriaMetricsServer, tmp_path: Path
) -> None:
    primary = VictoriaMetricsServer(tmp_path / "primary")
    primary.port = free_port()  # known now, started later: down at first
    clock = ManualClock()
    config = InfluxDBOutputConfig.model_validate(
        {
            "urls": [f"{primary.url}/influx", f"{victoria_metrics.url}/influx"],
            "api": "v1",
            "database": "ignored",
            "create_database": False,
            "timeout": "2s",
            "failback": "1m",
        }
    )
    measurement = f"failover_{uuid.uuid4().hex[:8]}"
    try:
        async with InfluxDBOutput(config, clock=clock) as output:
            output.name = "lab"
            with capture_logs() as logs:
                assert await output.write(recent_batch(measurement, 2, rig="a")) == WriteResult(written=2)
            assert output.target == f"{victoria_metrics.url}/influx"
            [switch] = [entry for entry in logs if entry["event"] == "influxdb_target_switched"]
            assert switch["log_level"] == "warning"
            assert switch["to"] == f"{victoria_metrics.url}/influx"
            await asyncio.to_thread(primary.start)
            clock.now += 30  # not yet due: stays on the second
            assert await output.write(recent_batch(measurement, 2, rig="b")) == WriteResult(written=2)
            assert output.target == f"{victoria_metrics.url}/influx"
            clock.now += 31  # a minute on the second: the first is tried again, and answers
            assert await output.write(recent_batch(measurement, 2, rig="c")) == WriteResult(written=2)
            assert output.target == f"{primary.url}/influx"
        on_second = await victoria_metrics.export(f'{{__name__="{measurement}_n"}}', min_samples=4)
        assert sorted(item["metric"]["rig"] for item in on_second) == ["a", "b"]
        on_primary = await primary.export(f'{{__name__="{measurement}_n"}}', min_samples=2)
        assert [item["metric"]["rig"] for item in on_primary] == ["c"]
    finally:
        primary.stop()


async def test_with_every_url_down_the_write_is_retriable_and_the_probe_says_so() -> None:
    config = InfluxDBOutputConfig.model_validate(
        {
            "urls": [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"],
            "api": "v1",
            "database": "d",
            "create_database": False,
        }
    )
    async with InfluxDBOutput(config) as output:
        with pytest.raises(RetriableSinkError, match="unreachable"):
            await output.write(numbered_batch(1))
        assert await output.probe() is False
