"""``edge-daq probe --list-ports``: which serial port is which adapter, and the name to put in a rig file.

pyserial finds the ports and reads their USB descriptors from sysfs (vendor and product id, manufacturer,
product, serial number). ``/dev/ttyUSB0`` is handed out in plugging order and can change after a reboot;
udev's ``/dev/serial/by-id/`` link is named after the adapter itself, so that is the ``port:`` a rig file
should use. Pseudo-terminals (simulators, socat) are not serial hardware and pyserial does not list them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from serial.tools.list_ports import comports  # type: ignore[import-untyped]
from serial.tools.list_ports_common import ListPortInfo  # type: ignore[import-untyped]

BY_ID = Path("/dev/serial/by-id")
_MAX_LINKS = 1024  # udev's folder holds one link per adapter interface; bounded all the same


def stable_links(folder: Path = BY_ID) -> dict[str, str]:
    """The ``by-id`` link of each device it points to (``/dev/ttyUSB0`` -> ``/dev/serial/by-id/usb-...``)."""
    links: dict[str, str] = {}
    try:
        with os.scandir(folder) as entries:
            for count, entry in enumerate(entries):
                if count >= _MAX_LINKS:
                    break
                if entry.is_symlink():
                    links.setdefault(os.path.realpath(entry.path), str(Path(folder) / entry.name))
    except OSError:  # no USB serial adapter: udev has not made the folder
        return {}
    return links


def _describe(port: ListPortInfo) -> list[str]:
    details = []
    if port.vid is not None and port.pid is not None:
        details.append(f"USB {port.vid:04x}:{port.pid:04x}")
    for label, value in (
        ("manufacturer", port.manufacturer),
        ("product", port.product),
        ("serial number", port.serial_number),
        ("interface", port.interface),
    ):
        if value:
            details.append(f"{label} {value}")
    if not details and port.description and port.description != "n/a":
        details.append(port.description)
    return details


def format_ports(ports: Sequence[ListPortInfo], links: dict[str, str]) -> str:
    """One block per port, sorted by device: what it is, and the ``port:`` line for a rig file."""
    if not ports:
        return (
            "no serial ports found: a USB adapter appears as /dev/ttyUSB* or /dev/ttyACM* once plugged in "
            "(`dmesg` shows whether the kernel saw it); pseudo-terminals are not listed"
        )
    blocks = []
    for port in sorted(ports, key=lambda p: p.device):
        details = _describe(port)
        lines = [f"{port.device}  {', '.join(details) if details else 'no USB details (a built-in port)'}"]
        link = links.get(os.path.realpath(port.device))
        if link is not None:
            lines.append(f"  in a rig file: port: {link}")
        elif port.vid is not None:
            lines.append(
                f"  in a rig file: port: {port.device}  (no /dev/serial/by-id/ link: this name may change "
                "after a reboot or when adapters are plugged in another order)"
            )
        else:
            lines.append(f"  in a rig file: port: {port.device}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def list_serial_ports(out: TextIO, *, ports: Sequence[ListPortInfo] | None = None, by_id: Path = BY_ID) -> int:
    """Print the serial ports; 1 if there is none (as ``grep`` does when nothing matches)."""
    found = list(comports()) if ports is None else list(ports)
    print(format_ports(found, stable_links(by_id)), file=out)
    return 0 if found else 1
