"""``edge-daq probe ... --write ADDR=VALUE``: a technician tries one write, with a read before and after.

    edge-daq probe --tcp 10.0.4.17 --unit 1 --write 300=1250
    edge-daq probe --tcp 10.0.4.17 --write 300=125.0 --type int16 --scale 0.1 --yes
    edge-daq probe --rtu /dev/ttyUSB1 --write 12=47.5 --type float32 --byte-order CDAB

The value is the engineering value, encoded as the daemon encodes a point of that ``--type``,
``--byte-order`` and ``--scale`` (FC06 for one register, FC16 for more; ``--coil`` writes a coil with FC05).
Without ``--yes`` it asks for confirmation on a terminal, and refuses when stdin is not a terminal (a script
must say ``--yes``): a write can move a real chamber.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

TYPES = ("uint16", "int16", "uint32", "int32", "float32", "uint64", "int64", "float64")


def add_arguments(modbus: argparse._ArgumentGroup) -> None:
    modbus.add_argument("--write", metavar="ADDR=VALUE", help="write VALUE at protocol address ADDR (then read back)")
    modbus.add_argument("--type", choices=TYPES, default="uint16", help="--write: the value's type (default uint16)")
    modbus.add_argument("--byte-order", choices=("ABCD", "CDAB", "BADC", "DCBA"), default="ABCD")
    modbus.add_argument("--scale", type=float, default=None, help="--write: value = raw * scale")
    modbus.add_argument("--coil", action="store_true", help="--write: a coil (FC05), VALUE 0 or 1")
    modbus.add_argument("--yes", action="store_true", help="--write: do not ask (needed when stdin is no terminal)")


def _point(args: argparse.Namespace, address: int) -> Any:
    from edge_daq.drivers.modbus.config import ModbusPoint

    if args.coil:
        return ModbusPoint(name="probe", table="coil", address=address, type="bool")
    return ModbusPoint.model_validate(
        {
            "name": "probe",
            "table": "holding",
            "address": address,
            "type": args.type,
            "scale": args.scale,
            "byte_order": args.byte_order,
        }
    )


def _confirmed(args: argparse.Namespace, what: str, out: TextIO) -> bool | None:
    """True to go on; False if the user said no; None if stdin is no terminal and --yes is missing."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        return None
    print(f"{what}? [y/N] ", end="", file=out, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


async def probe_write(link: Any, args: argparse.Namespace, out: TextIO) -> int:
    """Run with the link open; the caller closes it."""
    from edge_daq.drivers.modbus.config import ModbusTcpConfig
    from edge_daq.drivers.modbus.write import WriteValueError, read_point, write_point
    from edge_daq.errors import DriverError

    address_text, separator, value_text = str(args.write).partition("=")
    try:
        address, value = int(address_text), float(value_text)
    except ValueError:
        separator = ""
    if not separator or not 0 <= address <= 65535:
        print("probe: --write takes ADDR=VALUE, such as 300=1250 (a protocol address, 0-based)", file=out)
        return 2
    point = _point(args, address)
    config = ModbusTcpConfig(name="probe", driver="modbus-tcp", host="probe", unit=args.unit, timeout=args.timeout,
                             byte_order=args.byte_order, points=[point])  # fmt: skip
    what = f"write {value:g} ({'coil' if args.coil else args.type}) at {address} of {link.describe} unit {args.unit}"
    answer = _confirmed(args, what, out)
    if answer is None:
        print("probe: refusing to write: stdin is not a terminal; add --yes to write from a script", file=out)
        return 2
    if not answer:
        print("probe: nothing written", file=out)
        return 1
    try:
        before = await read_point(link, config, point)
        print(f"before: {before}", file=out)
        sent = await write_point(link, config, point, value)
        print(f"wrote:  {sent}", file=out)
        after = await read_point(link, config, point)
    except WriteValueError as error:
        print(f"probe: {error}", file=out)
        return 2
    except DriverError as error:
        print(f"probe: {error}", file=out)
        return 1
    print(f"after:  {after}", file=out)
    if isinstance(after, str) or abs(float(after) - value) > (
        abs(args.scale) / 2 if args.scale else 1e-6 * max(1.0, abs(value))
    ):
        print("probe: the read-back differs from the value written", file=out)
        return 1
    return 0
