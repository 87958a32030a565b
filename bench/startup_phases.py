"""Start-up by phase, in CPU seconds of this process: importing the daemon, loading the 1000-instrument config
of bench/startup.py, building the daemon. CPU time (``getrusage``) varies less than the wall clock on a shared
machine; A/B two trees by running this module with each tree's interpreter, alternating.

    .venv/bin/python -m bench.startup_phases            # 50 rig files of 20 instruments
    .venv/bin/python -m bench.startup_phases --rigs 5   # a smaller config
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m bench.startup_phases")
    parser.add_argument("--rigs", type=int, default=50)
    parser.add_argument("--per-rig", type=int, default=20, help="instruments per rig file")
    args = parser.parse_args(argv)
    started = cpu()
    from edge_daq.config.loader import load_config
    from edge_daq.daemon import Daemon

    imported = cpu()
    from bench.startup import write_config  # after the measured imports

    with tempfile.TemporaryDirectory(prefix="edge-daq-phases-") as folder:
        gateway = write_config(Path(folder) / "gateway", args.rigs, args.per_rig)
        before_load = cpu()
        config = load_config(gateway)
        loaded = cpu()
        Daemon(config)
        built = cpu()
    print(
        f"CPU s: import {imported - started:.3f}, load {loaded - before_load:.3f}, build {built - loaded:.3f} "
        f"({args.rigs * args.per_rig} instruments)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
