"""The life table: one row per DUT, from a rig's persisted state (no daemon needed).

Times are stress hours. A failed DUT's life lies between ``last_good_h`` and ``failed_h`` (interval-censored:
the failure is back-dated to its first violation, and the poll before it was the last good one); a DUT
still good at the end is right-censored at ``survived_h``; a removed DUT is right-censored at its removal.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from edge_daq.reliability.config import DUT_TAG_KEYS

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class LifeRow:
    dut: str
    instrument: str
    socket: int
    serial: str
    lot: str
    sublot: str
    wafer: str
    x: str
    y: str
    date_code: str
    board: str
    slot: str
    bin: str
    test_id: str
    test_kind: str
    status: str  # failed | survived | removed
    last_good_h: float | None
    failed_h: float | None  # back-dated to the first violation
    detected_h: float | None
    censored_h: float | None  # survived / removed: the stress time it was known good until
    mode: str
    rule: str
    limit: str
    value: float | None


def life_table(state: Mapping[str, Any]) -> list[LifeRow]:
    test = state.get("test") or {}
    stress_s = float(state["stress"]["stress_s"])
    rows = []
    for serial, dut in state["duts"].items():
        identity = dut["identity"]
        failure = dut.get("failure") or {}
        status = dut["status"]
        last_good = dut.get("last_good_stress_s")
        if status == "failed":
            censored = None
            last_good = failure.get("last_good_stress_s")
        elif status == "removed":
            censored = dut.get("removed_stress_s")
        else:
            status, censored = "survived", stress_s
        rows.append(
            LifeRow(
                dut=serial,
                instrument=dut["instrument"],
                socket=int(dut["socket"]),
                **{key: str(identity.get(key, "")) for key in DUT_TAG_KEYS},
                test_id=str(test.get("id", "")),
                test_kind=str(test.get("kind", "")),
                status=status,
                last_good_h=_hours(last_good),
                failed_h=_hours(failure.get("stress_s")),
                detected_h=_hours(failure.get("detected_stress_s")),
                censored_h=_hours(censored),
                mode=str(failure.get("mode", "")),
                rule=str(failure.get("rule", "")),
                limit=str(failure.get("limit", "")),
                value=failure.get("value"),
            )
        )
    rows.sort(key=lambda row: (row.instrument, row.socket))
    return rows


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else round(float(seconds) / SECONDS_PER_HOUR, 6)


COLUMNS = [f.name for f in fields(LifeRow)]


def write_csv(rows: Sequence[LifeRow], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in asdict(row).items()})


def write_parquet(rows: Sequence[LifeRow], path: Path) -> bool:
    """Write Parquet if pyarrow is installed; False if it is not."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    table = pa.Table.from_pylist([asdict(row) for row in rows])
    pq.write_table(table, path)
    return True
