"""ATE results of a readout: STDF V4 (read with pystdf) or a CSV of serial, pass/fail, bin.

Results files come from another machine (the tester) and are untrusted: :func:`read_results` refuses what is
not a regular file or is larger than its format's cap, walks the STDF record framing itself before the
library decodes it (so a truncated or overlong record is named by its byte offset), caps the number of
parts, and reports every problem as a :class:`ResultsError` with its position (``line 7``, ``record 12 at
byte 3480``). It blocks (file reads, parsing): the daemon calls it in a worker thread.

STDF: each part result record (PRR) gives one part: ``PART_ID`` is the DUT serial; pass/fail is the PRR's
``PART_FLG`` (bit 3 failed, valid unless bit 4 is set), else the pass/fail of its soft bin (SBR), else of
its hard bin (HBR). A part tested again (the same ``PART_ID`` later in the file) counts as its last test.
A gzip-compressed file (``.stdf.gz``) is read too, within the same cap on its decompressed size.

CSV (UTF-8, comma, semicolon or tab separated, a header row)::

    serial,result,bin,bin_name
    U0001,pass,1,
    U0002,fail,7,IDDQ

``serial`` (or ``part_id``/``dut``) and ``result`` (or ``pass_fail``/``status``) are required; a result is
pass/p/passed/ok/1/true or fail/f/failed/ng/0/false; ``bin`` (or ``soft_bin``/``hard_bin``) and
``bin_name`` are optional.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import stat
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ResultsFormat = Literal["auto", "stdf", "csv"]

MAX_STDF_BYTES = 128 * 1024 * 1024
MAX_CSV_BYTES = 16 * 1024 * 1024
MAX_PARTS = 200_000
MAX_SERIAL = 128
MAX_CSV_FIELD = 1024
STDF_MISSING_BIN = 65535
FAR = (0, 10)
PRR = (5, 20)
GZIP_MAGIC = b"\x1f\x8b"
PASS_WORDS = frozenset({"pass", "p", "passed", "ok", "1", "true", "good"})
FAIL_WORDS = frozenset({"fail", "f", "failed", "ng", "0", "false", "bad", "reject"})
SERIAL_COLUMNS = ("serial", "part_id", "dut")
RESULT_COLUMNS = ("result", "pass_fail", "pass/fail", "status", "passed")
BIN_COLUMNS = ("bin", "soft_bin", "hard_bin")


class ResultsError(ValueError):
    """A results file that cannot be used; the message names the file and the position."""


@dataclass(frozen=True, slots=True)
class PartResult:
    serial: str
    passed: bool
    bin: int | None
    """The soft bin (STDF) or the CSV's bin; the hard bin when there is no soft bin."""
    bin_name: str = ""
    hard_bin: int | None = None
    position: str = ""
    """Where in the file (``line 4``, ``record 9 at byte 812``)."""
    bin_kind: str = "bin"
    """``soft bin`` or ``hard bin`` (STDF), ``bin`` (CSV)."""

    @property
    def mode(self) -> str:
        """The failure mode a failing result gives: its bin."""
        if self.bin is None:
            return "readout fail"
        return f"{self.bin_kind} {self.bin}" + (f" {self.bin_name}" if self.bin_name else "")


@dataclass(slots=True)
class AteResults:
    format: Literal["stdf", "csv"]
    name: str
    sha256: str
    size: int
    parts: dict[str, PartResult] = field(default_factory=dict)
    retested: int = 0
    """Results superseded by a later test of the same part."""
    unidentified: int = 0
    """Results without a part id (STDF PRRs with an empty PART_ID)."""
    undetermined: list[str] = field(default_factory=list)
    """Serials whose pass/fail the file does not say (no valid flag, no P/F bin)."""


def read_results(path: Path, *, format: ResultsFormat = "auto") -> AteResults:
    """Read and validate a results file (blocking: call it in a worker thread)."""
    data = _read_bounded(path, MAX_STDF_BYTES if format != "csv" else MAX_CSV_BYTES)
    digest = hashlib.sha256(data).hexdigest()
    if data[:2] == GZIP_MAGIC:
        data = _gunzip(path, data)
    kind = format if format != "auto" else ("stdf" if _looks_like_stdf(data) else "csv")
    results = AteResults(kind, path.name, digest, len(data))
    if kind == "stdf":
        _read_stdf(path, data, results)
    else:
        if len(data) > MAX_CSV_BYTES:
            raise ResultsError(f"{path}: a CSV of results is at most {MAX_CSV_BYTES} bytes ({len(data)})")
        _read_csv(path, data, results)
    if not results.parts and not results.undetermined:
        raise ResultsError(f"{path}: no part results in the file")
    return results


