"""The output registry: a throwaway output type registered here runs end to end through the real daemon.

Nothing outside this file knows the type: the config union of ``outputs:``, the daemon's construction and the
routing all go through ``edge_daq.sinks.registry``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import yaml
from pydantic import Field

from edge_daq.config.loader import load_config
from edge_daq.config.models import GatewayConfig, OutputsConfig
from edge_daq.daemon import Daemon, output_configs
from edge_daq.errors import ConfigError
from edge_daq.record import Record
from edge_daq.sinks import registry
from edge_daq.sinks.base import Output, OutputConfig, WriteResult
from edge_daq.sinks.file import FileOutputConfig
from edge_daq.sinks.influxdb import InfluxDBOutputConfig
from edge_daq.sinks.mqtt import MqttOutputConfig
from simulators.modbus_server import ModbusTcpServer, RegisterMapDevice

ROOT = Path(__file__).resolve().parents[2]


class MemoryOutputConfig(OutputConfig):
    label: str = Field(min_length=1)


DELIVERED: dict[str, list[Record]] = {}


class MemoryOutput(Output):
    def __init__(self, config: MemoryOutputConfig) -> None:
        self.config = config

    async def write(self, records: Sequence[Record]) -> WriteResult:
        DELIVERED.setdefault(self.name, []).extend(records)
        return WriteResult(written=len(records))


def make_memory(name: str, config: MemoryOutputConfig, context: registry.OutputContext) -> MemoryOutput:
    return MemoryOutput(config)


@pytest.fixture
def memory_type() -> Iterator[None]:
    registry.register("memory", MemoryOutputConfig, make_memory)
    DELIVERED.clear()
    try:
        yield
    finally:
        registry.unregister("memory")


class Counter(RegisterMapDevice):
    highest_address = 1

    def register_values(self) -> Mapping[int, int]:
        return {0: 215, 1: 7}


def write_gateway(folder: Path, port: int, outputs: str) -> Path:
    for rig in ("htol-07", "htol-08"):
        instrument = {
            "name": "chamber",
            "driver": "modbus-tcp",
            "host": "127.0.0.1",
            "port": port,
            "unit": 1,
            "interval": "100ms",
            "timeout": "300ms",
            "points": [{"name": "temp", "address": 0, "type": "int16", "scale": 0.1}],
        }
        (folder / "rigs.d").mkdir(exist_ok=True)
        (folder / "rigs.d" / f"{rig}.yaml").write_text(yaml.safe_dump({"rig": rig, "instruments": [instrument]}))
    gateway = folder / "edge-daq.yaml"
    gateway.write_text(f"gateway: gw-reg\nrigs: rigs.d/\noutputs:\n{outputs}")
    return gateway


def test_the_builtin_types_are_registered_and_a_taken_name_is_refused() -> None:
    assert registry.type_names() == ["file", "influxdb", "mqtt"]
    assert registry.config_model("influxdb") is InfluxDBOutputConfig
    with pytest.raises(ValueError, match="already registered"):
        registry.register("file", FileOutputConfig, make_memory)


async def test_a_registered_type_runs_end_to_end_through_the_daemon(memory_type: None, tmp_path: Path) -> None:
    outputs = (
        "  everything: {type: memory, label: a, flush_interval: 100ms}\n"
        "  only-07: {type: memory, label: b, flush_interval: 100ms, include: {rig: [htol-07]}, records: [data]}\n"
    )
    async with ModbusTcpServer({1: Counter()}) as server:
        config = load_config(write_gateway(tmp_path, server.port, outputs))
        daemon = Daemon(config, drain_timeout=5)
        assert [runner.output.name for runner in daemon.runners] == ["everything", "only-07"]
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        async with asyncio.timeout(10):
            while min((s.records for s in daemon.stats.instruments), default=0) < 3:
                await asyncio.sleep(0.05)
        stop.set()
        report = await asyncio.wait_for(task, 15)
    assert report.complete, report.undelivered
    everything, only_07 = DELIVERED["everything"], DELIVERED["only-07"]
    assert {r.tags.get("rig") for r in everything if r.measurement == "chamber"} == {"htol-07", "htol-08"}
    assert {r.measurement for r in everything} == {"chamber", "edge_daq_status"}
    assert only_07
    assert all(r.measurement == "chamber" and r.tags["rig"] == "htol-07" for r in only_07)
    taken = [r for r in everything if r.measurement == "chamber" and r.tags["rig"] == "htol-07"]
    assert [r.time_ns for r in only_07] == [r.time_ns for r in taken]
    assert only_07[0].fields == {"temp": 21.5}


def test_an_unknown_type_and_a_bad_key_are_positioned(memory_type: None, tmp_path: Path) -> None:
    gateway = write_gateway(
        tmp_path,
        1,
        "  lab: {type: memroy, label: a}\n  other: {label: a}\n  mem: {type: memory, lable: a}\n",
    )
    with pytest.raises(ConfigError) as raised:
        load_config(gateway)
    shown = [f"{issue.line}:{issue.column}: {issue.message}" for issue in raised.value.issues]
    assert shown[0].startswith("4:15: unknown output type 'memroy'; known types: file, influxdb, memory, mqtt")
    assert shown[1] == "5:10: missing key 'type'"
    assert "6:23: unknown key 'lable' (did you mean 'label'?)" in shown


def test_previous_release_outputs_load_unchanged_and_keep_their_names() -> None:
    gateway = GatewayConfig.model_validate(
        {
            "gateway": "gw",
            "outputs": {
                "influxdb": {"api": "v1", "database": "d"},
                "mqtt": {},
                "file": {"dir": "/tmp/archive"},
            },
        }
    )
    configs = output_configs(gateway)
    assert list(configs) == ["influxdb", "mqtt", "file"]
    assert isinstance(configs["influxdb"], InfluxDBOutputConfig)
    assert isinstance(configs["mqtt"], MqttOutputConfig)
    assert isinstance(configs["file"], FileOutputConfig)
    # An empty entry (`influxdb:` with nothing under it) is no output, as before.
    assert output_configs(GatewayConfig.model_validate({"gateway": "gw", "outputs": {"influxdb": None}})) == {
        "file": FileOutputConfig()
    }


def _documented_outputs() -> Iterator[tuple[str, object]]:
    for path in (ROOT / "README.md", ROOT / "docs" / "configuration.md"):
        for block in re.findall(r"```yaml\n(.*?)```", path.read_text(), flags=re.S):
            try:
                document = yaml.safe_load(block)
            except yaml.YAMLError:
                continue
            if isinstance(document, dict) and isinstance(document.get("outputs"), dict):
                yield f"{path.name}: {list(document['outputs'])}", document["outputs"]


def test_every_documented_outputs_block_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = list(_documented_outputs())
    assert blocks
    for where, outputs in blocks:
        try:
            OutputsConfig.model_validate(outputs)
        except Exception as error:  # pragma: no cover - shown on failure
            raise AssertionError(f"{where}: {error}") from error
