"""Load-time checks of computed points across an instrument: every name an expression reads must exist.

A syntax error is reported by the point's own model (``ComputedPoint``), which the loader places at its column
with :func:`inside_scalar`; the names need the instrument's points, so they are checked here, for
``edge-daq check`` and every load, at the name's line and column.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edge_daq.config.yaml_loader import LocatedDict, LocatedList, Mark
from edge_daq.drivers.base import InstrumentConfig, PlacedInstrument
from edge_daq.errors import ConfigIssue
from edge_daq.processing.computed import name_offset, parse_expression, unknown_names
from edge_daq.reliability.expand import FIELD_TAG


def point_kinds(config: InstrumentConfig) -> dict[str, str]:
    """The fields an instrument's poll gives: ``"record"`` for its main record, ``"channel"`` per channel."""
    kinds: dict[str, str] = {}
    for point in getattr(config, "points", []):
        tags = getattr(point, "tags", None) or {}
        if FIELD_TAG in tags:
            kinds[tags[FIELD_TAG]] = "channel"
            continue
        name, fields = getattr(point, "name", None), getattr(point, "fields", None)
        for one in [name] if isinstance(name, str) else fields or []:
            kinds[one] = "record"
    return kinds


def computed_kinds(config: InstrumentConfig) -> dict[str, str]:
    """The computed points of an instrument and the kind of record they land in (see :func:`point_kinds`)."""
    if not config.computed:
        return {}
    kinds = point_kinds(config)
    computed: dict[str, str] = {}
    for point in config.computed:
        inputs = {kinds.get(name) or computed.get(name) for name in parse_expression(point.expr)[1]}
        kind = "channel" if inputs == {"channel"} else "record"
        computed[point.name] = kinds[point.name] = kind
    return computed


def check_computed(instruments: Sequence[PlacedInstrument]) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for placed in instruments:
        config = placed.config
        if not config.computed:
            continue
        sources = placed.source.get("computed")
        for index, name, message in unknown_names(config.computed, point_kinds(config)):
            source = sources[index] if isinstance(sources, LocatedList) and index < len(sources) else None
            if not isinstance(source, LocatedDict):
                issues.append(placed.source.mark.issue(f"instrument {config.name!r}: {message}"))
                continue
            if not name:
                issues.append(source.value_mark("name").issue(message))
                continue
            expr = config.computed[index].expr
            issues.append(inside_scalar(source.value_mark("expr"), name_offset(expr, name)).issue(message))
    return issues


def inside_scalar(mark: Mark, offset: int) -> Mark:
    """The position ``offset`` characters into the one-line string scalar at ``mark`` (past its quote)."""
    try:
        with Path(mark.path).open(encoding="utf-8", errors="replace") as file:
            for number, line in enumerate(file, start=1):
                if number == mark.line:
                    quoted = line[mark.column - 1 : mark.column] in ("'", '"')
                    return Mark(mark.path, mark.line, mark.column + offset + int(quoted))
    except OSError:
        pass
    return mark
