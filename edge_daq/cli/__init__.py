"""The ``edge-daq`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_daq import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-daq",
        description="Data acquisition for reliability-test rigs: instruments to InfluxDB, MQTT and files.",
    )
    parser.add_argument("--version", action="version", version=f"edge-daq {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", type=Path, required=True, help="the gateway file")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override log.level")
    run.add_argument("--log-json", action="store_true", help="JSON log lines even on a terminal")

    check = commands.add_parser("check", help="check gateway and rig files; print every problem as path:line:col")
    check.add_argument("files", type=Path, nargs="+", metavar="FILE")

    status = commands.add_parser("status", help="the running daemon's instruments, outputs and queue as tables")
    status.add_argument("--url", default=None, help="the daemon's base URL (default: http.listen of the gateway file)")
    status.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="gateway file to read http.listen from (default /etc/edge-daq/edge-daq.yaml if present)",
    )

    from edge_daq.cli.probe import add_arguments as add_probe_arguments

    probe = commands.add_parser(
        "probe", help="read a new instrument directly: Modbus registers decoded every way, SCPI queries with timing"
    )
    add_probe_arguments(probe)

    from edge_daq.cli import life as life_cli
    from edge_daq.cli import report as report_cli
    from edge_daq.cli import test_cmd

    test_cmd.add_test_arguments(
        commands.add_parser(
            "test", help="start, pause, resume or stop a test on the running daemon; remove a DUT; readouts"
        )
    )
    test_cmd.add_note_arguments(commands.add_parser("note", help="record an operator note as an event of a rig"))
    life_cli.add_arguments(commands.add_parser("life", help="write a rig's life table (one row per DUT) as CSV"))
    report_cli.add_arguments(
        commands.add_parser("report", help="Weibull fit, FIT rate and probability plot of a rig's life data")
    )

    from edge_daq.cli import write as write_cli

    write_cli.add_arguments(commands.add_parser("write", help="write one instrument point through the daemon"))

    from edge_daq.cli import schema_cmd

    schema_cmd.add_arguments(
        commands.add_parser("schema", help="print the JSON Schema of the gateway file, rig files or profiles")
    )

    # Listed for --help only: main() hands `simulate ...` to the simulators' own parser.
    commands.add_parser(
        "simulate", help="run a simulated instrument: Modbus TCP/RTU, SCPI over TCP or serial (`--list-all`)"
    )

    demo = commands.add_parser("demo", help="simulated HTOL rig -> daemon -> local files, with a live table")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    demo.add_argument("--out", type=Path, default=Path("edge-daq-demo"), help="folder for the line-protocol files")
    demo.add_argument("-c", "--config", type=Path, default=None, help="gateway file (default: the shipped example)")
    demo.add_argument("--no-live", action="store_true", help="no live table: print a summary line every 5 s")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["simulate"]:
        # The simulators parse their own options (argparse cannot hand `--list` through a subcommand).
        # They are test-bench tooling, imported only here and by the demo, never by the daemon.
        from simulators.cli import main as simulate_main

        return simulate_main(arguments[1:])
    args = _parser().parse_args(arguments)
    try:
        if args.command == "check":
            from edge_daq.cli.check import run_check

            return run_check(args.files, sys.stdout)
        if args.command == "run":
            from edge_daq.cli.run import run_daemon

            return run_daemon(args.config, log_level=args.log_level, log_json=args.log_json or None)
        if args.command in ("test", "note", "life", "report"):
            from edge_daq.cli import life as life_cli
            from edge_daq.cli import report as report_cli
            from edge_daq.cli import test_cmd

            if args.command == "test":
                return test_cmd.run_test(args, sys.stdout)
            if args.command == "note":
                return test_cmd.run_note(args, sys.stdout)
            if args.command == "life":
                return life_cli.run_life(args, sys.stdout)
            return report_cli.run_report(args, sys.stdout)
        if args.command == "write":
            from edge_daq.cli.write import run_write

            return run_write(args, sys.stdout)
        if args.command == "probe":
            from edge_daq.cli.probe import run_probe

            return run_probe(args, sys.stdout)
        if args.command == "status":
            from edge_daq.cli.status import status_command

            return status_command(url=args.url, config=args.config, out=sys.stdout)
        if args.command == "schema":
            from edge_daq.cli.schema_cmd import run_schema

            return run_schema(args, sys.stdout, sys.stderr)
        if args.command == "demo":
            from edge_daq.cli.demo import run_demo

            return run_demo(config=args.config, out=args.out, duration=args.duration, live=not args.no_live)
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
