"""The file output: durable, rotated, header-free line protocol that a real InfluxDB imports as it is."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import aiohttp
import pytest

from edge_daq.errors import RetriableSinkError
from edge_daq.record import Record, Series, to_line_protocol
from edge_daq.sinks.base import WriteResult
from edge_daq.sinks.file import FileOutput, FileOutputConfig
from tests.servers import InfluxDBv1Server

FILE_NAME = re.compile(r"^edge-daq-\d{8}T\d{6}\.\d{6}Z(-\d+)?\.lp$")
SERIES = Series("chamber", {"rig": "htol-07", "lot id": "L2611, 03"})


def batch(start: int, count: int) -> list[Record]:
    return [
        Record(SERIES, {"temp": 125.0 + index / 8, "cycle": index, "door": index % 2 == 0, "state": "soak"}, index)
        for index in range(start, start + count)
    ]


def produced_files(directory: Path) -> list[Path]:
    return sorted(directory.iterdir(), key=lambda path: path.name)


def config(directory: Path, **overrides: object) -> FileOutputConfig:
    return FileOutputConfig.model_validate({"dir": str(directory), **overrides})


async def test_writes_line_protocol_into_a_new_timestamped_file(tmp_path: Path) -> None:
    directory = tmp_path / "archive" / "nested"  # created on open
    records = batch(0, 10)
    async with FileOutput(config(directory)) as output:
        assert directory.is_dir()
        assert await output.write(records[:4]) == WriteResult(written=4)
        assert await output.write(records[4:]) == WriteResult(written=6)
        current = output.current_path
        # Acknowledged means on disk: the content is there before close().
        assert current is not None
        assert current.read_bytes() == to_line_protocol(records)

    files = produced_files(directory)
    assert files == [current]
    assert FILE_NAME.match(files[0].name)


async def test_files_hold_only_lines_no_header(tmp_path: Path) -> None:
    async with FileOutput(config(tmp_path)) as output:
        await output.write(batch(0, 5))
    text = produced_files(tmp_path)[0].read_text()
    lines = text.splitlines()
    assert len(lines) == 5
    assert text.endswith("\n")
    for line in lines:
        assert not line.startswith("#")
        assert re.fullmatch(r"chamber,\S+ \S.* \d+", line), line


async def test_every_open_starts_a_new_file_at_its_first_write(tmp_path: Path) -> None:
    for start in (0, 3):
        async with FileOutput(config(tmp_path)) as output:
            await output.write(batch(start, 3))
    async with FileOutput(config(tmp_path)):
        pass  # an idle run leaves no empty file
    files = produced_files(tmp_path)
    assert len(files) == 2
    assert b"".join(path.read_bytes() for path in files) == to_line_protocol(batch(0, 6))


async def test_rotates_before_a_file_would_exceed_rotate_bytes(tmp_path: Path) -> None:
    records = batch(0, 400)  # about 30 KiB of lines
    async with FileOutput(config(tmp_path, rotate_bytes="4KiB")) as output:
        for start in range(0, 400, 50):
            assert await output.write(records[start : start + 50]) == WriteResult(written=50)

    files = produced_files(tmp_path)
    assert len(files) >= 7
    assert all(path.stat().st_size <= 4096 for path in files)
    assert all(FILE_NAME.match(path.name) for path in files)
    # Name order is write order, and no line is split across files.
    assert b"".join(path.read_bytes() for path in files) == to_line_protocol(records)


async def test_keep_files_prunes_the_oldest_finished_files(tmp_path: Path) -> None:
    records = batch(0, 400)
    async with FileOutput(config(tmp_path, rotate_bytes=4096, keep_files=2)) as output:
        for start in range(0, 400, 50):
            await output.write(records[start : start + 50])
        current = output.current_path

    files = produced_files(tmp_path)
    assert len(files) == 3  # two finished files and the one being written
    assert files[-1] == current
    # What is left is the newest data, in one piece.
    kept = b"".join(path.read_bytes() for path in files)
    assert to_line_protocol(records).endswith(kept)


async def test_records_without_a_writable_field_are_counted_dropped(tmp_path: Path) -> None:
    records = [Record(SERIES, {"temp": float("nan")}, 1), Record(SERIES, {"temp": 1.0}, 2)]
    async with FileOutput(config(tmp_path)) as output:
        assert await output.write(records) == WriteResult(written=1, dropped=1)


async def test_an_unusable_directory_is_retriable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    output = FileOutput(config(blocker / "archive"))
    with pytest.raises(RetriableSinkError, match="cannot create"):
        await output.open()
    await output.close()


async def test_a_produced_file_imports_into_a_real_influxdb_as_it_is(
    influxdb_v1: InfluxDBv1Server, tmp_path: Path
) -> None:
    records = batch(0, 20)
    async with FileOutput(config(tmp_path)) as output:
        await output.write(records)
    produced = produced_files(tmp_path)[0].read_bytes()

    # What `influx write --precision ns` (2.x) and curl --data-binary @file (1.x) do with the file.
    database = f"t_{uuid.uuid4().hex[:12]}"
    await influxdb_v1.query(f'CREATE DATABASE "{database}"')
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{influxdb_v1.url}/write", params={"db": database, "precision": "ns"}, data=produced) as response,
    ):
        assert response.status == 204, await response.text()

    rows = await influxdb_v1.select('SELECT temp, cycle, door, state, rig, "lot id" FROM chamber', database=database)
    assert rows == [
        {
            "time": record.time_ns,
            "temp": record.fields["temp"],
            "cycle": record.fields["cycle"],
            "door": record.fields["door"],
            "state": "soak",
            "rig": "htol-07",
            "lot id": "L2611, 03",
        }
        for record in records
    ]
