"""``edge-daq write RIG INSTRUMENT POINT VALUE [--reason TEXT]``: one guarded write through the running daemon.

Sent over the local control socket (``<state_dir>/control.sock``, mode 0600); the daemon takes the caller's
uid from the socket's peer credentials. Exit 0 with the read-back value; 1 with the reason when the write is
refused or fails; 2 for a usage or configuration problem.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from edge_daq.cli.test_cmd import add_state_arguments, control_request

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
    try:
        value = float(args.value)
    except ValueError:
        print(f"edge-daq write: {args.value!r} is not a number", file=sys.stderr)
        return 2
    message = {
        "command": "write",
        "rig": args.rig,
        "instrument": args.instrument,
        "point": args.point,
        "value": value,
        "reason": args.reason,
    }
    reply = control_request(args, message, "edge-daq write", within=WRITE_TIMEOUT)
    if isinstance(reply, int):
        return reply
    print(reply.get("readback"), file=out)
    return 0
