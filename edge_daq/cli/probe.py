"""``edge-daq probe``: the technician's first tool on a new instrument.

Modbus (TCP, RTU on a serial port, RTU over TCP): read a range of registers and show each one under both
address bases, as int16/uint16/hex, and every 2- and 4-register value as int32/uint32/float32/float64 in all
four byte orders, side by side. SCPI/ASCII (TCP or serial): send queries and show each reply with its time::

    edge-daq probe --rtu /dev/ttyUSB0 --baudrate 19200 --parity E --unit 1 --address 100 --count 4
    edge-daq probe --tcp 10.0.4.17 --unit 1 --address 0 --count 2
    edge-daq probe --scpi-tcp 10.0.4.30:5025 -q "*IDN?" -q ":READ?"
    edge-daq probe --scpi-serial /dev/ttyUSB2 --baudrate 9600 --read-termination '\\r\\n' -q "TEMP?"
    edge-daq probe --list-ports     # serial ports with USB ids and the stable /dev/serial/by-id/ path
    edge-daq probe --visa USB0::0x05E6::0x2450::04123456::INSTR -q "*IDN?"   # through pyvisa (--visa-library)
    edge-daq probe --list-visa      # the VISA resources pyvisa-py (or --visa-library) finds
    edge-daq probe --tcp 10.0.4.17 --write 300=1250   # one write, read before and after (edge_daq.cli.probe_write)

Heavy imports (drivers, pyserial) happen only when the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import struct
from typing import Any, TextIO

from edge_daq.errors import DriverConnectionError, DriverError

ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")


def _unescape(text: str) -> str:
    return text.encode().decode("unicode_escape")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", metavar="HOST[:PORT]", help="Modbus TCP (port 502 by default)")
    where.add_argument("--rtu", metavar="DEVICE", help="Modbus RTU on a serial port")
    where.add_argument("--rtu-tcp", metavar="HOST:PORT", help="Modbus RTU frames through a serial device server")
    where.add_argument("--scpi-tcp", metavar="HOST[:PORT]", help="SCPI/ASCII on a raw socket (port 5025)")
    where.add_argument("--scpi-serial", metavar="DEVICE", help="SCPI/ASCII on a serial port")
    where.add_argument("--visa", metavar="RESOURCE", help="SCPI through pyvisa: a VISA resource string")
    where.add_argument("--list-visa", action="store_true", help="list the VISA resources pyvisa finds")
    where.add_argument(
        "--list-ports",
        action="store_true",
        help="list the serial ports: USB vendor/product id, serial number, the /dev/serial/by-id/ path to use",
    )
    modbus = parser.add_argument_group("Modbus")
    modbus.add_argument("--unit", type=int, default=1, help="unit id / slave address (default 1)")
    modbus.add_argument("--table", choices=("holding", "input"), default="holding")
    modbus.add_argument("--address", type=int, default=0, help="first protocol address (0-based; default 0)")
    modbus.add_argument("--count", type=int, default=4, help="registers to read (1..125, default 4)")
    from edge_daq.cli.probe_write import add_arguments as add_write_arguments

    add_write_arguments(modbus)
    serial = parser.add_argument_group("serial line")
    serial.add_argument("--baudrate", type=int, default=None, help="default 19200 for RTU, 9600 for SCPI")
    serial.add_argument("--parity", choices=("N", "E", "O"), default=None, help="default E for RTU, N for SCPI")
    serial.add_argument("--stopbits", type=int, choices=(1, 2), default=1)
    scpi = parser.add_argument_group("SCPI/ASCII")
    scpi.add_argument("-q", "--query", action="append", default=[], help="a query to send (repeatable)")
    scpi.add_argument("--write-termination", type=_unescape, default="\n", help="default \\n")
    scpi.add_argument("--read-termination", type=_unescape, default="\n", help="default \\n; Espec: \\r\\n")
    scpi.add_argument(
        "--visa-library", default="@py", help="pyvisa's library: @py (pyvisa-py, the default), @ivi, a path"
    )
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds per request (default 1)")


def run_probe(args: argparse.Namespace, out: TextIO) -> int:
    if args.list_ports:
        from edge_daq.cli.ports import list_serial_ports

        return list_serial_ports(out)
    if args.list_visa:
        return _list_visa(args.visa_library, out)
    try:
        return asyncio.run(_probe(args, out))
    except KeyboardInterrupt:
        return 130


def _host_port(text: str, default: int) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[IPV6]:PORT``, ``[IPV6]`` or a bare IPv6 address (``::1``, no port)."""
    host, separator, port = text.rpartition(":")
    if separator and port.isdigit() and (":" not in host or host.startswith("[")):
        return host.strip("[]"), int(port)
    return text.strip("[]"), default


# The port each TCP option tries when none is given, and what it is the usual port of.
_DEFAULT_PORTS = {"tcp": (502, "Modbus TCP"), "scpi_tcp": (5025, "SCPI raw socket"), "rtu_tcp": (4001, "serial server")}


