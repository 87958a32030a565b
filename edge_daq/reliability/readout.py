"""Readouts: the DUTs leave the chamber for the ATE at a milestone and come back with its results.

``readout start`` holds stress (an exclusion with reason ``readout``; failure rules are not judged while the
sockets are empty) and records when the DUTs left. ``readout end`` brings them back with the ATE's results
(:mod:`edge_daq.reliability.results`): a DUT that passed in situ but fails at the readout is failed,
interval-censored between its last passing readout (or the test start) and this readout, with its bin as the
mode. Every DUT's result is an event (``readout_result``) and part of its life-table row; the readout itself
is a ``readout_started`` and a ``readout_ended`` event and a row of :func:`readout_rows`.
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from edge_daq.reliability.enums import DutStatus, TestState
from edge_daq.reliability.failures import DutState, Failure
from edge_daq.reliability.results import AteResults, PartResult, ResultsError, read_results
from edge_daq.reliability.state import RigState

if TYPE_CHECKING:
    from edge_daq.reliability.engine import RigEngine

log = structlog.get_logger("edge_daq.reliability")

NS = 1_000_000_000
LISTED = 20
"""Serials named in a reply or an event message; the full lists are in the event's details."""


def start(engine: RigEngine, now: int) -> dict[str, Any]:
    test = engine.test
    if test is None or not test.active:
        return {"ok": False, "error": "no test is running"}
    if test.readout is not None:
        return {"ok": False, "error": f"readout {test.readout['readout']} is already under way: end it first"}
    if test.state is TestState.PAUSED:
        return {"ok": False, "error": "the test is paused: resume it before a readout"}
    engine.clock.advance(now, running=True)
    state = engine.stress_state
    milestones = state.milestones_done
    readout = {
        "readout": len(test.readouts) + 1,
        "started_ns": now,
        "stress_s": state.stress_s,
        "cycles": state.cycles,
        "milestone_h": milestones[-1] / 3600 if milestones else None,
        "ended_ns": None,
    }
    test.readouts.append(readout)
    engine.judge_now(now)
    active = sum(1 for dut in engine.duts.values() if dut.status is DutStatus.ACTIVE)
    details = {k: v for k, v in readout.items() if k not in ("ended_ns", "started_ns") and v is not None}
    engine.event(
        "readout_started",
        f"readout {readout['readout']} at {state.stress_s / 3600:.6g} h: {active} DUTs out of the chamber",
        {**details, "active_duts": active},
        now,
    )
    engine.save(now)
    return {"ok": True, "message": f"readout {readout['readout']} started: stress held, {active} DUTs out"}


@dataclass(slots=True)
class _Tally:
    passed: int = 0
    failed: int = 0
    new_failures: int = 0
    missing: list[str] = field(default_factory=list)
    undetermined: list[str] = field(default_factory=list)


def end(engine: RigEngine, results: AteResults, now: int) -> dict[str, Any]:
    """Apply the parsed results and resume stress (the results were read off the event loop)."""
    test = engine.test
    readout = test.readout if test is not None and test.active else None
    if test is None or readout is None:
        return {"ok": False, "error": "no readout is under way: start one with `edge-daq test readout start`"}
    index, stress_s = int(readout["readout"]), float(readout["stress_s"])
    tally = _Tally()
    known: set[str] = set()
    for serial, dut in engine.duts.items():
        known.add(serial)
        if dut.status is DutStatus.REMOVED:
            continue
        result = results.parts.get(serial)
        if result is None:
            reason = "undetermined" if serial in results.undetermined else "missing"
            (tally.undetermined if reason == "undetermined" else tally.missing).append(serial)
            message = f"DUT {serial}: no result at readout {index}" + (
                " (the file does not say pass or fail)" if reason == "undetermined" else ""
            )
            engine.event("readout_result", message, {"readout": index, "result": reason}, now, dut)
            continue
        _record(engine, dut, result, index, stress_s, readout, now, tally)
    unknown = sorted(set(results.parts) - known)
    out_s = (now - int(readout["started_ns"])) / NS
    missing, undetermined = tally.missing, tally.undetermined
    summary = {
        "passed": tally.passed,
        "failed": tally.failed,
        "new_failures": tally.new_failures,
        "missing": len(missing),
        "undetermined": len(undetermined),
        "unknown": len(unknown),
        "retested": results.retested,
        "unidentified": results.unidentified,
    }
    readout.update(
        ended_ns=now,
        out_of_chamber_s=out_s,
        results={"file": results.name, "format": results.format, "sha256": results.sha256, **summary},
    )
    for dut in engine.duts.values():  # back in: the first poll after the readout is each DUT's new reference
        dut.streaks.clear()
        dut.counters.clear()
    engine.judge_now(now)
    text = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in summary.items() if n or k in ("passed", "failed"))
    engine.event(
        "readout_ended",
        f"readout {index} ended after {out_s:.0f} s out of the chamber: {text}",
        {
            "readout": index,
            "out_of_chamber_s": out_s,
            "file": results.name,
            "format": results.format,
            "sha256": results.sha256,
            **summary,
            "missing_duts": missing,
            "unknown_serials": unknown[:1000],
        },
        now,
    )
    engine.save(now)
    reply = f"readout {index} ended ({out_s:.0f} s out): {text}"
    if missing:
        reply += f"; missing: {_listed(missing)}"
    if unknown:
        reply += f"; not in this rig: {_listed(unknown)}"
    return {"ok": True, "message": reply, "summary": summary}


