"""OPC UA driver overhead: polls per second of one polled OPC UA instrument through edge-daq's driver and link
scheduler, against a bare asyncua read loop reading the same nodes from the same server, in the same run.

The server is the OPC UA chamber simulator (asyncua's server, frozen model) in a process of its own, pinned to
the other core. The instrument reads the chamber's 7 nodes (5 numbers, one scaled, a Boolean, a string, a
UInt32) in one Read per poll. edge-daq's side is the real path of a poll: ``LinkScheduler``, the driver's Read,
the status check and conversion of every value, the record builder and the ring queue, back to back. The
baseline is ``await client.uaclient.read(params)`` on the same prepared Read request, without looking at the
values. The two alternate in rounds (A B B A ...) so that drift of a noisy machine cancels.

    .venv/bin/python -m bench.opcua_driver            # 6 rounds of 2 s per side
    .venv/bin/python -m bench.opcua_driver --quick    # the smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time

from asyncua import Client, ua

from bench import pipeline
from bench.common import pin, report_overhead, scheduler_round, stop_processes
from edge_daq.drivers.opcua.config import OpcUaConfig
from edge_daq.drivers.opcua.driver import PLUGIN as OPCUA
from tests.servers import free_port, wait_for_port

TARGET = 0.9
NODES = ["Temperature", "LoadTemperature", "Setpoint", "OutputPower", "DoorOpen", "Model", "SerialNumber"]
TYPES = {"DoorOpen": "bool", "Model": "str", "SerialNumber": "int"}


def instrument_config(endpoint: str) -> OpcUaConfig:
    points: list[dict[str, object]] = [
        {"name": name.lower(), "node": f"ns=2;s=Chamber.{name}", "type": TYPES.get(name, "float")} for name in NODES
    ]
    points[3]["scale"] = 0.01
    config = OpcUaConfig.model_validate(
        {"name": "bench", "driver": "opcua", "endpoint": endpoint, "interval": 1.0, "timeout": 2.0, "points": points}
    )
    # Shorter than any poll: the scheduler polls back to back. Below the 1 ms a rig file may give: set past validation.
    return config.model_copy(update={"interval": 1e-6})


async def edge_daq_round(config: OpcUaConfig, seconds: float) -> float:
    """Polls per second through the scheduler; the session is set up before the timed part, as the baseline's is."""
    return await scheduler_round(OPCUA, config, seconds, open_first=True)


async def asyncua_round(endpoint: str, seconds: float) -> float:
    client = Client(endpoint, timeout=2.0)
    await client.connect()
    try:
        params = ua.ReadParameters()
        params.NodesToRead = [
            ua.ReadValueId(NodeId=ua.NodeId.from_string(f"ns=2;s=Chamber.{name}"), AttributeId=ua.AttributeIds.Value)
            for name in NODES
        ]
        polls, started = 0, time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            values = await client.uaclient.read(params)
            if len(values) != len(NODES):
                raise RuntimeError(f"asyncua read answered {len(values)} values")
            polls += 1
        return polls / (time.perf_counter() - started)
    finally:
        await client.disconnect()


async def measure(endpoint: str, rounds: int, seconds: float) -> tuple[list[float], list[float]]:
    config = instrument_config(endpoint)
    await asyncua_round(endpoint, min(seconds, 0.5))  # warm-up
    ours: list[float] = []
    bare: list[float] = []
    for round_index in range(rounds):
        if round_index % 2 == 0:
            ours.append(await edge_daq_round(config, seconds))
            bare.append(await asyncua_round(endpoint, seconds))
        else:
            bare.append(await asyncua_round(endpoint, seconds))
            ours.append(await edge_daq_round(config, seconds))
        print(f"  round {round_index + 1}: edge-daq {ours[-1]:8.1f} polls/s, bare asyncua {bare[-1]:8.1f} polls/s")
    return ours, bare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m bench.opcua_driver")
    parser.add_argument("--rounds", type=int, default=6, help="A/B rounds")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per side and round")
    parser.add_argument("--quick", action="store_true", help="a second or two, for the smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 2, 0.3
    pin(0, pipeline.PIPELINE_CORE)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", "opcua-chamber", "--tcp", f"127.0.0.1:{port}", "--seed", "1",
         "--time-scale", "0", "--update-interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    pin(server.pid, pipeline.SERVER_CORE)
    try:
        wait_for_port(port, within=30.0)
        endpoint = f"opc.tcp://127.0.0.1:{port}/"
        print(f"one OPC UA instrument, {len(NODES)} nodes in one Read per poll, {args.rounds} A/B rounds")
        ours, bare = asyncio.run(measure(endpoint, args.rounds, args.seconds))
    finally:
        stop_processes([server])
    report_overhead(
        benchmark="opcua_driver",
        name="OPC UA driver overhead: polls/s of one polled OPC UA instrument",
        library="asyncua",
        baseline="bare asyncua read loop",
        ours=ours,
        bare=bare,
        target=TARGET,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
