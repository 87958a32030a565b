"""The edge-daq command as a user runs it: real processes, real ports, real files."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.servers import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
EDGE_DAQ = [sys.executable, "-m", "edge_daq"]


def edge_daq(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGE_DAQ, *args], capture_output=True, text=True, timeout=timeout, check=False)


def chamber_lines(archive: Path) -> list[str]:
    lines = [line for file in sorted(archive.glob("*.lp")) for line in file.read_text().splitlines()]
    return [line for line in lines if line.startswith("chamber,")]


def test_every_shipped_config_passes_check() -> None:
    result = edge_daq(
        "check", str(REPO / "config" / "edge-daq.yaml"), *map(str, (REPO / "config" / "profiles").glob("*.yaml"))
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no problems" in result.stdout


def test_check_reports_positions_and_never_a_traceback(tmp_path: Path) -> None:
    rig = tmp_path / "broken.yaml"
    rig.write_text(
        "rig: r1\n"
        "instruments:\n"
        "  - name: chamber\n"
        "    driver: modbus-tcp\n"
        "    host: 10.0.0.1\n"
        "    intervall: 2s\n"
        "    points:\n"
        "      - {name: pv, adress: 100}\n"
    )
    not_yaml = tmp_path / "garbage.yaml"
    not_yaml.write_text("rig: [unclosed\n")
    result = edge_daq("check", str(rig), str(not_yaml), str(tmp_path / "missing.yaml"))
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert f"{rig}:6:5: unknown key 'intervall' (did you mean 'interval'?)" in lines
    assert f"{rig}:8:20: unknown key 'adress' (did you mean 'address'?)" in lines
    assert f"{rig}:8:9: missing key 'address'" in lines
    # The unclosed bracket is named where it opens, not where the parser gave up (the end of the file).
    assert any(line.startswith(f"{not_yaml}:1:6: YAML syntax: this '[' is not closed") for line in lines), lines
    assert any(line.startswith(f"{tmp_path / 'missing.yaml'}:") for line in lines), lines


def test_simulate_lists_the_simulators() -> None:
    result = edge_daq("simulate", "--list")
    assert result.returncode == 0
    assert "watlow-f4" in result.stdout
    assert "burnin-board" in result.stdout


def test_run_polls_a_simulator_into_files_and_behaves_as_a_systemd_service(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    simulator = subprocess.Popen(
        [*EDGE_DAQ, "simulate", "watlow-f4", "--tcp", f"127.0.0.1:{port}", "--seed", "3"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    notify_path = tmp_path / "notify.sock"
    notifications = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notifications.bind(str(notify_path))
    notifications.settimeout(0.2)
    received: list[str] = []

    def collect(until: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not any(until in message for message in received):
            with contextlib.suppress(TimeoutError):
                received.append(notifications.recv(4096).decode())
        assert any(until in message for message in received), received

    try:
        wait_for_port(port)
        (tmp_path / "rigs.d").mkdir()
        (tmp_path / "rigs.d" / "oven.yaml").write_text(
            "rig: oven\ninstruments:\n"
            f"  - {{name: chamber, profile: watlow-f4, host: 127.0.0.1, port: {port}, interval: 100ms}}\n"
        )
        archive = tmp_path / "archive"
        gateway = tmp_path / "edge-daq.yaml"
        gateway.write_text(
            f"gateway: gw1\nhttp: {{listen: '127.0.0.1:{http_port}'}}\n"
            f"outputs:\n  file:\n    dir: {archive}\n    flush_interval: 100ms\n"
        )
        environment = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"}
        daemon = subprocess.Popen(
            [*EDGE_DAQ, "run", "-c", str(gateway)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        collect("READY=1")
        collect("WATCHDOG=1")
        collect("STATUS=instruments 1/1 up")
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert 'edge_daq_polls_total{instrument="chamber",link="tcp://127.0.0.1:' in metrics
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(chamber_lines(archive)) < 3:
            time.sleep(0.1)
        daemon.send_signal(signal.SIGTERM)
        _, log = daemon.communicate(timeout=15)
        assert daemon.returncode == 0, log
        collect("STOPPING=1")
    finally:
        notifications.close()
        simulator.send_signal(signal.SIGTERM)
        simulator.wait(10)
    assert simulator.returncode == 0
    data = chamber_lines(archive)
    assert len(data) >= 3
    assert "model_code=5270i" in data[0]
    assert "daemon_stopped" in log


def test_run_refuses_an_invalid_config_with_its_errors(tmp_path: Path) -> None:
    gateway = tmp_path / "edge-daq.yaml"
    gateway.write_text("gateway: gw1\nbuffer:\n  memory_records: lots\n")
    result = edge_daq("run", "-c", str(gateway))
    assert result.returncode == 2
    assert f"{gateway}:3:19:" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_runs_the_example_rig_into_files(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = edge_daq("demo", "--duration", "3", "--no-live", "--out", str(out), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "records written" in result.stdout
    assert "status page: http://127.0.0.1:" in result.stdout
    text = "".join(file.read_text() for file in out.glob("*.lp"))
    assert "chamber,gateway=gw-lab2-01" in text
    assert "board1,board=B03" in text
