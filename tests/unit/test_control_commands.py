"""The commands that talk to the running daemon (`test`, `note`, `write`) share one way to its control socket:
what each prints and returns when there is no daemon, when the gateway file is refused and when the daemon
refuses the request, against a real control server on a Unix socket."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from edge_daq.cli import main
from edge_daq.config.models import CONTROL_SOCKET
from edge_daq.reliability.control import ControlServer

COMMANDS = {
    "test": ["test", "status", "htol-07"],
    "note": ["note", "htol-07", "door opened"],
    "write": ["write", "htol-07", "chamber", "temp_sp", "125"],
}


@pytest.fixture
def refusing_daemon(tmp_path: Path) -> Iterator[list[Mapping[str, Any]]]:
    """A control server in a thread of its own that refuses every request, as the daemon refuses a bad one."""
    requests: list[Mapping[str, Any]] = []

    def refuse(request: Mapping[str, Any]) -> dict[str, Any]:
        requests.append(request)
        return {"ok": False, "error": "no rig 'htol-07' on this gateway"}

    loop = asyncio.new_event_loop()
    server = ControlServer(tmp_path / CONTROL_SOCKET, refuse)
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield requests
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(server.close())
        loop.close()


@pytest.mark.parametrize("command", COMMANDS)
def test_no_daemon_is_exit_1_naming_the_socket(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*COMMANDS[command], "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    prefix = "edge-daq write" if command == "write" else "edge-daq"
    assert err.startswith(f"{prefix}: cannot reach the daemon at {tmp_path / CONTROL_SOCKET}: "), err


@pytest.mark.parametrize("command", COMMANDS)
def test_a_refused_gateway_file_is_exit_2_with_its_position(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = tmp_path / "edge-daq.yaml"
    gateway.write_text("gateway: gw\nstate_dir: [1, 2]\n")
    assert main([*COMMANDS[command], "-c", str(gateway)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{gateway}:2:"), err


@pytest.mark.parametrize("command", COMMANDS)
def test_the_daemons_refusal_is_exit_1_with_its_reason(
    command: str, tmp_path: Path, refusing_daemon: list[Mapping[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*COMMANDS[command], "--state-dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    prefix = "edge-daq write" if command == "write" else "edge-daq"
    assert err == f"{prefix}: no rig 'htol-07' on this gateway\n"
    assert out == ""
    (request,) = refusing_daemon
    assert request["rig"] == "htol-07"
