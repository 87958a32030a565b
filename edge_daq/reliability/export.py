"""Life data export in layouts reliability tools import: one row per DUT, failure (F) or suspension (S).

Times are stress hours. A failed DUT's life lies in (left, right]: left is its last good poll (0 when it had
none under stress: left-censored), right its first violation; left == right is an exact failure. A survivor or
a removed DUT is a suspension at the stress time it was known good until.

``life-data``: ``dut,state,time_h,left_h,right_h,n,mode``.
    - surpyval: ``Weibull.fit_from_df(df, xl_col="left_h", xr_col="right_h", n_col="n")`` (right_h is ``inf``
      for a suspension, as surpyval codes right censoring; left_h == right_h is an observed failure);
    - reliability: ``XCN_to_FR(X=df.time_h, C=df.state, N=df.n, failure_code="F", censor_code="S")`` then
      ``Fit_Weibull_2P(failures=..., right_censored=...)`` (that fitter has no interval censoring: a failure
      is taken at its first violation, ``time_h``).
``weibull++``: ``Number in State,Last Inspected,State F or S,State End Time,Subset ID 1,Subset ID 2``, the
    columns of a Weibull++ (ReliaSoft) data sheet of times-to-failure with suspensions and interval and left
    censored data: Last Inspected is the interval's left bound (0: left-censored; equal to the end time for an
    exact failure or a suspension); Subset ID 1 the DUT serial, Subset ID 2 the failure mode.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from edge_daq.reliability.life import LifeRow

Layout = Literal["life-data", "weibull++"]
LAYOUTS: tuple[Layout, ...] = ("life-data", "weibull++")
LIFE_DATA_COLUMNS = ("dut", "state", "time_h", "left_h", "right_h", "n", "mode")
WEIBULL_PP_COLUMNS = (
    "Number in State", "Last Inspected", "State F or S", "State End Time", "Subset ID 1", "Subset ID 2"
)  # fmt: skip


def _entry(row: LifeRow) -> tuple[str, float, float, float] | None:
    """(state, time, left, right) of one DUT; None for a suspension with no stress time (no information)."""
    if row.status == "failed" and row.failed_h is not None:
        left = min(row.last_good_h or 0.0, row.failed_h)
        return "F", row.failed_h, left, row.failed_h
    if row.status != "failed" and row.censored_h is not None and row.censored_h > 0:
        return "S", row.censored_h, row.censored_h, float("inf")
    return None


def _number(value: float) -> str:
    return "inf" if value == float("inf") else repr(round(value, 6))


def export_rows(rows: Sequence[LifeRow], layout: Layout) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for row in rows:
        entry = _entry(row)
        if entry is None:
            continue
        state, time, left, right = entry
        if layout == "life-data":
            values = [row.dut, state, _number(time), _number(left), _number(right), "1", row.mode]
            out.append(dict(zip(LIFE_DATA_COLUMNS, values, strict=True)))
        else:
            values = ["1", _number(left if state == "F" else time), state, _number(time), row.dut, row.mode]
            out.append(dict(zip(WEIBULL_PP_COLUMNS, values, strict=True)))
    return out


def write_export(rows: Sequence[LifeRow], path: Path, layout: Layout) -> int:
    """Write the life data in ``layout``; the number of DUTs written (those with a stress time)."""
    columns = LIFE_DATA_COLUMNS if layout == "life-data" else WEIBULL_PP_COLUMNS
    entries = export_rows(rows, layout)
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(entries)
    return len(entries)
