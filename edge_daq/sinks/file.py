"""File output: rotated line-protocol files that ``influx write`` (2.x) or ``influx -import`` (1.x) can load.

The files hold only lines (precision ns), no header: ``influx write --precision ns --file F`` (2.x) and
``curl --data-binary @F 'http://host:8086/write?db=DB&precision=ns'`` (1.x) load them as they are;
``influx -import -precision ns`` (1.x) wants the two lines ``# DML`` and ``# CONTEXT-DATABASE: DB`` first.

The embedded default when no output is configured. Sample (gateway file)::

    outputs:
      file:
        dir: /var/lib/edge-daq/archive
        rotate_bytes: 64MiB
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import structlog
from pydantic import Field

from edge_daq.buffer.segment import fsync_directory
from edge_daq.config.units import Duration, Size
from edge_daq.config.values import ConfigPath
from edge_daq.errors import RetriableSinkError
from edge_daq.record import Record, encode_lines_yielding
from edge_daq.sinks.base import Output, OutputConfig, WriteResult
from edge_daq.sinks.registry import OutputContext

log = structlog.get_logger("edge_daq.sinks.file")

FILE_PREFIX = "edge-daq-"
FILE_SUFFIX = ".lp"


class FileOutputConfig(OutputConfig):
    dir: ConfigPath = Path("/var/lib/edge-daq/archive")
    rotate_bytes: Size = Field(default=64 << 20, ge=4096)
    keep_files: int | None = Field(default=None, ge=1, description="oldest rotated files beyond this are deleted")
    flush_interval: Duration = 1.0


class FileOutput(Output):
    """Appends line protocol to ``dir/edge-daq-<UTC time>.lp``; a batch is acknowledged once fsync-ed.

    A new file is started by the first write after open(), so a line torn by a crash is never continued by
    the next run (and an idle run leaves no empty file), and whenever the current file would grow beyond
    ``rotate_bytes``. ``keep_files`` counts the finished files kept
    besides the one being written.
    """

    name = "file"

    def __init__(self, config: FileOutputConfig) -> None:
        self.config = config
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._size = 0

    def __repr__(self) -> str:
        return f"FileOutput(dir={str(self.config.dir)!r})"

    @property
    def target(self) -> str:
        return str(self.config.dir)

    @property
    def current_path(self) -> Path | None:
        """The file being written, if one is open."""
        return self._path

    async def open(self) -> None:
        await self.close()
        try:
            # Only the folder for now, so that a permission problem shows at start, not at the first batch.
            await asyncio.to_thread(self.config.dir.mkdir, parents=True, exist_ok=True)
        except OSError as error:
            raise RetriableSinkError(f"cannot create {self.config.dir}: {error}") from error

    async def close(self) -> None:
        path = self._path
        try:
            await asyncio.to_thread(self._close_file)
        except OSError as error:  # close() never raises: it runs while shutting down
            log.warning("file_output_close_failed", path=str(path), error=str(error))

    async def probe(self) -> bool:
        """Whether ``dir`` can be written again: it exists (or can be made), is writable and has free space."""
        return await asyncio.to_thread(self._writable)

    async def write(self, records: Sequence[Record]) -> WriteResult:
        # Encoding a large batch takes tens of milliseconds: in slices between polls (see encode_lines_yielding).
        # Writing and fsync-ing take milliseconds to seconds on an SD card: never on the event loop.
        lines = await encode_lines_yielding(records)
        try:
            await asyncio.to_thread(self._append, lines)
        except OSError as error:
            # A full disk or a vanished directory: retry later, into a fresh file (the torn one is left as is).
            await self.close()
            raise RetriableSinkError(f"cannot write to {self.config.dir}: {error}") from error
        return WriteResult(written=len(lines), dropped=len(records) - len(lines))

    # Everything below runs in a worker thread, one call at a time (the runner awaits each write).

    def _writable(self) -> bool:
        directory = self.config.dir
        try:
            directory.mkdir(parents=True, exist_ok=True)
            space = os.statvfs(directory)
        except OSError:
            return False
        return space.f_bavail > 0 and not space.f_flag & os.ST_RDONLY and os.access(directory, os.W_OK)

    def _append(self, lines: list[bytes]) -> None:
        if self._file is None:
            self._start_file()
        chunk: list[bytes] = []
        chunk_size = 0
        for line in lines:
            # Rotate before a line that would overflow the file, unless the file is empty (a huge line goes alone).
            if self._size + chunk_size + len(line) > self.config.rotate_bytes and self._size + chunk_size > 0:
                self._write_durably(chunk)
                chunk, chunk_size = [], 0
                self._rotate()
            chunk.append(line)
            chunk_size += len(line)
        self._write_durably(chunk)

    def _write_durably(self, chunk: list[bytes]) -> None:
        assert self._file is not None
        if chunk:
            self._file.write(b"".join(chunk))
            self._size += sum(map(len, chunk))
        self._file.flush()
        os.fsync(self._file.fileno())

    def _rotate(self) -> None:
        self._close_file()
        self._start_file()

    def _start_file(self) -> None:
        directory = self.config.dir
        directory.mkdir(parents=True, exist_ok=True)
        path = self._new_path(directory)
        # "x": never append to a file another process (or a clock step) already produced.
        self._file = path.open("xb")
        self._path = path
        self._size = 0
        fsync_directory(directory)  # so the new file itself survives a power cut
        self._prune(directory)

    def _new_path(self, directory: Path) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = directory / f"{FILE_PREFIX}{stamp}{FILE_SUFFIX}"
        counter = 1
        while path.exists():  # two rotations in the same microsecond, or a clock stepped back
            path = directory / f"{FILE_PREFIX}{stamp}-{counter}{FILE_SUFFIX}"
            counter += 1
        return path

    def _prune(self, directory: Path) -> None:
        if self.config.keep_files is None:
            return
        finished = sorted(
            (path for path in directory.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}") if path != self._path),
            key=lambda path: path.name,  # the UTC stamp makes names sort by age
        )
        for path in finished[: max(len(finished) - self.config.keep_files, 0)]:
            path.unlink(missing_ok=True)
            log.info("file_output_pruned", path=str(path))

    def _close_file(self) -> None:
        file, self._file, self._path = self._file, None, None
        if file is not None:
            file.close()


def make_output(name: str, config: FileOutputConfig, context: OutputContext) -> FileOutput:
    output = FileOutput(config)
    output.name = name
    return output
