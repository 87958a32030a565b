"""The demo's terminal table: a board's own points on its row, and the socket it shows named, with its DUT."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rich.console import Console

from edge_daq.cli.demo import LatestValues, _table
from edge_daq.config.loader import load_config, shipped_profiles_folder
from edge_daq.daemon import Daemon
from edge_daq.record import Record, Series


def test_the_board_row_and_the_socket_it_shows(tmp_path: Path) -> None:
    loaded = load_config(shipped_profiles_folder().parent / "edge-daq.yaml")
    gateway = loaded.gateway.model_copy(update={"state_dir": tmp_path / "state"})
    daemon = Daemon(dataclasses.replace(loaded, gateway=gateway))
    view = LatestValues(daemon.ring.reader("demo-view"))
    board = {"rig": "htol-07", "instrument": "board1"}
    daemon.ring.append(Record(Series("burnin", board), {"board_temp": 125.5, "bias_enable": 1}, 1))
    for socket in (2, 1):
        tags = {**board, "socket": f"{socket:02d}", "dut": f"A3-{socket:04d}"}
        daemon.ring.append(Record(Series("burnin", tags), {"v": 3.3, "i": 40.0 + socket}, 2))
    batch = view.reader.read(100)
    for record in batch.records:
        view.file(record)
    console = Console(record=True, width=200)
    console.print(_table(view, daemon))
    text = console.export_text()
    board_row = next(line for line in text.splitlines() if "board1" in line)
    assert "board_temp=125.5" in board_row
    assert "socket 1 (A3-0001)" in text
    assert "1 of 2" in text
    assert "i=41" in text
