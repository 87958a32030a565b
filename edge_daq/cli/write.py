"""``edge-daq write RIG INSTRUMENT POINT VALUE [--reason TEXT]``: one guarded write through the running daemon.

Sent over the local control socket (``<state_dir>/control.sock``, mode 0600); the daemon takes the caller's
uid from the socket's peer credentials. Exit 0 with the read-back value; 1 with the reason when the write is
refused or fails; 2 for a usage or configuration problem.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TextIO

from edge_daq.cli.test_cmd import add_state_arguments, state_dir_of

WRITE_TIMEOUT = 30.0
"""Seconds the command waits for the daemon's answer: a read, the write and a read-back on a busy bus."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rig")
    parser.add_argument("instrument")
    parser.add_argument("point")
    parser.add_argument("value", help="the engineering value (after scale/offset), as the point is read")
    parser.add_argument("--reason", default="", help="why: recorded in the write's events")
    add_state_arguments(parser)


def run_write(args: argparse.Namespace, out: TextIO) -> int:
    from edge_daq.errors import ConfigError
    from edge_daq.reliability.control import request

    try:
        value = float(args.value)
    except ValueError:
        print(f"edge-daq write: {args.value!r} is not a number", file=sys.stderr)
        return 2
    try:
        socket = state_dir_of(args) / "control.sock"
    except ConfigError as error:
        for issue in error.issues:
            print(issue, file=sys.stderr)
        return 2
    message = {
        "command": "write",
        "rig": args.rig,
        "instrument": args.instrument,
        "point": args.point,
        "value": value,
        "reason": args.reason,
    }
    try:
        reply = asyncio.run(request(socket, message, within=WRITE_TIMEOUT))
    except PermissionError as error:
        print(f"edge-daq write: no access to the daemon's control socket {socket}: {error.strerror}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError) as error:
        print(f"edge-daq write: cannot reach the daemon at {socket}: {error}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"edge-daq write: {reply.get('error')}", file=sys.stderr)
        return 1
    print(reply.get("readback"), file=out)
    return 0
