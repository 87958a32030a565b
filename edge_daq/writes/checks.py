"""``edge-daq check`` for the rig file's actions: every write names a writable point of the rig.

Positioned at the offending ``write:`` value; writes to instruments that failed to load (reported at their
cause) are not reported again.
"""

from __future__ import annotations

from typing import Any

from edge_daq.config.yaml_loader import LocatedDict, LocatedList
from edge_daq.errors import ConfigIssue
from edge_daq.writes.action_config import SOCKET_PLACEHOLDER


def _writable(instrument: Any) -> dict[str, bool]:
    """Point names of an instrument -> whether the point has ``write:``."""
    names: dict[str, bool] = {}
    for point in getattr(instrument, "points", ()):
        name = getattr(point, "name", None)
        if name:
            names[name] = getattr(point, "write", None) is not None
    return names


def _matches(pattern: str, names: dict[str, bool]) -> list[str]:
    if SOCKET_PLACEHOLDER not in pattern:
        return [pattern] if pattern in names else []
    prefix, _, suffix = pattern.partition(SOCKET_PLACEHOLDER)
    return [
        name
        for name in names
        if name.startswith(prefix) and name.endswith(suffix) and name[len(prefix) : len(name) - len(suffix)].isdigit()
    ]


def _items(parent: object, *path: str | int) -> list[LocatedDict]:
    node: object = parent
    for key in path:
        if isinstance(key, int):
            node = node[key] if isinstance(node, LocatedList) and key < len(node) else None
        else:
            node = node.get(key) if isinstance(node, LocatedDict) else None
    return [item for item in node if isinstance(item, LocatedDict)] if isinstance(node, LocatedList) else []


def check_action_targets(rig: Any, data: LocatedDict, failed: set[str | None] | None = None) -> list[ConfigIssue]:
    failed = failed or set()
    points = {instrument.name: _writable(instrument) for instrument in rig.instruments}
    lists: list[list[LocatedDict]] = [
        _items(data, "test", "on_start"),
        _items(data, "test", "on_stop"),
        _items(data, "failures", "on_failure"),
    ]
    lists += [_items(rule, "on_failure") for rule in _items(data, "failures", "rules")]
    issues: list[ConfigIssue] = []
    for interlock in _items(data, "interlocks"):
        lists.append(_items(interlock, "do"))
        when = interlock.get("when")
        if isinstance(when, LocatedDict) and isinstance(reference := when.get("point"), str):
            instrument, _, point = reference.rpartition(".")
            if instrument not in failed and point not in points.get(instrument, {}):
                issues.append(when.value_mark("point").issue(f"interlock: {reference!r} is no point of this rig"))
    for actions in lists:
        for action in actions:
            target = action.get("write")
            if not isinstance(target, str):
                continue
            instrument, _, point = target.rpartition(".")
            mark = action.value_mark("write")
            if instrument in failed:
                continue
            if instrument not in points:
                issues.append(mark.issue(f"{target!r}: no instrument {instrument!r} in this rig"))
                continue
            found = _matches(point, points[instrument])
            if not found:
                issues.append(mark.issue(f"{target!r}: instrument {instrument!r} has no point {point!r}"))
            elif not all(points[instrument][name] for name in found):
                issues.append(mark.issue(f"{target!r} is not writable: give the point write: {{min: ..., max: ...}}"))
    return issues
