"""``edge-daq report RIG``: Weibull fit with censoring, chi-squared FIT and a probability plot.

Usage::

    edge-daq report htol-07 [--confidence 0.9] [--ea 0.7 --use-temp 55 --stress-temp 125] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from edge_daq.cli.test_cmd import add_state_arguments, rig_state


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rig")
    parser.add_argument("--confidence", type=float, default=0.9, help="two-sided level of the beta/eta bounds")
    parser.add_argument("--ea", type=float, default=None, help="activation energy in eV (Arrhenius)")
    parser.add_argument("--use-temp", type=float, default=None, help="use junction temperature, degC")
    parser.add_argument("--stress-temp", type=float, default=None, help="stress junction temperature, degC")
    parser.add_argument("--plot", type=Path, default=None, help="probability plot PNG (default RIG-weibull.png)")
    add_state_arguments(parser)


def run_report(args: argparse.Namespace, out: TextIO) -> int:
    from edge_daq.reliability.life import life_table
    from edge_daq.reliability.weibull import arrhenius_factor, device_hours, fit_rate, fit_weibull, probability_plot

    arrhenius = (args.ea, args.use_temp, args.stress_temp)
    if any(value is not None for value in arrhenius) and None in arrhenius:
        print("edge-daq report: --ea, --use-temp and --stress-temp go together", file=sys.stderr)
        return 2
    state = rig_state(args, "report")
    if isinstance(state, int):
        return state
    rows = life_table(state)
    failures = sum(1 for row in rows if row.status == "failed")
    hours = device_hours(rows)
    test = state.get("test") or {}
    print(f"rig {args.rig}, test {test.get('id', '-')} ({test.get('kind', '-')}): {len(rows)} DUTs, "
          f"{failures} failed, {hours:.1f} device-hours", file=out)  # fmt: skip
    factor = 1.0
    if args.ea is not None:
        factor = arrhenius_factor(args.ea, args.use_temp, args.stress_temp)
        print(f"Arrhenius AF = {factor:.4g} (Ea {args.ea} eV, {args.use_temp} -> {args.stress_temp} degC)", file=out)
    try:
        for level in (0.6, 0.9):
            rate = fit_rate(failures, hours, level, factor)
            print(f"failure rate at {level:.0%} confidence (chi-squared): {rate:.4g} FIT", file=out)
        fit = fit_weibull(rows, confidence=args.confidence)
    except RuntimeError as error:  # SciPy missing
        print(f"edge-daq: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"Weibull fit not possible: {error}", file=out)
        return 0
    shown = f"{args.confidence:.0%}"
    print(f"Weibull (MLE, interval/right-censored): beta = {fit.beta:.4g} [{fit.beta_bounds[0]:.4g}, "
          f"{fit.beta_bounds[1]:.4g}], eta = {fit.eta:.4g} h [{fit.eta_bounds[0]:.4g}, {fit.eta_bounds[1]:.4g}] "
          f"({shown} Fisher-matrix bounds)", file=out)  # fmt: skip
    plot = args.plot or Path(f"{args.rig}-weibull.png")
    probability_plot(rows, fit, plot, title=f"{args.rig} {test.get('id', '')}: Weibull probability plot")
    print(f"probability plot written to {plot}", file=out)
    return 0
