"""Rig-file expansion done by the loader: the DUT list (inline and CSV) and repeated channels.

``channels:`` of an instrument becomes ordinary points of that instrument (``v01``, ``i01``, ...), each
carrying its channel's DUT identity as per-point tags plus two reserved ones that the record builder
understands (``_field``: the field's name in the per-channel record, ``_measurement``: that record's
measurement). So drivers need no change and every check on points (overlapping reads) sees the real reads.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from edge_daq.config.yaml_loader import LocatedDict, LocatedList, Mark
from edge_daq.errors import ConfigIssue
from edge_daq.reliability.config import DUT_CSV_COLUMNS, ChannelsConfig, DutConfig

# The record builder's reserved per-point tags (edge_daq.scheduling imports the driver stack, which imports
# the config loader: a test checks that both spell them alike).
FIELD_TAG = "_field"
MEASUREMENT_TAG = "_measurement"
SOCKET_TAG = "socket"

_DUTS: TypeAdapter[list[DutConfig]] = TypeAdapter(list[DutConfig])


def read_duts_csv(path: Path, mark: Mark) -> tuple[LocatedList, list[ConfigIssue]]:
    """The rows of a DUT CSV as located mappings (positions are CSV line and column), empty cells left out.

    The header names the columns (``socket, serial, lot, wafer, x, y, ...``); unknown columns are errors.
    """
    rows = LocatedList(mark)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        return rows, [mark.issue(f"cannot read DUT file {path}: {error.strerror or error}")]
    issues: list[ConfigIssue] = []
    lines = text.splitlines()
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        return rows, [Mark(str(path), 1, 1).issue("empty DUT file: expected a header such as socket,serial,lot")]
    header = [name.strip() for name in header]
    header_columns = _columns(lines[0])
    for index, name in enumerate(header):
        if name not in DUT_CSV_COLUMNS:
            issues.append(
                Mark(str(path), 1, header_columns[index]).issue(
                    f"unknown DUT column {name!r}; known: {', '.join(DUT_CSV_COLUMNS)}"
                )
            )
    if issues:
        return rows, issues
    for line_number, cells in enumerate(reader, start=2):
        if not any(cell.strip() for cell in cells):
            continue
        columns = _columns(lines[line_number - 1])
        row = LocatedDict(Mark(str(path), line_number, 1))
        for index, cell in enumerate(cells[: len(header)]):
            if cell.strip():
                row[header[index]] = cell.strip()
                row.key_marks[header[index]] = row.value_marks[header[index]] = Mark(
                    str(path), line_number, columns[index] if index < len(columns) else 1
                )
        rows.append(row)
        rows.item_marks.append(row.mark)
    return rows, issues


def _columns(line: str) -> list[int]:
    """1-based column where each comma-separated cell of a CSV line starts (quotes ignored: good enough)."""
    starts = [1]
    starts.extend(index + 2 for index, char in enumerate(line) if char == ",")
    return starts


def validate_duts(raw: LocatedList) -> tuple[list[DutConfig], ValidationError | None]:
    try:
        return _DUTS.validate_python(raw), None
    except ValidationError as error:
        return [], error


def dut_issues(
    duts: Sequence[tuple[DutConfig, Mark]],
    channel_instruments: Sequence[str],
    unresolved: Collection[str | None] = (),
) -> list[ConfigIssue]:
    """Two DUTs in one socket, a serial used twice, a DUT on an instrument without channels.

    ``unresolved``: instruments whose profile failed to load (reported there), so whether they have channels
    is unknown: a DUT on one of them, or one without an instrument while there are some, is not reported.
    """
    issues = []
    places: dict[tuple[str, int], Mark] = {}
    serials: dict[str, Mark] = {}
    for dut, mark in duts:
        alone = len(channel_instruments) == 1 and not unresolved
        instrument = dut.instrument or (channel_instruments[0] if alone else None)
        if instrument is None:
            if not unresolved:
                known = ", ".join(channel_instruments) or "none"
                issues.append(
                    mark.issue(f"DUT {dut.serial!r}: give its instrument (instruments with channels: {known})")
                )
            continue
        if instrument not in channel_instruments and instrument not in unresolved:
            issues.append(mark.issue(f"DUT {dut.serial!r}: instrument {instrument!r} has no channels: key"))
        if (earlier := places.get((instrument, dut.socket))) is not None:
            issues.append(mark.issue(f"socket {dut.socket} of {instrument!r} already holds a DUT ({earlier})"))
        places.setdefault((instrument, dut.socket), mark)
        if (first := serials.get(dut.serial)) is not None:
            issues.append(mark.issue(f"serial {dut.serial!r} is already used at {first}"))
        serials.setdefault(dut.serial, mark)
    return issues


InvalidReporter = Callable[[ValidationError, object, Mark], list[ConfigIssue]]
"""Turns a validation error of ``channels:`` (its data, its position) into issues: the loader's wording,
passed in so that this module does not import the loader, which imports it."""


def expand_channels(
    source: LocatedDict, duts: Sequence[DutConfig], channel_instruments: Sequence[str], invalid: InvalidReporter
) -> list[ConfigIssue]:
    """Replace ``channels:`` of an instrument mapping (in place) by the points it stands for."""
    raw = source.pop("channels")
    mark = source.value_marks.pop("channels", source.mark)
    source.key_marks.pop("channels", None)
    try:
        channels = ChannelsConfig.model_validate(raw)
    except ValidationError as error:
        return invalid(error, raw, mark)
    name = source.get("name")
    by_socket: dict[int, DutConfig] = {}
    for dut in duts:
        on = dut.instrument or (channel_instruments[0] if len(channel_instruments) == 1 else None)
        if on == name:
            by_socket[dut.socket] = dut
    last = channels.first + channels.count - 1
    issues = [
        mark.issue(f"DUT {dut.serial!r} is in socket {socket}, outside channels {channels.first}..{last}")
        for socket, dut in by_socket.items()
        if not channels.first <= socket <= last
    ]
    width = max(2, len(str(last)))
    templates = raw.get("points") if isinstance(raw, LocatedDict) else None
    points = source.get("points")
    expanded = LocatedList(points.mark if isinstance(points, LocatedList) else mark)
    if isinstance(points, LocatedList):
        expanded.extend(points)
        expanded.item_marks.extend(points.item_marks)
    for channel in range(channels.first, last + 1):
        number = f"{channel:0{width}d}"
        occupant = by_socket.get(channel)
        tags = {SOCKET_TAG: number, **(occupant.identity() if occupant else {})}
        if channels.measurement:
            tags[MEASUREMENT_TAG] = channels.measurement
        for index, template in enumerate(channels.points):
            located = templates[index] if isinstance(templates, LocatedList) else None
            point_mark = templates.item_mark(index) if isinstance(templates, LocatedList) else mark
            point = LocatedDict(point_mark)
            for key, value in template.items():
                if isinstance(located, LocatedDict):
                    point.take(located, key)
                point[key] = _per_channel(key, value, channel - channels.first, channels.stride, channel)
            field = str(template.get("name", ""))
            point["name"] = f"{field}{number}"
            point["tags"] = {**dict(template.get("tags") or {}), **tags, FIELD_TAG: field}
            expanded.append(point)
            expanded.item_marks.append(point_mark)
    source["points"] = expanded
    source.value_marks.setdefault("points", mark)
    return issues


def _per_channel(key: str, value: object, offset: int, stride: int, channel: int) -> object:
    if key == "address" and isinstance(value, int) and not isinstance(value, bool):
        return value + offset * stride
    if isinstance(value, str) and "{channel}" in value:
        return value.replace("{channel}", str(channel))
    return value