async def end_with_file(rig: RigEngine, request: Mapping[str, Any]) -> dict[str, Any]:
    """End a rig's readout with the results file the request names, read and parsed in a worker thread."""
    if not rig.in_readout:
        return {"ok": False, "error": "no readout is under way: start one with `edge-daq test readout start`"}
    path, kind = request.get("results"), request.get("format", "auto")
    if not isinstance(path, str) or not path or kind not in ("auto", "stdf", "csv"):
        return {"ok": False, "error": "readout end needs results: a file path (format auto, stdf or csv)"}
    try:
        results = await asyncio.to_thread(read_results, Path(path), format=kind)
    except ResultsError as error:
        rig.results_refused += 1
        log.warning("readout_results_refused", rig=rig.name, error=str(error)[:300])
        return {"ok": False, "error": str(error)}
    return end(rig, results, time.time_ns())


def _record(
    engine: RigEngine,
    dut: DutState,
    result: PartResult,
    index: int,
    stress_s: float,
    readout: Mapping[str, Any],
    now: int,
    tally: _Tally,
) -> None:
    last_pass = dut.last_pass_stress_s
    dut.readouts.append([index, stress_s, result.passed, result.bin])
    details = {"readout": index, "result": "pass" if result.passed else "fail", "bin": result.bin,
               "bin_name": result.bin_name, "hard_bin": result.hard_bin, "position": result.position}  # fmt: skip
    verdict = "passed" if result.passed else f"failed ({result.mode})"
    engine.event("readout_result", f"DUT {dut.identity['dut']} {verdict} at readout {index}", details, now, dut)
    if result.passed:
        tally.passed += 1
        return
    tally.failed += 1
    if dut.status is not DutStatus.ACTIVE:
        return  # failed in situ already: its result is recorded, its failure stays the one found in situ
    tally.new_failures += 1
    test = engine.test
    assert test is not None
    previous = next((r for r in reversed(test.readouts[:-1]) if r["readout"] == _last_pass_index(dut)), None)
    dut.status = DutStatus.FAILED
    dut.failure = Failure(
        rule="readout",
        mode=result.mode,
        field="",
        limit="ATE fail",
        value=float(result.bin if result.bin is not None else 0),
        time_ns=int(readout["started_ns"]),
        stress_s=stress_s,
        detected_ns=now,
        detected_stress_s=stress_s,
        events=1,
        last_good_ns=int(previous["started_ns"]) if previous else test.started_ns,
        last_good_stress_s=last_pass if last_pass is not None else 0.0,
        before={},
        after={k: v for k, v in (("bin", result.bin), ("hard_bin", result.hard_bin)) if v is not None},
        cycles=float(readout["cycles"]) if readout.get("cycles") else None,
        readout=index,
    )
    engine.failure_event(dut, dut.failure, now)


def _last_pass_index(dut: DutState) -> int | None:
    return next((int(r[0]) for r in reversed(dut.readouts[:-1]) if r[2]), None)


def _listed(serials: list[str]) -> str:
    more = len(serials) - LISTED
    return ", ".join(serials[:LISTED]) + (f" and {more} more" if more > 0 else "")


READOUT_COLUMNS = ("test_id", "readout", "dut", "stress_h", "result", "bin", "started", "out_of_chamber_s")


def readout_rows(state: RigState) -> list[dict[str, Any]]:
    """One row per DUT and readout it was tested at: the readouts as a table (``edge-daq life --readouts``)."""
    test = state.test
    if test is None:
        return []
    by_index = {int(r["readout"]): r for r in test.readouts}
    rows = []
    for serial, dut in state.duts.items():
        for index, stress_s, passed, number in dut.readouts:
            readout = by_index.get(int(index), {})
            rows.append(
                {
                    "test_id": test.id,
                    "readout": int(index),
                    "dut": serial,
                    "stress_h": round(float(stress_s) / 3600, 6),
                    "result": "pass" if passed else "fail",
                    "bin": "" if number is None else number,
                    "started": readout.get("started_ns", ""),
                    "out_of_chamber_s": readout.get("out_of_chamber_s", ""),
                }
            )
    rows.sort(key=lambda row: (row["readout"], row["dut"]))
    return rows


def write_readouts(state: RigState, path: Path) -> int:
    """Write :func:`readout_rows` as CSV; the number of rows."""
    rows = readout_rows(state)
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=READOUT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)
