"""``edge-daq life RIG``: the life table (one row per DUT) from the rig's persisted state, as CSV.

Usage::

    edge-daq life htol-07 -o htol-07-life.csv [--parquet htol-07-life.parquet]
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
    add_state_arguments(parser)


def run_life(args: argparse.Namespace, out: TextIO) -> int:
    from edge_daq.reliability.life import life_table, write_csv, write_parquet

    state = rig_state(args, "life")
    if isinstance(state, int):
        return state
    rows = life_table(state)
    path = args.output or Path(f"{args.rig}-life.csv")
    write_csv(rows, path)
    counts = {status: sum(1 for row in rows if row.status == status) for status in ("failed", "survived", "removed")}
    print(f"{len(rows)} DUTs ({', '.join(f'{n} {s}' for s, n in counts.items())}) written to {path}", file=out)
    if args.parquet is not None:
        if write_parquet(rows, args.parquet):
            print(f"also written to {args.parquet}", file=out)
        else:
            print("edge-daq: Parquet needs pyarrow (pip install pyarrow); CSV written", file=sys.stderr)
    return 0
