"""The life table: one row per DUT, from a rig's persisted state (no daemon needed).

Times are stress hours. A failed DUT's life lies between ``last_good_h`` and ``failed_h`` (interval-censored:
the failure is back-dated to its first violation, and the poll before it was the last good one); a DUT
still good at the end is right-censored at ``survived_h``; a removed DUT is right-censored at its removal.
A DUT found failed at a readout lies between its last passing readout (or the test start) and that readout.
The last columns (cycles, readouts) were added after the first release: earlier columns keep their places.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

from edge_daq.reliability.config import DUT_TAG_KEYS
from edge_daq.reliability.enums import DutStatus
from edge_daq.reliability.state import RigState

SECONDS_PER_HOUR = 3600.0


LifeStatus = Literal["failed", "survived", "removed"]


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
    status: LifeStatus
    last_good_h: float | None
    failed_h: float | None  # back-dated to the first violation
    detected_h: float | None
    censored_h: float | None  # survived / removed: the stress time it was known good until
    mode: str
    rule: str
    limit: str
    value: float | None
    failed_cycles: float | None = None  # the cycle count at the first violation, on a rig that counts cycles
    readouts: int = 0  # readouts the DUT was tested at
    last_pass_readout_h: float | None = None
    readout_bin: str = ""  # the bin of its last readout result


def life_table(state: RigState) -> list[LifeRow]:
    test = state.test
    stress_s = state.stress.stress_s
    rows = []
    for serial, dut in state.duts.items():
        failure = dut.failure
        last_good = dut.last_good_stress_s
        status: LifeStatus
        if dut.status is DutStatus.FAILED:
            status, censored = "failed", None
            last_good = failure.last_good_stress_s if failure else None
        elif dut.status is DutStatus.REMOVED:
            status, censored = "removed", dut.removed_stress_s
        else:
            status, censored = "survived", stress_s
        rows.append(
            LifeRow(
                dut=serial,
                instrument=dut.instrument,
                socket=dut.socket,
                **{key: str(dut.identity.get(key, "")) for key in DUT_TAG_KEYS},
                test_id=test.id if test else "",
                test_kind=test.kind if test else "",
                status=status,
                last_good_h=_hours(last_good),
                failed_h=_hours(failure.stress_s) if failure else None,
                detected_h=_hours(failure.detected_stress_s) if failure else None,
                censored_h=_hours(censored),
                mode=failure.mode if failure else "",
                rule=failure.rule if failure else "",
                limit=failure.limit if failure else "",
                value=failure.value if failure else None,
                failed_cycles=failure.cycles if failure else None,
                readouts=len(dut.readouts),
                last_pass_readout_h=_hours(dut.last_pass_stress_s),
                readout_bin="" if not dut.readouts or dut.readouts[-1][3] is None else str(dut.readouts[-1][3]),
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
