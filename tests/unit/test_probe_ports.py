"""``edge-daq probe --list-ports``: pyserial's port list, formatted with the /dev/serial/by-id/ path to use.

This machine may have no USB serial adapter, so the formatting is checked on pyserial's own ListPortInfo
objects filled in as its Linux backend fills them from sysfs.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from serial.tools.list_ports import comports  # type: ignore[import-untyped]
from serial.tools.list_ports_common import ListPortInfo  # type: ignore[import-untyped]

from edge_daq.cli.ports import format_ports, list_serial_ports, stable_links


def usb_port(device: str, *, serial_number: str = "A10K3X2B") -> ListPortInfo:
    port = ListPortInfo(device, skip_link_detection=True)
    port.vid, port.pid = 0x0403, 0x6001
    port.manufacturer, port.product, port.serial_number = "FTDI", "FT232R USB UART", serial_number
    port.apply_usb_info()
    return port


def test_a_usb_adapter_with_its_stable_link(tmp_path: Path) -> None:
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    link = by_id / "usb-FTDI_FT232R_USB_UART_A10K3X2B-if00-port0"
    link.symlink_to("/dev/ttyUSB7")  # need not exist: the link is read, not followed to a device
    (by_id / "not-a-link").write_text("")
    out = io.StringIO()
    code = list_serial_ports(out, ports=[usb_port("/dev/ttyUSB7"), ListPortInfo("/dev/ttyS0", True)], by_id=by_id)
    assert code == 0
    assert out.getvalue().splitlines() == [
        "/dev/ttyS0  no USB details (a built-in port)",
        "  in a rig file: port: /dev/ttyS0",
        "/dev/ttyUSB7  USB 0403:6001, manufacturer FTDI, product FT232R USB UART, serial number A10K3X2B",
        f"  in a rig file: port: {link}",
    ]


def test_a_usb_adapter_without_a_link_is_flagged() -> None:
    text = format_ports([usb_port("/dev/ttyACM0")], links={})
    assert "in a rig file: port: /dev/ttyACM0  (no /dev/serial/by-id/ link: this name may change" in text


def test_no_ports(tmp_path: Path) -> None:
    out = io.StringIO()
    assert list_serial_ports(out, ports=[], by_id=tmp_path / "absent") == 1
    assert out.getvalue().startswith("no serial ports found: a USB adapter appears as /dev/ttyUSB*")


def test_no_by_id_folder_is_no_links(tmp_path: Path) -> None:
    assert stable_links(tmp_path / "absent") == {}


def test_a_pseudo_terminal_is_not_listed() -> None:
    controller, terminal = os.openpty()
    try:
        name = os.ttyname(terminal)
        assert name.startswith("/dev/pts/")
        assert name not in [port.device for port in comports(include_links=True)]
    finally:
        os.close(controller)
        os.close(terminal)


def test_the_command_lists_what_pyserial_finds() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge_daq", "probe", "--list-ports"], capture_output=True, text=True, timeout=60
    )
    devices = sorted(port.device for port in comports())
    assert result.returncode == (0 if devices else 1), result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("/dev/")]
    assert listed == devices
