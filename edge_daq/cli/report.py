"""``edge-daq report RIG``: device-hours, acceleration, chi-squared FIT, censored Weibull fit, probability plot.

Usage::

    edge-daq report htol-07 [--confidence 0.9] [--fit-confidence 0.6 ...] [--plot FILE.png]
                            [--model 'arrhenius:ea=0.7,use_temp=55,stress_temp=125' ...]
                            [--ea 0.7 --use-temp 55 --stress-temp 125]

Acceleration models come from ``--model`` (repeatable), else from the rig file's ``acceleration:`` list.
The report never fails on what the data cannot give (no device-hours, no or one failure, a degenerate fit):
it prints what it can, says what it cannot compute and why, and exits 0.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from edge_daq.cli.test_cmd import DEFAULT_CONFIG, add_state_arguments, print_config_issues, state_dir_of

if TYPE_CHECKING:
    from edge_daq.reliability.acceleration import AccelerationModel
    from edge_daq.reliability.state import RigState


def _level(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a confidence level such as 0.9, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"a confidence level is between 0 and 1 (0.9 is 90 %), got {text!r}")
    return value


def _model(text: str) -> AccelerationModel:
    from edge_daq.reliability.acceleration import parse_model

    try:
        return parse_model(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rig")
    parser.add_argument("--confidence", type=_level, default=0.9, help="two-sided level of the beta/eta bounds")
    parser.add_argument(
        "--fit-confidence", type=_level, action="append", default=None, metavar="LEVEL",
        help="one-sided level of the chi-squared FIT bound (repeatable; default 0.6 and 0.9)",
    )  # fmt: skip
    parser.add_argument(
        "--model", type=_model, action="append", default=None, metavar="NAME:KEY=VALUE,...",
        help="acceleration model (repeatable; replaces the rig file's acceleration:), e.g. "
        "'peck:ea=0.79,exponent=2.66,use_temp=30,use_rh=60,stress_temp=85,stress_rh=85'",
    )  # fmt: skip
    parser.add_argument("--ea", type=float, default=None, help="activation energy in eV (Arrhenius)")
    parser.add_argument("--use-temp", type=float, default=None, help="use junction temperature, degC")
    parser.add_argument("--stress-temp", type=float, default=None, help="stress junction temperature, degC")
    parser.add_argument("--plot", type=Path, default=None, help="probability plot PNG (default RIG-weibull.png)")
    add_state_arguments(parser)


def run_report(args: argparse.Namespace, out: TextIO) -> int:
    arrhenius = (args.ea, args.use_temp, args.stress_temp)
    if any(value is not None for value in arrhenius) and None in arrhenius:
        print("edge-daq report: --ea, --use-temp and --stress-temp go together", file=sys.stderr)
        return 2
    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    state, rig_models = loaded
    models = list(getattr(args, "model", None) or [])  # a Namespace built by hand may predate --model
    if args.ea is not None:
        models.append(_model(f"arrhenius:ea={args.ea},use_temp={args.use_temp},stress_temp={args.stress_temp}"))
    if not models:
        models = rig_models
    try:
        _report(args, state, models, out)
    except RuntimeError as error:  # SciPy or matplotlib missing
        print(f"edge-daq: {error}", file=sys.stderr)
        return 1
    return 0


def _load(args: argparse.Namespace) -> tuple[RigState | None, list[AccelerationModel]] | int:
    """The rig's saved state (None: no test has run yet) and the rig file's acceleration models."""
    from edge_daq.config.loader import load_config
    from edge_daq.errors import ConfigError
    from edge_daq.reliability.state import load_state

    models: list[AccelerationModel] = []
    known_rig = False
    try:
        if args.config is not None or args.state_dir is None:
            config = load_config(args.config or DEFAULT_CONFIG)
            rig = next((rig for rig in config.rigs if rig.rig == args.rig), None)
            if rig is None:
                print(f"edge-daq report: no rig {args.rig!r} in the gateway's rig files", file=sys.stderr)
                return 1
            models, known_rig = list(rig.acceleration), True
        state = load_state(state_dir_of(args), args.rig)
    except ConfigError as error:
        return print_config_issues(error)
    except (OSError, ValueError) as error:  # unreadable, or not a state this release knows
        print(f"edge-daq report: {error}", file=sys.stderr)
        return 1
    if state is None and not known_rig:
        print(f"edge-daq report: no reliability state for rig {args.rig!r}", file=sys.stderr)
        return 1
    return state, models


def _report(args: argparse.Namespace, state: RigState | None, models: list[AccelerationModel], out: TextIO) -> None:
    from edge_daq.reliability.acceleration import StressFacts, combine, fit_rate
    from edge_daq.reliability.life import life_table
    from edge_daq.reliability.weibull import FitError, device_hours, fit_weibull, life_data

    def say(text: str) -> None:
        print(text, file=out)

    if state is None or state.test is None:
        say(f"rig {args.rig}: no test has started: no device-hours yet, nothing to report")
        return
    rows = life_table(state)
    counts = {status: sum(1 for row in rows if row.status == status) for status in ("failed", "survived", "removed")}
    failures, hours = counts["failed"], device_hours(rows)
    stress_h, cycles = state.stress.stress_s / 3600, state.stress.cycles
    say(f"rig {args.rig}, test {state.test.id} ({state.test.kind}): {len(rows)} DUTs, {failures} failed, "
        f"{counts['survived']} survived, {counts['removed']} removed; {hours:.1f} device-hours "
        f"({stress_h:.2f} stress hours, {cycles} cycles)")  # fmt: skip
    if not rows:
        say("no DUTs in the life table: no failure rate, no Weibull fit")
        return
    facts = StressFacts(cycles_per_day=cycles / (stress_h / 24) if cycles and stress_h > 0 else None)
    factors = []
    for model in models:
        try:
            factor = model.factor(facts)
        except ValueError as error:
            say(f"acceleration: not computable: {error}")
            continue
        factors.append(factor)
        unit = " (cycles to failure)" if factor.per_cycle else ""
        say(f"acceleration: {factor.model} AF = {factor.af:.4g}{unit} ({factor.description})")
    time_factor = combine(factors)
    where = "at use conditions" if factors else "at stress conditions (no acceleration model)"
    if hours <= 0:
        say("no device-hours yet: no failure rate, no Weibull fit")
        return
    if factors:
        say(f"equivalent use-condition device-hours: {hours * time_factor:.4g} "
            f"({time_factor:.4g} use hours per stress hour)")  # fmt: skip
    for level in getattr(args, "fit_confidence", None) or (0.6, 0.9):
        rate = fit_rate(failures, hours, level, time_factor)
        if rate is not None:
            say(f"failure rate at {level:.0%} confidence (chi-squared): {rate:.4g} FIT {where}, "
                f"{failures} failures")  # fmt: skip
    data = life_data(rows)
    if data.at_zero:
        say(f"{data.at_zero} failed at 0 stress hours (before any stress): in the failure rate, not in the Weibull fit")
    if left := sum(1 for low, _ in data.interval if low <= 0):
        say(f"{left} failed with no good poll under stress before: left-censored, (0, first violation] in the fit")
    try:
        fit = fit_weibull(rows, confidence=args.confidence)
    except FitError as error:
        say(f"Weibull fit not possible: {error}; no probability plot")
        return
    say(f"Weibull (MLE, interval/right-censored): beta = {fit.beta:.4g} {_bounds(fit.beta_bounds)}, "
        f"eta = {fit.eta:.4g} h {_bounds(fit.eta_bounds)} ({args.confidence:.0%} Fisher-matrix bounds)")  # fmt: skip
    if factors:
        say(f"Weibull eta at use conditions: {fit.eta * time_factor:.4g} h (beta unchanged)")
    from edge_daq.reliability.weibull_plot import probability_plot

    plot = args.plot or Path(f"{args.rig}-weibull.png")
    try:
        probability_plot(rows, fit, plot, title=f"{args.rig} {state.test.id}: Weibull probability plot")
    except ImportError as error:
        say(f"no probability plot: {error} (pip install 'edge-daq[analysis]')")
        return
    except OSError as error:
        say(f"no probability plot: cannot write {plot}: {error.strerror or error}")
        return
    say(f"probability plot written to {plot}")


def _bounds(bounds: tuple[float, float]) -> str:
    if not all(math.isfinite(value) for value in bounds):
        return "[bounds not computable: singular information matrix]"
    return f"[{bounds[0]:.4g}, {bounds[1]:.4g}]"
