"""Every benchmark script runs (in its --quick mode), so none of them can rot. The figures are not judged here."""

from __future__ import annotations

import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench import nodered
from bench.common import BLOCK_REGISTERS, instrument_points
from edge_daq.drivers.modbus.codec import RegisterBlockDecoder
from edge_daq.drivers.modbus.config import ModbusPoint
from edge_daq.record import FieldValue

REPO = Path(__file__).resolve().parents[2]


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


def test_page_benchmark() -> None:
    output = run_benchmark("bench.page")
    assert "page code in the 5-browser windows:" in output
    assert output.count("FIGURE ") == 3


def test_mqtt_benchmark() -> None:
    output = run_benchmark("bench.mqtt")
    assert "qos 0: ratio edge-daq/aiomqtt-loop:" in output
    assert "qos 1: ratio edge-daq/aiomqtt-loop:" in output


def test_rtu_line_benchmark() -> None:
    output = run_benchmark("bench.rtu_line")
    assert "115200 baud:" in output
    assert "ratio edge-daq/pyserial:" in output


def test_write_latency_benchmark() -> None:
    output = run_benchmark("bench.write_latency")
    assert "request -> FC06 on the wire:" in output
    assert "FIGURE " in output


def test_backlog_benchmark() -> None:
    output = run_benchmark("bench.backlog")
    assert "ratio backlog/idle:" in output
    assert "ratio drain/live:" in output
    assert "ratio spool-pipeline/raw:" in output


def test_driver_overhead_benchmark() -> None:
    output = run_benchmark("bench.driver_overhead")
    assert "ratio edge-daq/pymodbus:" in output


def test_opcua_driver_benchmark() -> None:
    output = run_benchmark("bench.opcua_driver")
    assert "ratio edge-daq/asyncua:" in output


def test_startup_benchmark() -> None:
    output = run_benchmark("bench.startup")
    assert "check:" in output
    assert "ready:" in output


def test_fleet_benchmark() -> None:
    """Node-RED runs alongside for real (npm installs it once, into bench/.work/nodered: ~25 s)."""
    output = run_benchmark("bench.fleet")
    assert "scaling limit:" in output
    assert "p99 lateness" in output
    assert "MB per further 1,000 instruments" in output  # the step ran in a process of its own
    assert nodered.is_installed(), output
    assert "Node-RED side by side:" in output, output
    assert "Node-RED    20 instruments:" in output


def test_nodered_flow_has_one_read_per_instrument_and_one_client_per_endpoint() -> None:
    ports = [5020, 5021, 5022]
    flow = nodered.fleet_flow(ports, 7, 8086, "nodered_7", {"rig": "fleet", "gateway": "gw-fleet"})
    counts = Counter(node["type"] for node in flow)
    # Plus the benchmark's read-out of the poll count: http in -> function -> http response.
    assert counts == {"tab": 1, "modbus-client": 3, "modbus-read": 7, "function": 2, "influxdb out": 1, "influxdb": 1,
                      "http in": 1, "http response": 1}  # fmt: skip
    nodes = {node["id"]: node for node in flow}
    assert len(nodes) == len(flow)
    function = nodes[reads_target(flow)]
    assert function["type"] == "function"
    (out,) = (node for node in flow if node["type"] == "influxdb out")
    reads = [node for node in flow if node["type"] == "modbus-read"]
    for k, read in enumerate(reads):
        # Instrument k is where edge-daq's configuration puts it: unit k // endpoints + 1 on endpoint k % endpoints.
        client = nodes[read["server"]]
        assert (client["clienttype"], client["tcpHost"], client["tcpPort"]) == ("tcp", "127.0.0.1", str(ports[k % 3]))
        assert read["unitid"] == str(k // 3 + 1)
        assert read["topic"] == f"i{k:05d}"
        assert (read["dataType"], read["adr"], read["quantity"]) == ("HoldingRegister", "0", str(BLOCK_REGISTERS))
        assert (read["rate"], read["rateUnit"]) == ("1", "s")
        assert read["wires"] == [[function["id"]], []]
    assert function["wires"] == [[out["id"]]]
    config = nodes[out["influxdb"]]
    assert (config["influxdbVersion"], config["port"], config["database"]) == ("1.x", "8086", "nodered_7")
    assert out["precision"] == "ms"  # the function node's timestamps are milliseconds
    # Node-RED takes any property value equal to a node's id for a reference to it (and refuses a config node
    # "depending" on itself): only the real references may hold ids.
    references = {"id", "z", "server", "influxdb", "wires"}
    for node in flow:
        assert not [v for k, v in node.items() if k not in references and isinstance(v, str) and v in nodes], node


def reads_target(flow: list[dict[str, Any]]) -> str:
    """The one node every modbus-read's first output goes to."""
    (target,) = {read["wires"][0][0] for read in flow if read["type"] == "modbus-read"}
    return str(target)


def test_nodered_function_decodes_like_edge_daq() -> None:
    registers = [0, 1, 9, 10, 255, 32767, 32768, 65535, 65526, 12345, 54321, 40000]
    registers += [(n * 2617) & 0xFFFF for n in range(12)]
    for value in (3.14159, -273.15, 1e-30, float("nan"), 6.5e4, float("inf")):
        high, low = struct.unpack(">HH", struct.pack(">f", value))
        registers += [low, high]  # CDAB: the low word first
    points = [ModbusPoint.model_validate(point) for point in instrument_points()]
    decoder = RegisterBlockDecoder.compile([(point.address, point) for point in points], start=0, byte_order="ABCD")
    expected: dict[str, FieldValue] = {}
    failed: list[str] = []
    decoder.decode_into(struct.pack(f">{BLOCK_REGISTERS}H", *registers), expected, failed)
    assert failed == ["f03", "f05"]  # NaN and infinity: edge-daq fails them, the function leaves them out

    tags = {"test": "HTOL", "gateway": "gw-fleet", "rig": "fleet"}
    message = nodered.run_function(registers, "i00042", tags)
    fields, written_tags = message["payload"]
    assert isinstance(fields.pop("time"), int)

    # The same float32 either way: edge-daq writes the shortest decimal that reads back as it (3.14159), the
    # function the float32's exact double (3.141590118408203), or an integer when it is one (65000).
    def as_float32(values: dict[str, FieldValue]) -> dict[str, object]:
        return {
            name: struct.pack(">f", value) if name.startswith("f") and isinstance(value, int | float) else value
            for name, value in values.items()
        }

    assert as_float32(fields) == as_float32(expected)
    assert message["measurement"] == "i00042"
    assert written_tags == {**tags, "instrument": "i00042"}


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
