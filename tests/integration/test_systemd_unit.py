"""The shipped units pass `systemd-analyze verify` and rate 2.5 or better in `systemd-analyze security`.

Both run offline on copies whose ExecStart points at this venv's edge-daq (verify checks the binary exists);
systemd need not be running. systemd-analyze comes with the Debian package `systemd`, which `.ci/run`
installs: a missing tool fails these tests, it never skips them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
INSTALLED_BINARY = "/opt/edge-daq/bin/edge-daq"
MAX_EXPOSURE = 2.5


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: install the Debian package systemd (bash .ci/run does)", pytrace=False)
    return tool


@pytest.fixture(scope="module")
def units(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The units as installed, but running this checkout's edge-daq; the template as one instance."""
    edge_daq = Path(sys.executable).parent / "edge-daq"
    assert edge_daq.is_file(), f"{edge_daq} is missing: install the package in the venv (pip install -e .)"
    folder = tmp_path_factory.mktemp("units")
    copies = {}
    for source, name in (
        ("edge-daq.service", "edge-daq.service"),
        ("edge-daq-simulator@.service", "edge-daq-simulator@watlow-f4.service"),
    ):
        text = (UNITS / source).read_text(encoding="utf-8")
        assert INSTALLED_BINARY in text
        copies[source] = folder / name
        copies[source].write_text(text.replace(INSTALLED_BINARY, str(edge_daq)), encoding="utf-8")
    return copies


def directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("unit", ["edge-daq.service", "edge-daq-simulator@.service"])
def test_verify(systemd_analyze: str, units: dict[str, Path], unit: str) -> None:
    result = subprocess.run(
        [systemd_analyze, "verify", str(units[unit])], capture_output=True, text=True, timeout=60, check=False
    )
    # An unknown or misspelt directive is only a warning (exit 0): any output is a failure too.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("unit", ["edge-daq.service", "edge-daq-simulator@.service"])
def test_security_exposure(systemd_analyze: str, units: dict[str, Path], unit: str) -> None:
    result = subprocess.run(
        [systemd_analyze, "security", "--offline=true", "--no-pager", str(units[unit])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_the_daemon_unit_has_what_the_daemon_relies_on() -> None:
    unit = directives(UNITS / "edge-daq.service")
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert unit["ExecStart"] == [f"{INSTALLED_BINARY} run -c /etc/edge-daq/edge-daq.yaml"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["WatchdogSec"] == ["30s"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["StateDirectory"] == ["edge-daq"]
    assert unit["ConfigurationDirectory"] == ["edge-daq"]
    assert unit["LoadCredential"] == ["influx-token:/etc/edge-daq/credentials/influx-token"]
    assert set(unit["DeviceAllow"]) == {"char-ttyUSB rw", "char-ttyACM rw"}
    assert unit["DevicePolicy"] == ["closed"]
    assert unit["SupplementaryGroups"] == ["dialout"]
    # Serial access: a private /dev has no ttyUSB, and in a user namespace the dialout group is unmapped.
    assert unit["PrivateDevices"] == ["no"]
    assert "PrivateUsers" not in unit
    # systemd must not SIGKILL a drain in progress. Imported here: the unit's other tests need no daemon.
    from edge_daq.daemon import DEFAULT_DRAIN_TIMEOUT

    stop_timeout = float(unit["TimeoutStopSec"][0].removesuffix("s"))
    assert stop_timeout >= DEFAULT_DRAIN_TIMEOUT + 15