def _connect_hint(args: argparse.Namespace) -> str | None:
    """What to try when the TCP connection failed: the port that was tried, and how to give another."""
    for option, (default, what) in _DEFAULT_PORTS.items():
        text = getattr(args, option, None)
        if not text:
            continue
        flag = "--" + option.replace("_", "-")
        host, port = _host_port(text, default)
        shown = f"[{host}]" if ":" in host else host
        if port == default and not text.endswith(f":{default}"):
            return (
                f"  tried port {port}, the {what} default, as {flag} {text} gives no port; "
                f"for another port write {flag} {shown}:PORT"
            )
        return (
            f"  tried port {port} of {host}: check the host, the port ({flag} HOST:PORT), "
            "that the instrument is on and that no firewall is in the way"
        )
    return None


def _open_failed(args: argparse.Namespace, error: DriverError, out: TextIO) -> int:
    print(f"probe: {error}", file=out)
    if isinstance(error, DriverConnectionError) and (hint := _connect_hint(args)) is not None:
        print(hint, file=out)
    return 1


def _list_visa(library: str, out: TextIO) -> int:
    import warnings

    from edge_daq.drivers.scpi.visa import list_resources
    from edge_daq.errors import DriverError

    try:
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always")
            resources = list_resources(library)
    except DriverError as exc:
        print(f"probe: {exc}", file=out)
        return 1
    except Exception as exc:  # a backend's discovery (USB, GPIB, the LAN) failing is reported, not a traceback
        print(f"probe: listing the VISA resources of {library} failed: {exc}", file=out)
        return 1
    if not resources:
        print(f"no VISA resources found by {library} (USB-TMC needs pyusb and permissions, GPIB linux-gpib)", file=out)
    for resource in resources:
        print(resource, file=out)
    for note in dict.fromkeys(str(note.message) for note in notes):  # what the backend could not search
        print(f"note: {note}", file=out)
    return 0


async def _probe(args: argparse.Namespace, out: TextIO) -> int:
    if args.scpi_tcp or args.scpi_serial or args.visa:
        return await _probe_scpi(args, out)
    return await _probe_modbus(args, out)


async def _probe_scpi(args: argparse.Namespace, out: TextIO) -> int:
    from edge_daq.drivers.channel import SerialChannel, TcpChannel
    from edge_daq.drivers.scpi.driver import ScpiLink
    from edge_daq.errors import DriverError

    if not args.query:
        print("probe: give at least one --query, e.g. -q '*IDN?'", file=out)
        return 2
    link: Any
    channel: Any
    if args.visa:
        from edge_daq.drivers.scpi.config import VisaConfig
        from edge_daq.drivers.scpi.visa import PLUGIN

        try:
            config = VisaConfig.model_validate({
                "name": "probe", "driver": "visa", "resource": args.visa, "visa_library": args.visa_library,
                "timeout": args.timeout, "write_termination": args.write_termination,
                "read_termination": args.read_termination, "points": [{"query": "*IDN?", "name": "idn"}],
            })  # fmt: skip
        except ValueError as exc:
            print(f"probe: {exc}", file=out)
            return 2
        visa_link = PLUGIN.open_link([config])
        try:
            await visa_link.open()
        except DriverError as exc:
            print(f"probe: {exc}", file=out)
            return 1
        return await _run_queries(args, visa_link.session(config.resource), visa_link, out)
    if args.scpi_tcp:
        host, port = _host_port(args.scpi_tcp, _DEFAULT_PORTS["scpi_tcp"][0])
        channel = TcpChannel(host=host, port=port, connect_timeout=args.timeout)
    else:
        channel = SerialChannel(
            path=args.scpi_serial, baudrate=args.baudrate or 9600, parity=args.parity or "N", stopbits=args.stopbits
        )
    link = ScpiLink(channel)
    try:
        await link.open()
    except DriverError as exc:
        return _open_failed(args, exc, out)
    return await _run_queries(args, link, link, out)


async def _run_queries(args: argparse.Namespace, transport: Any, link: Any, out: TextIO) -> int:
    """Each query and its reply with its time; ``transport`` answers them, ``link`` is closed at the end."""
    from edge_daq.drivers.scpi.config import DEFAULT_MAX_REPLY_BYTES
    from edge_daq.errors import DriverError

    failures = 0
    loop = asyncio.get_running_loop()
    try:
        for query in args.query:
            started = loop.time()
            try:
                reply = await transport.query(
                    query,
                    write_termination=args.write_termination,
                    read_termination=args.read_termination,
                    within=args.timeout,
                    max_reply_bytes=DEFAULT_MAX_REPLY_BYTES,
                )
            except DriverError as exc:
                failures += 1
                hint = " - check the terminations, the baud rate, and that this is a query (ends with ?)"
                print(f"{query!r:<24} -> {exc}{hint}", file=out)
                continue
            print(f"{query!r:<24} -> {reply!r}  ({(loop.time() - started) * 1000:.1f} ms)", file=out)
    finally:
        await link.close()
    return 1 if failures else 0


