"""Command line of the simulators; ``edge-daq simulate ...`` delegates here.

Usage::

    edge-daq simulate --list
    edge-daq simulate KIND [--tcp HOST:PORT] [--seed N] [--units 1,2,...] [--fault F]... [--time-scale X]
                           [--latency SECONDS] [--unknown-unit exception|silent] [model options]

Faults (repeatable): ``no-answer[:UNIT]``, ``exception02``, ``slow:SECONDS``, ``drop-after:N``.
Prints one line such as ``watlow-f4 listening on 127.0.0.1:5020 (units 1)`` once it accepts
connections (with the real port when ``--tcp HOST:0`` asked for a free one) and stops cleanly on SIGINT
or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import structlog

from simulators import SIMULATORS, SimulatorSpec, create_server
from simulators.modbus_server import Faults, ModbusTcpServer


def _endpoint(text: str) -> tuple[str, int]:
    host, separator, port = text.rpartition(":")
    if not separator or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _units(text: str) -> list[int]:
    try:
        units = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected unit ids such as 1,2,3, got {text!r}") from None
    if not units or any(not 0 <= unit <= 255 for unit in units):
        raise argparse.ArgumentTypeError(f"unit ids are 0..255, got {text!r}")
    return units


def _fault(text: str) -> str:
    try:
        Faults.parse([text])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-daq simulate", description="Run a simulated instrument as a Modbus TCP server."
    )
    parser.add_argument("--list", action="store_true", help="list the simulator kinds and exit")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND")
    for spec in SIMULATORS.values():
        sub = kinds.add_parser(spec.kind, help=spec.description, description=spec.description)
        common = sub.add_argument_group("server")
        common.add_argument(
            "--tcp",
            type=_endpoint,
            default=("127.0.0.1", spec.default_port),
            metavar="HOST:PORT",
            help=f"listen address (default 127.0.0.1:{spec.default_port}; port 0 picks a free one)",
        )
        common.add_argument("--seed", type=int, default=None, help="seed of the models (default: random)")
        common.add_argument("--units", type=_units, default=[1], help="unit ids served, e.g. 1,2,3 (default 1)")
        common.add_argument(
            "--fault",
            type=_fault,
            action="append",
            default=[],
            metavar="FAULT",
            help="no-answer[:UNIT] | exception02 | slow:SECONDS | drop-after:N (repeatable)",
        )
        common.add_argument(
            "--time-scale",
            type=_non_negative,
            default=1.0,
            help="model seconds per real second (default 1; 0 freezes the model)",
        )
        common.add_argument("--latency", type=_non_negative, default=0.0, help="seconds before every reply")
        common.add_argument(
            "--unknown-unit",
            choices=("exception", "silent"),
            default="exception",
            help="answer an unknown unit id with exception 0x0B (default) or not at all",
        )
        common.add_argument("-v", "--verbose", action="store_true", help="log connections to stderr")
        spec.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        width = max(len(kind) for kind in SIMULATORS)
        for spec in SIMULATORS.values():
            print(f"{spec.kind:<{width}}  {spec.description}")
        return 0
    if args.kind is None:
        parser.print_usage(sys.stderr)
        print("edge-daq simulate: error: give a simulator KIND or --list", file=sys.stderr)
        return 2
    spec = SIMULATORS[args.kind]
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if args.verbose else logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    host, port = args.tcp
    try:
        server = create_server(
            spec.kind,
            host=host,
            port=port,
            seed=args.seed,
            units=args.units,
            faults=args.fault,
            time_scale=args.time_scale,
            latency=args.latency,
            unknown_unit=args.unknown_unit,
            **spec.options_from_args(args),
        )
    except ValueError as exc:
        print(f"edge-daq simulate: error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run(spec, server))


async def _run(spec: SimulatorSpec, server: ModbusTcpServer) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        try:
            await server.start()
        except OSError as exc:
            print(f"{spec.kind}: cannot listen on {server.host}: {exc}", file=sys.stderr)
            return 1
        try:
            units = ",".join(str(unit) for unit in server.units)
            faults = server.faults.describe()
            print(
                f"{spec.kind} listening on {server.host}:{server.port} (units {units})"
                + (f" faults: {' '.join(faults)}" if faults else ""),
                flush=True,
            )
            await stop.wait()
        finally:
            await server.close()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
