"""Every benchmark script runs (in its --quick mode), so none of them can rot. The figures are not judged here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(module: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", module, "--quick"], cwd=REPO, capture_output=True, text=True, timeout=240, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_pipeline_benchmark() -> None:
    output = run_benchmark("bench.pipeline")
    assert "ratio pipeline/raw:" in output
    assert "FIGURE " in output


def test_mqtt_benchmark() -> None:
    output = run_benchmark("bench.mqtt")
    assert "qos 0: ratio edge-daq/aiomqtt-loop:" in output
    assert "qos 1: ratio edge-daq/aiomqtt-loop:" in output


def test_rtu_line_benchmark() -> None:
    output = run_benchmark("bench.rtu_line")
    assert "115200 baud:" in output
    assert "ratio edge-daq/pyserial:" in output


def test_backlog_benchmark() -> None:
    output = run_benchmark("bench.backlog")
    assert "ratio backlog/idle:" in output
    assert "ratio drain/live:" in output
    assert "ratio spool-pipeline/raw:" in output


def test_driver_overhead_benchmark() -> None:
    output = run_benchmark("bench.driver_overhead")
    assert "ratio edge-daq/pymodbus:" in output


def test_startup_benchmark() -> None:
    output = run_benchmark("bench.startup")
    assert "check:" in output
    assert "ready:" in output


def test_fleet_benchmark() -> None:
    output = run_benchmark("bench.fleet")
    assert "scaling limit:" in output
    assert "p99 lateness" in output


def test_bench_runner_writes_results(tmp_path: Path) -> None:
    """``python -m bench`` collects the benchmarks' FIGURE lines into the table and the results file."""
    results = tmp_path / "RESULTS.md"
    command = [sys.executable, "-m", "bench", "--quick", "--only", "driver_overhead", "--results", str(results)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "driver overhead: polls/s" in result.stdout
    text = results.read_text()
    assert "## Machine" in text
    assert "| driver overhead: polls/s of one Modbus TCP instrument |" in text
