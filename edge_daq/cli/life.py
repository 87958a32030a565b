"""``edge-daq life RIG``: the life table (one row per DUT) from the rig's persisted state, as CSV.

Usage::

    edge-daq life htol-07 -o htol-07-life.csv [--parquet htol-07-life.parquet] [--readouts htol-07-readouts.csv]
    edge-daq life htol-07 --layout weibull++ -o htol-07-weibull.csv   # life data for reliability tools
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from edge_daq.cli.test_cmd import add_state_arguments, rig_state


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rig")
    parser.add_argument("-o", "--output", type=Path, default=None, help="CSV file (default RIG-life.csv)")
    parser.add_argument("--parquet", type=Path, default=None, help="also write Parquet (needs pyarrow)")
    parser.add_argument("--readouts", type=Path, default=None, help="also write one row per DUT and readout (CSV)")
    parser.add_argument(
        "--layout", choices=("table", "life-data", "weibull++"), default="table",
        help="table: every column; life-data, weibull++: F/S life data for reliability tools",
    )  # fmt: skip
    add_state_arguments(parser)


def run_life(args: argparse.Namespace, out: TextIO) -> int:
    from edge_daq.reliability.life import life_table, write_csv, write_parquet

    state = rig_state(args, "life")
    if isinstance(state, int):
        return state
    rows = life_table(state)
    path = args.output or Path(f"{args.rig}-life.csv")
    if getattr(args, "layout", "table") != "table":  # a Namespace built by hand may predate --layout
        from edge_daq.reliability.export import write_export

        written = write_export(rows, path, args.layout)
        print(f"{written} DUTs as {args.layout} life data (F/S, stress hours) written to {path}", file=out)
        return 0
    write_csv(rows, path)
    counts = {status: sum(1 for row in rows if row.status == status) for status in ("failed", "survived", "removed")}
    print(f"{len(rows)} DUTs ({', '.join(f'{n} {s}' for s, n in counts.items())}) written to {path}", file=out)
    if getattr(args, "readouts", None) is not None:
        from edge_daq.reliability.readout import write_readouts

        count = write_readouts(state, args.readouts)
        print(f"{count} readout results written to {args.readouts}", file=out)
    if args.parquet is not None:
        if write_parquet(rows, args.parquet):
            print(f"also written to {args.parquet}", file=out)
        else:
            print("edge-daq: Parquet needs pyarrow (pip install pyarrow); CSV written", file=sys.stderr)
    return 0