async def _probe_modbus(args: argparse.Namespace, out: TextIO) -> int:
    from edge_daq.drivers.modbus.codec import unpack_registers
    from edge_daq.drivers.modbus.planner import ReadRequest
    from edge_daq.errors import DeviceError, DriverError, DriverTimeoutError

    if not 1 <= args.count <= 125 or not 0 <= args.address <= 65535 - args.count + 1:
        print("probe: --count is 1..125 and the range must stay within addresses 0..65535", file=out)
        return 2
    link: Any
    if args.tcp:
        from edge_daq.drivers.modbus.tcp import ModbusTcpLink

        host, port = _host_port(args.tcp, _DEFAULT_PORTS["tcp"][0])
        link = ModbusTcpLink(host=host, port=port, connect_timeout=args.timeout)
    else:
        from edge_daq.drivers.channel import SerialChannel, TcpChannel
        from edge_daq.drivers.modbus.rtu import RtuLink

        if args.rtu:
            channel = SerialChannel(
                path=args.rtu, baudrate=args.baudrate or 19200, parity=args.parity or "E", stopbits=args.stopbits
            )
            link = RtuLink(channel, baudrate=channel.baudrate, bits_per_character=channel.bits_per_character)
        else:
            host, port = _host_port(args.rtu_tcp, _DEFAULT_PORTS["rtu_tcp"][0])
            link = RtuLink(
                TcpChannel(host=host, port=port, connect_timeout=args.timeout, scheme="rtu+tcp"),
                baudrate=args.baudrate,
                bits_per_character=11,
            )
    request = ReadRequest(args.table, args.address, args.count, ())
    try:
        await link.open()
    except DriverError as exc:
        return _open_failed(args, exc, out)
    if args.write is not None:
        from edge_daq.cli.probe_write import probe_write

        try:
            return await probe_write(link, args, out)
        finally:
            await link.close()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        registers = list(unpack_registers(await link.read(request, unit=args.unit, response_timeout=args.timeout)))
    except DeviceError as exc:
        print(f"probe: {exc}", file=out)
        if "exception 02" in str(exc):
            print(
                "  illegal address: check address_base (register 40001 or 30001 in a manual is protocol address 0),"
                " and --table holding/input",
                file=out,
            )
        return 1
    except DriverTimeoutError as exc:
        print(f"probe: {exc}", file=out)
        print(
            "  no reply: check the unit id, the baud rate and parity (both ends must agree), the wiring "
            "(RS-485 A/B swapped?) and that nothing else uses the port",
            file=out,
        )
        return 1
    except DriverError as exc:
        print(f"probe: {exc}", file=out)
        return 1
    finally:
        await link.close()
    elapsed = (loop.time() - started) * 1000
    print(f"{link.describe} unit {args.unit}: {args.table} {args.address}..{args.address + args.count - 1} "
          f"({elapsed:.1f} ms)", file=out)  # fmt: skip
    print(format_registers(registers, start=args.address), file=out)
    return 0


def _words(registers: list[int], order: str) -> bytes:
    """The big-endian bytes of a value whose registers were sent in ``order`` (Telegraf's naming)."""
    raw = b"".join(struct.pack(">H", register) for register in registers)
    if order in ("BADC", "DCBA"):
        raw = b"".join(raw[i : i + 2][::-1] for i in range(0, len(raw), 2))
    if order in ("CDAB", "DCBA"):
        raw = b"".join(raw[i : i + 2] for i in reversed(range(0, len(raw), 2)))
    return raw


def _number(value: float) -> str:
    if isinstance(value, float) and (not math.isfinite(value) or (value != 0 and not 1e-6 < abs(value) < 1e12)):
        return f"{value:.6g}"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def format_registers(registers: list[int], *, start: int) -> str:
    """Every register under both address bases, and every 32/64-bit reading in every byte order."""
    lines = ["addr(base 0)  reg(base 1)    hex   uint16   int16  chars"]
    for offset, register in enumerate(registers):
        signed = register - 0x10000 if register & 0x8000 else register
        chars = "".join(chr(b) if 32 <= b < 127 else "." for b in struct.pack(">H", register))
        lines.append(
            f"{start + offset:>12}  {start + offset + 1:>11}  {register:04X}  {register:>7}  {signed:>6}  {chars}"
        )
    for width, kinds in ((2, (("int32", ">i"), ("uint32", ">I"), ("float32", ">f"))), (4, (("float64", ">d"),))):
        if len(registers) < width:
            continue
        lines.append("")
        header = f"{'from':>6}  {'type':<8}" + "".join(f"  {order:>14}" for order in ORDERS)
        lines.append(header)
        for offset in range(len(registers) - width + 1):
            for name, code in kinds:
                cells = [_number(struct.unpack(code, _words(registers[offset : offset + width], order))[0])
                         for order in ORDERS]  # fmt: skip
                lines.append(f"{start + offset:>6}  {name:<8}" + "".join(f"  {cell:>14}" for cell in cells))
    return "\n".join(lines)
