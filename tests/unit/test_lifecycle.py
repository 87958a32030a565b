"""The service lifecycle: real signals to this process, a real sd_notify datagram socket."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import tempfile
from pathlib import Path

import pytest

from edge_daq.service.lifecycle import Signals
from edge_daq.service.notify import Notifier


async def test_sigterm_and_sigint_stop_once_with_stopping_and_sighup_asks_for_a_reload() -> None:
    folder = tempfile.mkdtemp(prefix="sdn-")  # an AF_UNIX path is limited to 107 bytes
    path = os.path.join(folder, "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setblocking(False)
        notifier = Notifier({"NOTIFY_SOCKET": path})
        with notifier, Signals(notifier) as signals:
            os.kill(os.getpid(), signal.SIGHUP)
            async with asyncio.timeout(2):
                await signals.reload.wait()
            assert not signals.stop.is_set()
            os.kill(os.getpid(), signal.SIGTERM)
            async with asyncio.timeout(2):
                await signals.stop.wait()
            os.kill(os.getpid(), signal.SIGINT)  # a second stop signal during the drain: no second STOPPING
            await asyncio.sleep(0.05)
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(2):
                first = (await loop.sock_recv(sock, 4096)).decode()
            assert first.splitlines()[0] == "STOPPING=1"
            with pytest.raises(BlockingIOError):
                sock.recv(4096)
        # The handlers are gone with the lifecycle: the defaults are back.
        assert signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, signal.default_int_handler)
    os.unlink(path)
    os.rmdir(folder)


def test_cli_run_only_delegates() -> None:
    """``cli/run.py`` parses arguments; signals, notification and the event loop live in the service layer."""
    import ast

    import edge_daq.cli.run as run

    tree = ast.parse(Path(run.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "pathlib", "edge_daq.service.lifecycle"}