def _read_bounded(path: Path, cap: int) -> bytes:
    try:
        info = os.stat(path)
    except OSError as error:
        raise ResultsError(f"{path}: cannot read: {error.strerror or error}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ResultsError(f"{path}: not a regular file")
    if info.st_size > cap:
        raise ResultsError(f"{path}: {info.st_size} bytes; a results file is at most {cap} bytes")
    try:
        with path.open("rb") as stream:
            data = stream.read(cap + 1)
    except OSError as error:
        raise ResultsError(f"{path}: cannot read: {error.strerror or error}") from None
    if len(data) > cap:  # grew since the stat
        raise ResultsError(f"{path}: a results file is at most {cap} bytes")
    return data


def _gunzip(path: Path, data: bytes) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            plain = stream.read(MAX_STDF_BYTES + 1)
    except (OSError, EOFError, zlib.error) as error:
        raise ResultsError(f"{path}: not a readable gzip file: {error}") from None
    if len(plain) > MAX_STDF_BYTES:
        raise ResultsError(f"{path}: decompressed, more than {MAX_STDF_BYTES} bytes")
    return plain


def _looks_like_stdf(data: bytes) -> bool:
    return len(data) >= 6 and data[2:4] == bytes(FAR) and data[:2] in (b"\x02\x00", b"\x00\x02")


# -- STDF


@dataclass(slots=True)
class _Frame:
    index: int
    offset: int
    typ: int
    sub: int


def _frames(path: Path, data: bytes) -> tuple[str, list[_Frame]]:
    """Walk the record headers: every record fits in the file; the first is a V4 FAR. Endianness and PRRs."""
    if not _looks_like_stdf(data):
        raise ResultsError(f"{path}: byte 0: not STDF (it must begin with a File Attributes Record)")
    cpu_type, version = data[4], data[5]
    if version != 4:
        raise ResultsError(f"{path}: byte 5: STDF version {version}; only STDF V4 is read")
    endian = "<" if cpu_type == 2 else ">"
    offset, index, prrs = 0, 0, list[_Frame]()
    while offset < len(data):
        if offset + 4 > len(data):
            raise ResultsError(f"{path}: byte {offset}: a truncated record header ({len(data) - offset} bytes)")
        (length,) = struct.unpack_from(endian + "H", data, offset)
        typ, sub = data[offset + 2], data[offset + 3]
        if offset + 4 + length > len(data):
            raise ResultsError(
                f"{path}: record {index + 1} (type {typ}/{sub}) at byte {offset}: declared length {length} runs "
                f"past the end of the file ({len(data)} bytes)"
            )
        if (typ, sub) == PRR:
            if len(prrs) >= MAX_PARTS:
                raise ResultsError(f"{path}: byte {offset}: more than {MAX_PARTS} part results")
            prrs.append(_Frame(index, offset, typ, sub))
        offset += 4 + length
        index += 1
    return endian, prrs


class _Collect:
    """The pystdf sink: PRRs in order, and the pass/fail and names of the bins."""

    def __init__(self) -> None:
        self.prrs: list[dict[str, Any]] = []
        self.soft: dict[int, tuple[str, str]] = {}
        self.hard: dict[int, tuple[str, str]] = {}

    def after_send(self, source: object, data: tuple[Any, list[Any]]) -> None:
        from pystdf import V4

        record_type, values = data
        row = dict(zip(record_type.fieldNames, values, strict=False))
        if record_type is V4.prr:
            self.prrs.append(row)
        elif record_type is V4.sbr:
            self._bin(self.soft, row.get("SBIN_NUM"), row.get("SBIN_PF"), row.get("SBIN_NAM"))
        elif record_type is V4.hbr:
            self._bin(self.hard, row.get("HBIN_NUM"), row.get("HBIN_PF"), row.get("HBIN_NAM"))

    @staticmethod
    def _bin(table: dict[int, tuple[str, str]], number: object, pf: object, name: object) -> None:
        if not isinstance(number, int):
            return
        known_pf, known_name = table.get(number, ("", ""))
        pf_text = str(pf or "").strip().upper()
        table[number] = (pf_text if pf_text in ("P", "F") else known_pf, str(name or "").strip()[:64] or known_name)


def _read_stdf(path: Path, data: bytes, results: AteResults) -> None:
    endian, frames = _frames(path, data)
    try:
        from pystdf import V4
    except ImportError:
        raise ResultsError("STDF results need pystdf: pip install 'edge-daq[ate]' (a CSV needs nothing)") from None
    wanted = (V4.far, V4.mir, V4.prr, V4.sbr, V4.hbr, V4.mrr)  # every other record is skipped by its length
    stream = io.BytesIO(data)
    parser = _positioned_parser(recTypes=wanted, inp=stream, endian=endian)
    sink = _Collect()
    parser.addSink(sink)
    try:
        parser.parse()
    except Exception as error:  # pystdf raises whatever its decoding meets (struct, Unicode, index errors)
        raise ResultsError(
            f"{path}: record at byte {parser.record_offset}: cannot be decoded: {type(error).__name__}: {error}"
        ) from None
    if len(sink.prrs) != len(frames):
        raise ResultsError(f"{path}: {len(frames)} part result records framed, {len(sink.prrs)} decoded")
    for frame, prr in zip(frames, sink.prrs, strict=True):
        _part(path, frame, prr, sink, results)


def _positioned_parser(**options: Any) -> Any:
    """pystdf's parser, noting the byte offset of the record it is decoding (for errors)."""
    from pystdf.IO import Parser

    class Positioned(Parser):  # type: ignore[misc]  # pystdf is untyped
        record_offset = 0

        def header(self, header: Any) -> None:
            self.record_offset = self.inp.tell() - 4

    return Positioned(**options)


def _part(path: Path, frame: _Frame, prr: dict[str, Any], sink: _Collect, results: AteResults) -> None:
    where = f"record {frame.index + 1} at byte {frame.offset}"
    serial = str(prr.get("PART_ID") or "").strip()
    if not serial:
        results.unidentified += 1
        return
    if len(serial) > MAX_SERIAL:
        raise ResultsError(f"{path}: {where}: a PART_ID of {len(serial)} characters (at most {MAX_SERIAL})")
    flags, hard, soft = prr.get("PART_FLG"), prr.get("HARD_BIN"), prr.get("SOFT_BIN")
    if not isinstance(flags, int) or not isinstance(hard, int):
        raise ResultsError(f"{path}: {where}: a part result without its flags and hard bin (truncated record)")
    soft_bin = soft if isinstance(soft, int) and soft != STDF_MISSING_BIN else None
    passed: bool | None = None
    if not flags & 0x10:  # bit 4 clear: bit 3 says pass (0) or fail (1)
        passed = not flags & 0x08
    elif soft_bin is not None and sink.soft.get(soft_bin, ("", ""))[0]:
        passed = sink.soft[soft_bin][0] == "P"
    elif sink.hard.get(hard, ("", ""))[0]:
        passed = sink.hard[hard][0] == "P"
    if serial in results.parts or serial in results.undetermined:
        results.retested += 1
        results.parts.pop(serial, None)
        if serial in results.undetermined:
            results.undetermined.remove(serial)
    if passed is None:
        results.undetermined.append(serial)
        return
    number = soft_bin if soft_bin is not None else hard
    names = sink.soft if soft_bin is not None else sink.hard
    kind = "soft bin" if soft_bin is not None else "hard bin"
    results.parts[serial] = PartResult(serial, passed, number, names.get(number, ("", ""))[1], hard, where, kind)


# -- CSV


def _read_csv(path: Path, data: bytes, results: AteResults) -> None:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ResultsError(f"{path}: line {line}: not UTF-8 text (byte {error.start})") from None
    if "\x00" in text:
        raise ResultsError(f"{path}: line {text[: text.index(chr(0))].count(chr(10)) + 1}: a NUL byte")
    first = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=first.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise ResultsError(f"{path}: line 1: empty file (expected a header: serial,result,bin)")
        columns = _columns(path, header)
        for row in reader:
            _csv_row(path, reader.line_num, row, columns, results)
    except csv.Error as error:
        raise ResultsError(f"{path}: line {reader.line_num}: {error}") from None


def _columns(path: Path, header: list[str]) -> dict[str, int]:
    names = [name.strip().lower() for name in header]
    columns: dict[str, int] = {}
    for key, aliases in (("serial", SERIAL_COLUMNS), ("result", RESULT_COLUMNS), ("bin", BIN_COLUMNS)):
        found = next((names.index(alias) for alias in aliases if alias in names), None)
        if found is not None:
            columns[key] = found
        elif key != "bin":
            raise ResultsError(
                f"{path}: line 1: no {key} column (one of {', '.join(aliases)}); the header is {','.join(header)[:200]}"
            )
    if "bin_name" in names:
        columns["bin_name"] = names.index("bin_name")
    return columns


def _csv_row(path: Path, line: int, row: list[str], columns: dict[str, int], results: AteResults) -> None:
    if not any(cell.strip() for cell in row):
        return  # a blank line
    if len(results.parts) + len(results.undetermined) >= MAX_PARTS:
        raise ResultsError(f"{path}: line {line}: more than {MAX_PARTS} part results")

    def cell(key: str) -> str:
        index = columns.get(key)
        if index is None or index >= len(row):
            return ""
        value = row[index].strip()
        if len(value) > MAX_CSV_FIELD:
            raise ResultsError(f"{path}: line {line}, column {key}: a value of {len(value)} characters")
        return value

    serial, result, bin_text = cell("serial"), cell("result").lower(), cell("bin")
    if not serial:
        raise ResultsError(f"{path}: line {line}, column serial: empty")
    if len(serial) > MAX_SERIAL:
        raise ResultsError(f"{path}: line {line}, column serial: {len(serial)} characters (at most {MAX_SERIAL})")
    if result in PASS_WORDS:
        passed = True
    elif result in FAIL_WORDS:
        passed = False
    else:
        raise ResultsError(f"{path}: line {line}, column result: {result[:40]!r} is neither pass nor fail")
    number: int | None = None
    if bin_text:
        if not bin_text.isdigit() or int(bin_text) > STDF_MISSING_BIN:
            raise ResultsError(f"{path}: line {line}, column bin: {bin_text[:40]!r} is not a bin number 0..65535")
        number = int(bin_text)
    if serial in results.parts:
        results.retested += 1
    results.parts[serial] = PartResult(serial, passed, number, cell("bin_name")[:64], None, f"line {line}")
