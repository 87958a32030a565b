"""MQTT output throughput: records per second that ``MqttOutput.write`` sustains to a local Mosquitto at QoS 0
and QoS 1, against baselines measured in the same run with the same payloads to the same broker:

- ``aiomqtt loop``: the plain way to publish with aiomqtt, ``await client.publish(...)`` one message after the
  other (at QoS 1 each waits for its PUBACK);
- ``mosquitto_pub -l``: the C client of Mosquitto publishing one message per line of a file, as a ceiling.

A record is a batch member with 10 fields (8 floats, an integer, a boolean) and 6 tags, spread over 20
instruments; batches hold 1000 records. ``write()`` returns once every message is acknowledged (QoS 1) or written
to the socket (QoS 0), and its time includes the JSON encoding. No subscriber is attached: the broker only
acknowledges. The benchmark process is pinned to one core and Mosquitto to another when there are two.

    .venv/bin/python -m bench.mqtt              # 30000 records per phase
    .venv/bin/python -m bench.mqtt --quick      # a few seconds: the smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import structlog

from bench.common import Figure, emit
from edge_daq.record import FieldValue, Record, Series
from edge_daq.sinks.mqtt import MqttOutput, MqttOutputConfig
from tests.servers import MosquittoServer

BENCH_CORE = {0}
BROKER_CORE = {1}
BATCH_SIZE = 1000
INSTRUMENTS = 20


@dataclass
class Phase:
    qos: int
    name: str
    records: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.records / self.seconds


def pin(pid: int, cores: set[int]) -> None:
    if cores <= set(range(os.cpu_count() or 1)):
        os.sched_setaffinity(pid, cores)


def make_records(count: int) -> list[Record]:
    series = [
        Series(
            "chamber",
            {
                "gateway": "gw-bench",
                "site": "lab2",
                "rig": "htol-07",
                "instrument": f"chamber{index:02d}",
                "test": "HTOL",
                "lot": "L2611-03",
            },
        )
        for index in range(INSTRUMENTS)
    ]
    base = time.time_ns()
    records = []
    for index in range(count):
        fields: dict[str, FieldValue] = {f"temp_{k}": 125.0 + index % 97 * 0.013 + k for k in range(8)}
        fields["cycle"] = index
        fields["door_open"] = index % 5 == 0
        records.append(Record(series[index % INSTRUMENTS], fields, base + index))
    return records


async def run_output(port: int, qos: int, records: list[Record]) -> float:
    config = MqttOutputConfig.model_validate({"port": port, "qos": qos, "topic_prefix": "bench"})
    async with MqttOutput(config, gateway="gw-bench") as output:
        start = time.perf_counter()
        for offset in range(0, len(records), BATCH_SIZE):
            await output.write(records[offset : offset + BATCH_SIZE])
        return time.perf_counter() - start


async def run_aiomqtt_loop(port: int, qos: int, messages: list[tuple[str, bytes]]) -> float:
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-raw") as client:
        start = time.perf_counter()
        for topic, payload in messages:
            await client.publish(topic, payload, qos)
        return time.perf_counter() - start


def run_mosquitto_pub(port: int, qos: int, messages: list[tuple[str, bytes]], folder: Path) -> float | None:
    program = shutil.which("mosquitto_pub")
    if program is None:
        return None
    lines = folder / "payloads.jsonl"
    lines.write_bytes(b"".join(payload + b"\n" for _, payload in messages))
    topic = messages[0][0]  # -l publishes every line to one topic
    with lines.open("rb") as stdin:
        start = time.perf_counter()
        subprocess.run(
            [program, "-h", "127.0.0.1", "-p", str(port), "-q", str(qos), "-t", topic, "-l", "-i", "bench-c"],
            stdin=stdin,
            check=True,
        )
        return time.perf_counter() - start


async def measure(port: int, count: int, folder: Path) -> list[Phase]:
    records = make_records(count)
    encoder = MqttOutput(MqttOutputConfig(topic_prefix="bench"), gateway="gw-bench")
    messages = [encoder.encode_record(record) for record in records]
    phases = []
    for qos in (0, 1):
        await run_output(port, qos, records[:BATCH_SIZE])  # warm-up: connections, caches
        phases.append(Phase(qos, "edge-daq MqttOutput.write", count, await run_output(port, qos, records)))
        phases.append(Phase(qos, "aiomqtt loop (await each)", count, await run_aiomqtt_loop(port, qos, messages)))
        seconds = await asyncio.to_thread(run_mosquitto_pub, port, qos, messages, folder)
        if seconds is not None:
            phases.append(Phase(qos, "mosquitto_pub -l (C)", count, seconds))
    return phases


def report(phases: list[Phase], count: int) -> None:
    print(
        f"MQTT output throughput: {count} records per phase, {BATCH_SIZE}-record batches, 10 fields per record, "
        f"local Mosquitto, {'no pinning' if (os.cpu_count() or 1) < 2 else 'bench on core 0, broker on core 1'}"
    )
    print(f"{'qos':>3}  {'path':<28} {'records':>8} {'seconds':>8} {'records/s':>10}  edge-daq/this")
    for phase in phases:
        ours = next(p for p in phases if p.qos == phase.qos and p.name.startswith("edge-daq"))
        print(
            f"{phase.qos:>3}  {phase.name:<28} {phase.records:>8} {phase.seconds:>8.2f} "
            f"{phase.per_second:>10,.0f}  {ours.per_second / phase.per_second:>6.2f}"
        )
    for qos in (0, 1):
        ours = next(p for p in phases if p.qos == qos and p.name.startswith("edge-daq"))
        raw = next(p for p in phases if p.qos == qos and p.name.startswith("aiomqtt"))
        print(f"qos {qos}: ratio edge-daq/aiomqtt-loop: {ours.per_second / raw.per_second:.2f}")
        emit(
            Figure(
                benchmark="mqtt",
                name=f"MQTT output records/s at QoS {qos}",
                value=ours.per_second,
                unit="records/s",
                baseline="aiomqtt loop (await each publish)",
                baseline_value=raw.per_second,
                ratio=ours.per_second / raw.per_second,
                target="none set (informative)",
                met=None,
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mqtt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run for the smoke test")
    parser.add_argument("--records", type=int, default=30_000, help="records per phase (default 30000)")
    args = parser.parse_args()
    count = 2 * BATCH_SIZE if args.quick else args.records
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # no connect lines
    pin(0, BENCH_CORE)
    with (
        tempfile.TemporaryDirectory(prefix="bench-mqtt-") as folder,
        MosquittoServer(Path(folder) / "mosquitto") as broker,
    ):
        assert broker.pid is not None
        pin(broker.pid, BROKER_CORE)
        phases = asyncio.run(measure(broker.port, count, Path(folder)))
    report(phases, count)


if __name__ == "__main__":
    main()
