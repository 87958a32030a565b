"""Command line of the simulators; ``edge-daq simulate ...`` delegates here.

Usage::

    edge-daq simulate --list                      # the Modbus register models
    edge-daq simulate --list-all                  # every kind, with its protocol
    edge-daq simulate KIND [--tcp HOST:PORT] [--seed N] [--units 1,2,...] [--fault F]... [--time-scale X]
                           [--latency SECONDS] [--unknown-unit exception|silent] [model options]
    edge-daq simulate watlow-f4 --pty /tmp/ttyF4 --baudrate 19200 --parity E --units 1,2,3   # Modbus RTU
    edge-daq simulate endurance-rig --pty /tmp/ttyRig [--rtu-tcp HOST:PORT]
    edge-daq simulate keithley-2400 [--tcp HOST:PORT] [--pty LINK --baudrate 9600]

Faults (repeatable): ``no-answer[:UNIT]``, ``exception02``, ``slow:SECONDS``, ``drop-after:N``,
``crc-error[:UNIT]`` (RTU), ``garbage``. Prints one line such as
``watlow-f4 listening on 127.0.0.1:5020 (units 1)`` once it serves (with the real port when ``--tcp HOST:0``
asked for a free one) and stops cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import structlog

from simulators import (
    BUS_SIMULATORS,
    LINE_SIMULATORS,
    OPCUA_SIMULATORS,
    SIMULATORS,
    LineServer,
    ModbusRtuServer,
    create_line_server,
    create_rtu_server,
    create_server,
    watlow_f4,
)
from simulators.modbus_server import Faults, ModbusTcpServer

Server = ModbusTcpServer | ModbusRtuServer | LineServer
# Kinds whose physics a person watches in real time run faster by default; the rest run at 1.
DEFAULT_TIME_SCALES = {"watlow-f4": watlow_f4.DEFAULT_TIME_SCALE}


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
        prog="edge-daq simulate",
        description="Run a simulated instrument for trying rig files without the hardware: Modbus controllers "
        "and boards (a Modbus TCP server, or Modbus RTU on a pseudo-terminal or raw TCP), an RS-485 bus of "
        "several Modbus RTU devices, and SCPI/ASCII instruments (on TCP or a pseudo-terminal serial line).",
        epilog="`edge-daq simulate --list-all` shows each kind with its protocol; `edge-daq simulate KIND --help` "
        "its options.",
    )
    parser.add_argument("--list", action="store_true", help="list the simulator kinds and exit")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND")
    for spec in SIMULATORS.values():
        sub = kinds.add_parser(spec.kind, help=spec.description, description=spec.description)
        common = sub.add_argument_group("server")
        common.add_argument(
            "--tcp",
            type=_endpoint,
            default=None,
            metavar="HOST:PORT",
            help=f"Modbus TCP listen address (default 127.0.0.1:{spec.default_port} unless --pty or --rtu-tcp; "
            "port 0 picks a free one)",
        )
        _add_rtu_arguments(common)
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
        time_scale = DEFAULT_TIME_SCALES.get(spec.kind, 1.0)
        common.add_argument(
            "--time-scale",
            type=_non_negative,
            default=time_scale,
            help=f"model seconds per real second (default {time_scale:g}; 0 freezes the model); "
            "a rig simulated with it sets stress.time_scale to the same value",
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
    for bus in BUS_SIMULATORS.values():
        sub = kinds.add_parser(bus.kind, help=bus.description, description=bus.description)
        common = sub.add_argument_group("bus (Modbus RTU)")
        _add_rtu_arguments(common)
        _add_model_arguments(common, units_default=list(bus.default_units), unknown_default="silent")
        bus.add_arguments(sub)
    for line in LINE_SIMULATORS.values():
        sub = kinds.add_parser(line.kind, help=line.description, description=line.description)
        common = sub.add_argument_group("server")
        common.add_argument(
            "--tcp",
            type=_endpoint,
            default=None,
            metavar="HOST:PORT",
            help=f"listen address (default 127.0.0.1:{line.default_port} unless --pty; port 0 picks a free one)",
        )
        common.add_argument("--pty", metavar="LINK", default=None, help="serve a pseudo-terminal, symlinked at LINK")
        common.add_argument("--baudrate", type=int, default=9600, help="line rate simulated on --pty (default 9600)")
        common.add_argument("--seed", type=int, default=None, help="seed of the model (default: random)")
        common.add_argument(
            "--fault", type=_fault, action="append", default=[], metavar="FAULT",
            help="no-answer | slow:SECONDS | garbage | drop-after:N (repeatable)",
        )  # fmt: skip
        common.add_argument("--time-scale", type=_non_negative, default=1.0, help="model seconds per real second")
        common.add_argument("--latency", type=_non_negative, default=0.0, help="seconds before every reply")
        common.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
        line.add_arguments(sub)
    for kind, description in OPCUA_SIMULATORS.items():
        from simulators import opcua_chamber, watlow_f4

        sub = kinds.add_parser(kind, help=description, description=description)
        common = sub.add_argument_group("server (OPC UA)")
        common.add_argument(
            "--tcp", type=_endpoint, default=("127.0.0.1", 4840), metavar="HOST:PORT",
            help="listen address (default 127.0.0.1:4840; port 0 picks a free one)",
        )  # fmt: skip
        common.add_argument("--seed", type=int, default=None, help="seed of the model (default: random)")
        common.add_argument("--time-scale", type=_non_negative, default=1.0, help="model seconds per real second")
        opcua_chamber.add_arguments(sub)
        watlow_f4.add_arguments(sub)
    parser.add_argument("--list-all", action="store_true", help="list every simulator kind with its protocol")
    return parser


def _add_rtu_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--pty", metavar="LINK", default=None, help="serve Modbus RTU on a pseudo-terminal at LINK")
    group.add_argument(
        "--rtu-tcp", type=_endpoint, default=None, metavar="HOST:PORT",
        help="serve Modbus RTU frames on raw TCP (a serial device server)",
    )  # fmt: skip
    group.add_argument("--baudrate", type=int, default=19200, help="RTU line rate, honoured in timing (19200)")
    group.add_argument("--parity", choices=("N", "E", "O"), default="E", help="RTU parity (default E)")
    group.add_argument("--stopbits", type=int, choices=(1, 2), default=1, help="RTU stop bits (default 1)")
    group.add_argument(
        "--ascii", action="store_true", help="Modbus ASCII (':' frames, LRC, CR LF, 7 data bits) instead of RTU"
    )


def _add_model_arguments(group: argparse._ArgumentGroup, *, units_default: list[int], unknown_default: str) -> None:
    group.add_argument("--seed", type=int, default=None, help="seed of the models (default: random)")
    group.add_argument("--units", type=_units, default=units_default, help="unit ids served, e.g. 1,2,3")
    group.add_argument(
        "--fault", type=_fault, action="append", default=[], metavar="FAULT",
        help="no-answer[:UNIT] | exception02 | slow:SECONDS | crc-error[:UNIT] | garbage (repeatable)",
    )  # fmt: skip
    group.add_argument("--time-scale", type=_non_negative, default=1.0, help="model seconds per real second")
    group.add_argument("--latency", type=_non_negative, default=0.0, help="seconds before every reply")
    group.add_argument("--unknown-unit", choices=("exception", "silent"), default=unknown_default)
    group.add_argument("-v", "--verbose", action="store_true", help="log to stderr")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        width = max(len(kind) for kind in SIMULATORS)
        for spec in SIMULATORS.values():
            print(f"{spec.kind:<{width}}  {spec.description}")
        return 0
    if args.list_all:
        rows = [(kind, "modbus tcp/rtu", spec.description) for kind, spec in SIMULATORS.items()]
        rows += [(kind, "modbus rtu", spec.description) for kind, spec in BUS_SIMULATORS.items()]
        rows += [(kind, "line tcp/pty", spec.description) for kind, spec in LINE_SIMULATORS.items()]
        rows += [(kind, "opc ua", description) for kind, description in OPCUA_SIMULATORS.items()]
        width = max(len(row[0]) for row in rows)
        for kind, protocol, description in rows:
            print(f"{kind:<{width}}  {protocol:<14}  {description}")
        return 0
    if args.kind is None:
        parser.print_usage(sys.stderr)
        print("edge-daq simulate: error: give a simulator KIND or --list", file=sys.stderr)
        return 2
    if args.kind in OPCUA_SIMULATORS:
        return _run_opcua(args)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if args.verbose else logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    try:
        servers = _create_servers(args)
    except ValueError as exc:
        print(f"edge-daq simulate: error: {exc}", file=sys.stderr)
        return 2
    notes = []
    if args.kind == "watlow-f4":  # how long the chamber takes to be at set point, so nobody waits blindly
        notes.append(watlow_f4.startup_note(watlow_f4.options_from_args(args), args.time_scale))
    return asyncio.run(_run(args.kind, servers, notes))


def _create_servers(args: argparse.Namespace) -> list[Server]:
    kind: str = args.kind
    if kind in LINE_SIMULATORS:
        spec = LINE_SIMULATORS[kind]
        tcp = args.tcp if args.tcp is not None or args.pty else ("127.0.0.1", spec.default_port)
        return [
            create_line_server(
                kind, tcp=tcp, link=args.pty, baudrate=args.baudrate, seed=args.seed, faults=args.fault,
                time_scale=args.time_scale, latency=args.latency, **spec.options_from_args(args),
            )
        ]  # fmt: skip
    if kind in BUS_SIMULATORS:
        options = BUS_SIMULATORS[kind].options_from_args(args)
        tcp_default = None
    else:
        options = SIMULATORS[kind].options_from_args(args)
        tcp_default = ("127.0.0.1", SIMULATORS[kind].default_port)
    servers: list[Server] = []
    if args.pty or args.rtu_tcp:
        servers.append(
            create_rtu_server(
                kind, link=args.pty, tcp=args.rtu_tcp, baudrate=args.baudrate, parity=args.parity,
                stopbits=args.stopbits, seed=args.seed, units=args.units, faults=args.fault,
                time_scale=args.time_scale, latency=args.latency, unknown_unit=args.unknown_unit,
                framing="ascii" if args.ascii else "rtu", **options,
            )
        )  # fmt: skip
    tcp = getattr(args, "tcp", None) or (None if servers else tcp_default)
    if tcp is not None:
        host, port = tcp
        servers.append(
            create_server(
                kind, host=host, port=port, seed=args.seed, units=args.units, faults=args.fault,
                time_scale=args.time_scale, latency=args.latency, unknown_unit=args.unknown_unit, **options,
            )
        )  # fmt: skip
    if not servers:
        raise ValueError(f"{kind} is a Modbus RTU bus: give --pty LINK and/or --rtu-tcp HOST:PORT")
    return servers


def _describe(kind: str, server: Server) -> str:
    faults = server.faults.describe()
    suffix = f" faults: {' '.join(faults)}" if faults else ""
    if isinstance(server, ModbusTcpServer):
        units = ",".join(str(unit) for unit in server.units)
        return f"{kind} listening on {server.host}:{server.port} (units {units}){suffix}"
    where = []
    if server.link is not None:
        where.append(f"pty {server.link}")
    if server.tcp is not None:
        where.append(f"{server.tcp[0]}:{server.port}")
    if isinstance(server, ModbusRtuServer):
        units = ",".join(str(unit) for unit in server.units)
        line = f"{server.baudrate} 8{server.parity}{server.stopbits}"
        return f"{kind} serving Modbus RTU on {' and '.join(where)} ({line}, units {units}){suffix}"
    return f"{kind} serving on {' and '.join(where)}{suffix}"


async def _run(kind: str, servers: list[Server], notes: list[str]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    started: list[Server] = []
    try:
        try:
            for server in servers:
                await server.start()
                started.append(server)
        except OSError as exc:
            print(f"{kind}: cannot listen: {exc}", file=sys.stderr)
            return 1
        for server in servers:
            print(_describe(kind, server), flush=True)
        for note in notes:
            print(f"{kind}: {note}", flush=True)
        await stop.wait()
    finally:
        for server in started:
            await server.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0


def _run_opcua(args: argparse.Namespace) -> int:
    from simulators import opcua_chamber, watlow_f4

    try:
        options = opcua_chamber.options_from_args(args) | watlow_f4.options_from_args(args)
        host, port = args.tcp
        server = opcua_chamber.OpcUaChamberServer(
            host=host, port=port, seed=args.seed if args.seed is not None else 0, time_scale=args.time_scale, **options
        )
    except (OSError, ValueError) as exc:
        print(f"edge-daq simulate: error: {exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await server.start()
        except OSError as exc:
            print(f"{args.kind}: cannot listen: {exc}", file=sys.stderr)
            return 1
        try:
            security = ", ".join(server.security)
            print(f"{args.kind} serving OPC UA on {server.endpoint} (security {security})", flush=True)
            await stop.wait()
        finally:
            await server.close()
        return 0

    return asyncio.run(run())


if __name__ == "__main__":
    raise SystemExit(main())
