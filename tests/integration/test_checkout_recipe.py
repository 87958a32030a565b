"""The README's "Running from a checkout": simulators, ``edge-daq run -c config/local.yaml``, status and test
commands, all started from the checkout's folder as written, with nothing written outside it."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.servers import free_ports, wait_for_port

REPO = Path(__file__).resolve().parents[2]
EDGE_DAQ = [sys.executable, "-m", "edge_daq"]


def lines_of(archive: Path, measurement: str) -> list[str]:
    lines = [line for file in sorted(archive.glob("*.lp")) for line in file.read_text().splitlines()]
    return [line for line in lines if line.startswith(f"{measurement},")]


def test_the_checkout_recipe_runs_the_example_rig(tmp_path: Path) -> None:
    chamber_port, board_port, http_port = free_ports(3)
    # A copy of the checkout's config/, on free ports (the demo may hold 15020, 15021 and 9108).
    shutil.copytree(REPO / "config", tmp_path / "config")
    rig = tmp_path / "config" / "rigs.d" / "htol-07.yaml"
    text = rig.read_text().replace("port: 15020", f"port: {chamber_port}")
    rig.write_text(text.replace("port: 15021", f"port: {board_port}").replace("interval: 2s", "interval: 200ms"))
    gateway = tmp_path / "config" / "local.yaml"
    gateway.write_text(gateway.read_text().replace("127.0.0.1:9108", f"127.0.0.1:{http_port}"))
    simulators = [
        subprocess.Popen(
            [*EDGE_DAQ, "simulate", kind, "--tcp", f"127.0.0.1:{port}", "--seed", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for kind, port in (("watlow-f4", chamber_port), ("burnin-board", board_port))
    ]
    daemon: subprocess.Popen[str] | None = None
    try:
        wait_for_port(chamber_port)
        wait_for_port(board_port)
        daemon = subprocess.Popen(
            [*EDGE_DAQ, "run", "-c", "config/local.yaml"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        archive = tmp_path / "edge-daq-local" / "archive"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (lines_of(archive, "chamber") and lines_of(archive, "board1")):
            assert daemon.poll() is None, daemon.communicate()[0]
            time.sleep(0.1)
        assert lines_of(archive, "chamber")
        assert lines_of(archive, "board1")

        def command(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*EDGE_DAQ, *args], cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False
            )

        status = command("status", "-c", "config/local.yaml")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "chamber" in status.stdout
        test = command("test", "status", "htol-07", "-c", "config/local.yaml")
        assert test.returncode == 0, test.stdout + test.stderr
        assert "HTOL-2611-03" in test.stdout
        daemon.send_signal(signal.SIGTERM)
        log, _ = daemon.communicate(timeout=20)
        assert daemon.returncode == 0, log
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
        for simulator in simulators:
            simulator.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                simulator.wait(10)
    # Everything the daemon wrote is under ./edge-daq-local of the folder it started in.
    written = {path.name for path in (tmp_path / "edge-daq-local").iterdir()}
    assert written == {"archive", "spool", "state"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config", "edge-daq-local"]
