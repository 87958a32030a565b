"""``edge-daq test`` and ``edge-daq note``: the test lifecycle and operator notes, sent to the running daemon
over its local control socket (``<state_dir>/control.sock``).

Usage::

    edge-daq test start htol-07 --id HTOL-2611-03 --kind HTOL
    edge-daq test pause htol-07          # resume, stop
    edge-daq test remove htol-07 --dut U0007 --reason "cracked package"
    edge-daq test status htol-07
    edge-daq test readout start htol-07  # the DUTs leave the chamber for the ATE: stress is held
    edge-daq test readout end htol-07 --results lot7-168h.stdf   # or a CSV of serial,result,bin
    edge-daq note htol-07 "board 3 reseated"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, get_args

from edge_daq.reliability.config import TestKind

if TYPE_CHECKING:
    from edge_daq.errors import ConfigError
    from edge_daq.reliability.state import RigState

DEFAULT_CONFIG = Path("/etc/edge-daq/edge-daq.yaml")
ACTIONS = ("start", "pause", "resume", "stop", "remove", "status", "readout")
READOUT_PHASES = ("start", "end")
READOUT_TIMEOUT = 300.0
"""Seconds the daemon may take to read a results file (a large STDF) and apply it."""


def add_state_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, default=None, help=f"the gateway file (default {DEFAULT_CONFIG})")
    parser.add_argument("--state-dir", type=Path, default=None, help="the state folder (default: the gateway's)")


def state_dir_of(args: argparse.Namespace) -> Path:
    """``--state-dir``, or the gateway file's ``state_dir`` (with its default)."""
    if args.state_dir is not None:
        return Path(args.state_dir)
    from edge_daq.config.loader import load_config

    return load_config(args.config or DEFAULT_CONFIG).gateway.state_path


def rig_state(args: argparse.Namespace, command: str) -> RigState | int:
    """The saved reliability state of ``args.rig``, or the exit status after printing why there is none."""
    from edge_daq.errors import ConfigError
    from edge_daq.reliability.state import load_state

    try:
        state = load_state(state_dir_of(args), args.rig)
    except ConfigError as error:
        return print_config_issues(error)
    except (OSError, ValueError) as error:  # unreadable, or not a state this release knows
        print(f"edge-daq {command}: {error}", file=sys.stderr)
        return 1
    if state is None:
        print(f"edge-daq {command}: no reliability state for rig {args.rig!r}", file=sys.stderr)
        return 1
    return state


def add_test_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("rig", help="the rig (readout: start or end, then the rig)")
    parser.add_argument("readout_rig", nargs="?", default=None, metavar="RIG", help=argparse.SUPPRESS)
    parser.add_argument("--id", dest="test_id", help="test id (start)")
    parser.add_argument("--kind", choices=get_args(TestKind), default="custom", help="test kind (start)")
    parser.add_argument("--dut", help="DUT serial (remove)")
    parser.add_argument("--reason", default="", help="why the DUT is removed (remove)")
    parser.add_argument("--results", type=Path, default=None, help="ATE results, STDF V4 or CSV (readout end)")
    parser.add_argument(
        "--format", choices=("auto", "stdf", "csv"), default="auto", help="of --results (default: by content)"
    )
    add_state_arguments(parser)


def add_note_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rig")
    parser.add_argument("text")
    add_state_arguments(parser)


def print_config_issues(error: ConfigError) -> int:
    """A refused gateway file's issues on stderr, one a line: the exit status 2 of a command that needed it."""
    for issue in error.issues:
        print(issue, file=sys.stderr)
    return 2


def control_request(
    args: argparse.Namespace, message: dict[str, Any], command: str, *, within: float
) -> dict[str, Any] | int:
    """The daemon's accepted reply to ``message`` on its control socket, or the exit status after printing why
    there is none (a refused gateway file, no access to the socket, no daemon, the daemon's refusal)."""
    from edge_daq.config.models import CONTROL_SOCKET
    from edge_daq.errors import ConfigError
    from edge_daq.reliability.control import request

    try:
        socket = state_dir_of(args) / CONTROL_SOCKET
    except ConfigError as error:
        return print_config_issues(error)
    try:
        reply = asyncio.run(request(socket, message, within=within))
    except PermissionError as error:
        print(f"{command}: no access to the daemon's control socket {socket}: {error.strerror}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError) as error:
        print(f"{command}: cannot reach the daemon at {socket}: {error}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"{command}: {reply.get('error')}", file=sys.stderr)
        return 1
    return reply


def _send(args: argparse.Namespace, message: dict[str, Any], out: TextIO, *, within: float = 5.0) -> int:
    reply = control_request(args, message, "edge-daq", within=within)
    if isinstance(reply, int):
        return reply
    print(json.dumps(reply["status"], indent=2) if "status" in reply else reply.get("message", "ok"), file=out)
    return 0


def run_test(args: argparse.Namespace, out: TextIO) -> int:
    message: dict[str, Any] = {"rig": args.rig, "command": "test", "action": args.action}
    if args.action == "start":
        if not args.test_id:
            print("edge-daq test start: --id is required", file=sys.stderr)
            return 2
        message.update(id=args.test_id, kind=args.kind)
    elif args.action == "remove":
        if not args.dut:
            print("edge-daq test remove: --dut is required", file=sys.stderr)
            return 2
        message = {"rig": args.rig, "command": "remove", "dut": args.dut, "reason": args.reason}
    elif args.action == "status":
        message = {"rig": args.rig, "command": "status"}
    elif args.action == "readout":
        return _readout(args, out)
    return _send(args, message, out)


def _readout(args: argparse.Namespace, out: TextIO) -> int:
    """``edge-daq test readout start|end RIG [--results FILE]``."""
    phase, rig = args.rig, getattr(args, "readout_rig", None)
    if phase not in READOUT_PHASES or not rig:
        print(
            "edge-daq test readout: expected `readout start RIG` or `readout end RIG --results FILE`", file=sys.stderr
        )
        return 2
    message: dict[str, Any] = {"rig": rig, "command": "readout", "action": phase}
    if phase == "start":
        return _send(args, message, out)
    results: Path | None = getattr(args, "results", None)
    if results is None:
        print("edge-daq test readout end: --results FILE is required (STDF V4 or CSV)", file=sys.stderr)
        return 2
    if not results.is_file():
        print(f"edge-daq test readout end: {results}: no such file", file=sys.stderr)
        return 2
    # The daemon reads the file (it must be readable by the daemon's user): it is parsed in one place.
    message.update(results=str(results.resolve()), format=getattr(args, "format", "auto"))
    return _send(args, message, out, within=READOUT_TIMEOUT)


def run_note(args: argparse.Namespace, out: TextIO) -> int:
    return _send(args, {"rig": args.rig, "command": "note", "text": args.text}, out)
