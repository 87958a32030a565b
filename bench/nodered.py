"""Node-RED side by side with the fleet benchmark (bench/fleet.py): the same fleet, polled by the tool the issue
compares edge-daq with, on the same simulators and into the same influxd.

The packages the issue names are installed with npm into ``bench/.work/nodered/`` (once: a later run reuses
the install when it has the same versions). The flow is what a Node-RED user would build for the fleet: one
``modbus-client`` per endpoint (the editor's defaults: queued commands, parallel unit ids), one ``modbus-read``
per instrument (FC3, 36 registers from address 0, every 1 s), one function node decoding the 30 fields exactly
as edge-daq's rig file does, and one ``influxdb out`` node (InfluxDB 1.x), which writes each message as one
HTTP request: that node does no batching. Node-RED runs in a process of its own, pinned to the core edge-daq
had, while edge-daq is not running.

Measured over a steady window after a warm-up: the CPU time of the node process (/proc), its peak resident
memory, the polls delivered (points in InfluxDB whose timestamp, taken by the function node when the reply
arrived, lies inside the window) and the polls made (replies that reached the function node: it counts them
in its flow context, which a small HTTP flow on loopback reads out at the window's edges). Node-RED never
reports a skipped cycle (each read is a ``setInterval`` feeding a per-unit queue), so falling behind shows as
fewer polls than due: a run keeps up when at least 99% of the polls due in the window were made. Polls made
but not delivered are writes that InfluxDB refused: one HTTP request per message, 1000 a second at the main
size, is more than influxd 1.6 reliably absorbs on the benchmark's shared core; it answers some of them with
500 {"error":"timeout"}, and the node drops the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import BLOCK_REGISTERS, FLOAT32_POINTS, INT16_POINTS, cpu_seconds, free_port, pin, rss_mb
from tests.servers import InfluxDBv1Server

BENCH = Path(__file__).resolve().parent
FOLDER = BENCH / ".work" / "nodered"

# npm version ranges. node-red-contrib-modbus 5.23.3 is the newest release whose dependencies all come from the
# npm registry; node-red-contrib-influxdb 0.7 is its newest release.
PACKAGES: dict[str, str] = {"node-red": "4", "node-red-contrib-modbus": "5.23.3", "node-red-contrib-influxdb": "0.7"}
INSTALL_TIMEOUT = 300.0
START_TIMEOUT = 60.0
SETTLE_TIMEOUT = 30.0  # for influxd to work off Node-RED's writes after a run
COUNT_TIMEOUT = 30.0
KEPT_UP = 0.99  # share of the polls due in a window below which Node-RED counts as falling behind
POINTS_PER_INSTRUMENT = INT16_POINTS + FLOAT32_POINTS

# The function node: msg.payload is the 36 holding registers as unsigned 16-bit numbers, msg.topic the
# instrument. Points as in bench.common.instrument_points: int16 scaled 0.1 (a division, as edge-daq does it,
# for the same doubles), float32 word-swapped (CDAB: low word first); non-finite floats are dropped, as
# edge-daq fails such points. ``time`` becomes the point's timestamp (influxdb out, precision ms). The count
# of polls is the benchmark's, not part of what a user would write.
FUNCTION_BODY = """\
flow.set("polls", (flow.get("polls") || 0) + 1);
const r = msg.payload;
const fields = {time: Date.now()};
for (let n = 0; n < %(int16)d; n++) {
    const v = r[n];
    fields[(n < 10 ? "t0" : "t") + n] = (v > 32767 ? v - 65536 : v) / 10;
}
const view = new DataView(new ArrayBuffer(4));
for (let n = 0; n < %(float32)d; n++) {
    view.setUint16(0, r[%(int16)d + 2 * n + 1]);
    view.setUint16(2, r[%(int16)d + 2 * n]);
    const value = view.getFloat32(0);
    if (Number.isFinite(value)) fields[(n < 10 ? "f0" : "f") + n] = value;
}
return {measurement: msg.topic, payload: [fields, Object.assign({instrument: msg.topic}, %(tags)s)]};
"""


class NodeRedUnavailableError(RuntimeError):
    """Node-RED cannot be installed or run here; the message is the reason the figure rows give."""


def installed_versions(folder: Path = FOLDER) -> dict[str, str]:
    """Version of each package in ``folder/node_modules`` (missing ones left out)."""
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(OSError, ValueError, KeyError):
            versions[name] = json.loads((folder / "node_modules" / name / "package.json").read_text())["version"]
    return versions


def satisfies(version: str, wanted: str) -> bool:
    """``wanted`` is a version or a prefix of one ("4" takes any 4.x.y)."""
    return version == wanted or version.startswith(wanted + ".")


def is_installed(folder: Path = FOLDER) -> bool:
    """The folder holds an install of exactly :data:`PACKAGES` (its package.json) at matching versions."""
    try:
        manifest = json.loads((folder / "package.json").read_text())
    except (OSError, ValueError):
        return False
    versions = installed_versions(folder)
    return (
        manifest.get("dependencies") == PACKAGES
        and (folder / "package-lock.json").exists()
        and all(name in versions and satisfies(versions[name], wanted) for name, wanted in PACKAGES.items())
    )


def install(folder: Path = FOLDER) -> Path:
    """Install the packages into ``folder`` unless it already has them; the folder, or NodeRedUnavailableError."""
    if shutil.which("node") is None:
        raise NodeRedUnavailableError("node is not on PATH (Node.js 18 or later, with npm)")
    if is_installed(folder):
        return folder
    npm = shutil.which("npm")
    if npm is None:
        raise NodeRedUnavailableError("npm is not on PATH (it comes with Node.js)")
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"name": "edge-daq-bench-nodered", "private": True, "dependencies": PACKAGES}
    (folder / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
    command = [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "--fetch-retries=1"]
    try:
        result = subprocess.run(
            command, cwd=folder, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise NodeRedUnavailableError(f"npm install took over {INSTALL_TIMEOUT:.0f} s") from None
    if result.returncode != 0 or not is_installed(folder):
        raise NodeRedUnavailableError(f"npm install failed (exit {result.returncode}): {npm_problem(result.stderr)}")
    return folder


def npm_problem(stderr: str) -> str:
    """The gist of npm's error output: its error code and first message line, without the stack."""
    lines = [line.removeprefix("npm error").strip() for line in stderr.splitlines() if line.startswith("npm error")]
    code = next((line.removeprefix("code ") for line in lines if line.startswith("code ")), "")
    skipped = ("code ", "syscall ", "errno ", "at ", "A complete log")
    message = next((line for line in lines if line and not line.startswith(skipped)), stderr.strip()[-200:])
    return ": ".join(filter(None, [code, message]))[:300] or "no output"


def instrument_name(k: int) -> str:
    return f"i{k:05d}"


def function_body(tags: dict[str, str]) -> str:
    return FUNCTION_BODY % {"int16": INT16_POINTS, "float32": FLOAT32_POINTS, "tags": json.dumps(tags)}


def fleet_flow(
    ports: list[int], instruments: int, influx_port: int, database: str, tags: dict[str, str]
) -> list[dict[str, Any]]:
    """The flow of a fleet: instrument k is unit ``k // len(ports) + 1`` on ``ports[k % len(ports)]``, as in
    edge-daq's configuration, and its records carry ``tags`` plus ``instrument`` in measurement ``i0000k``."""
    flow: list[dict[str, Any]] = [{"id": "tab-fleet", "type": "tab", "label": "fleet", "disabled": False, "info": ""}]
    for index, port in enumerate(ports):
        # The editor's defaults for a TCP client, with the endpoint's address.
        flow.append(
            {"id": f"client-{index}", "type": "modbus-client", "name": f"endpoint {index}", "clienttype": "tcp",
             "bufferCommands": True, "stateLogEnabled": False, "queueLogEnabled": False,
             "failureLogEnabled": True, "tcpHost": "127.0.0.1", "tcpPort": str(port), "tcpType": "DEFAULT",
             "serialPort": "/dev/ttyUSB", "serialType": "RTU-BUFFERD", "serialBaudrate": "9600",
             "serialDatabits": "8", "serialStopbits": "1", "serialParity": "none", "serialConnectionDelay": "100",
             "serialAsciiResponseStartDelimiter": "0x3A", "unit_id": "1", "commandDelay": "1",
             "clientTimeout": "1000", "reconnectOnTimeout": True, "reconnectTimeout": "2000",
             "parallelUnitIdsAllowed": True}
        )  # fmt: skip
    for k in range(instruments):
        flow.append(
            {"id": f"read-{k}", "type": "modbus-read", "z": "tab-fleet", "name": instrument_name(k),
             "topic": instrument_name(k), "showStatusActivities": False, "logIOActivities": False,
             "showErrors": False, "unitid": str(k // len(ports) + 1), "dataType": "HoldingRegister", "adr": "0",
             "quantity": str(BLOCK_REGISTERS), "rate": "1", "rateUnit": "s", "delayOnStart": False,
             "startDelayTime": "", "server": f"client-{k % len(ports)}", "useIOFile": False, "ioFile": "",
             "useIOForPayload": False, "emptyMsgOnFail": False, "x": 150, "y": 40 + 40 * k,
             "wires": [["function-fields"], []]}
        )  # fmt: skip
    flow += [
        {"id": "function-fields", "type": "function", "z": "tab-fleet", "name": "fields", "func": function_body(tags),
         "outputs": 1, "timeout": 0, "noerr": 0, "initialize": "", "finalize": "", "libs": [], "x": 400, "y": 40,
         "wires": [["influxdb-out"]]},
        {"id": "influxdb-out", "type": "influxdb out", "z": "tab-fleet", "influxdb": "influxdb-config", "name": "",
         "measurement": "", "precision": "ms", "retentionPolicy": "", "database": "database",
         "precisionV18FluxV20": "ms", "retentionPolicyV18Flux": "", "org": "organisation", "bucket": "bucket",
         "x": 600, "y": 40, "wires": []},
        {"id": "influxdb-config", "type": "influxdb", "hostname": "127.0.0.1", "port": str(influx_port),
         "protocol": "http", "database": database, "name": "", "usetls": False, "tls": "",
         "influxdbVersion": "1.x", "url": "", "timeout": "10", "rejectUnauthorized": False},
        # The benchmark's read-out of the poll count: GET /polls.
        {"id": "polls-in", "type": "http in", "z": "tab-fleet", "name": "", "url": "/polls", "method": "get",
         "upload": False, "skipBodyParsing": False, "swaggerDoc": "", "x": 150, "y": 0,
         "wires": [["polls-function"]]},
        {"id": "polls-function", "type": "function", "z": "tab-fleet", "name": "poll count",
         "func": 'msg.payload = String(flow.get("polls") || 0);\nreturn msg;', "outputs": 1, "timeout": 0,
         "noerr": 0, "initialize": "", "finalize": "", "libs": [], "x": 400, "y": 0, "wires": [["polls-out"]]},
        {"id": "polls-out", "type": "http response", "z": "tab-fleet", "name": "", "statusCode": "",
         "headers": {}, "x": 600, "y": 0, "wires": []},
    ]  # fmt: skip
    return flow


SETTINGS = """\
module.exports = {
    flowFile: "flows.json",
    credentialSecret: false,
    uiHost: "127.0.0.1",
    uiPort: %(port)d,
    httpAdminRoot: false,
    httpNodeRoot: "/",
    disableEditor: true,
    telemetry: {enabled: false},
    diagnostics: {enabled: false, ui: false},
    logging: {console: {level: "info", metrics: false, audit: false}},
    editorTheme: {projects: {enabled: false}},
};
"""


class NodeRed:
    """One Node-RED process on a generated flow, its user directory in ``user_dir``, its log in ``node-red.log``."""

    def __init__(self, folder: Path, user_dir: Path, flow: list[dict[str, Any]]) -> None:
        self.folder = folder
        self.user_dir = user_dir
        user_dir.mkdir(parents=True)
        (user_dir / "flows.json").write_text(json.dumps(flow))
        (user_dir / "flows_cred.json").write_text(json.dumps({"influxdb-config": {"username": "", "password": ""}}))
        self.settings = user_dir / "settings.js"
        self.port = free_port()
        self.settings.write_text(SETTINGS % {"port": self.port})
        self.log_path = user_dir / "node-red.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def problem(self) -> str:
        """What Node-RED's log says went wrong: its first error lines, else its last lines."""
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        errors = [line for line in lines if "[error]" in line or "Error" in line]
        return " | ".join(errors[:2] or lines[-3:])

    def start(self, cores: set[int]) -> float:
        """Start Node-RED pinned to ``cores``; return the seconds until it logged that its flows started."""
        red = self.folder / "node_modules" / "node-red" / "red.js"
        command = ["node", str(red), "--userDir", str(self.user_dir), "--settings", str(self.settings)]
        started = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT)
        with contextlib.suppress(FileNotFoundError):  # exited already: reported below
            pin(self.pid, cores)
        while "Started flows" not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None:
                raise NodeRedUnavailableError(f"Node-RED exited with {self.process.returncode}: {self.problem()}")
            if time.perf_counter() - started > START_TIMEOUT:
                raise NodeRedUnavailableError(f"Node-RED did not start its flows in {START_TIMEOUT:.0f} s")
            time.sleep(0.1)
        with contextlib.suppress(FileNotFoundError):  # again: V8's and libuv's threads may predate the first
            pin(self.pid, cores)
        return time.perf_counter() - started

    async def polls(self) -> int:
        """Replies that reached the function node so far."""
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{self.port}/polls") as response,
            ):
                return int(await response.text())
        except (aiohttp.ClientError, ValueError) as error:
            raise NodeRedUnavailableError(f"Node-RED's poll count could not be read: {error!r}") from None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@dataclass(slots=True)
class NodeRedRun:
    instruments: int
    seconds: float
    polls: int  # replies that reached the function node in the window
    delivered: int | None  # polls stored with a timestamp inside the window (None: influxd did not say)
    cpu_seconds: float
    rss_peak_mb: float
    start_seconds: float

    @property
    def due(self) -> float:
        return self.instruments * self.seconds

    @property
    def kept_up(self) -> bool:
        return self.polls >= KEPT_UP * self.due

    @property
    def cpu_per_value_us(self) -> float:
        """CPU time per delivered value."""
        return self._per_value(self.delivered or 0)

    @property
    def cpu_per_polled_value_us(self) -> float:
        """CPU time per value read, delivered or not."""
        return self._per_value(self.polls)

    def _per_value(self, polls: int) -> float:
        return 1e6 * self.cpu_seconds / (polls * POINTS_PER_INSTRUMENT) if polls else float("nan")

    def describe(self) -> str:
        if self.delivered is None:
            delivered = f"delivered unknown (influxd did not answer the count in {COUNT_TIMEOUT:.0f} s)"
        else:
            delivered = f"{self.delivered} delivered ({self.delivered / self.polls:.1%})"
        return (
            f"Node-RED {self.instruments:>5} instruments: {self.polls:>7} polls of {self.due:.0f} due "
            f"({self.polls / self.due:.1%}{'' if self.kept_up else ', fell behind'}), {delivered}, "
            f"RSS {self.rss_peak_mb:.0f} MB, CPU {self.cpu_seconds / self.seconds:.0%} of a core, "
            f"{self.cpu_per_value_us:.1f} us/delivered value ({self.cpu_per_polled_value_us:.1f} per polled value), "
            f"started in {self.start_seconds:.1f} s"
        )


async def count_polls(influx: InfluxDBv1Server, database: str, start_ns: int, end_ns: int) -> int:
    """Points (one per delivered poll) timestamped in [start_ns, end_ns), over every instrument's measurement."""
    statement = f"SELECT count(t00) FROM /.*/ WHERE time >= {start_ns} AND time < {end_ns}"
    result = await influx.query(statement, database=database)
    return sum(int(series["values"][0][1]) for series in result.get("series", []))


async def settle(pid: int, *, idle: float = 0.2, within: float = SETTLE_TIMEOUT) -> None:
    """Wait until a process uses under ``idle`` of a core over a second (or ``within`` seconds have passed)."""
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        before = cpu_seconds(pid)
        await asyncio.sleep(1.0)
        if cpu_seconds(pid) - before < idle:
            return


async def run_fleet(
    folder: Path,
    influx: InfluxDBv1Server,
    root: Path,
    ports: list[int],
    instruments: int,
    tags: dict[str, str],
    cores: set[int],
    warmup: float,
    seconds: float,
) -> NodeRedRun:
    """Poll ``instruments`` with Node-RED for a window of ``seconds`` after ``warmup`` (from its flows' start)."""
    database = f"nodered_{instruments}"
    await influx.query(f"CREATE DATABASE {database}")
    node_red = NodeRed(folder, root / database, fleet_flow(ports, instruments, influx.port, database, tags))
    try:
        start_seconds = node_red.start(cores)
        await asyncio.sleep(warmup)
        polls0 = await node_red.polls()
        cpu0, start_ns, started = cpu_seconds(node_red.pid), time.time_ns(), time.perf_counter()
        rss_peak = rss_mb(node_red.pid)
        while (left := started + seconds - time.perf_counter()) > 0:
            await asyncio.sleep(min(1.0, left))
            rss_peak = max(rss_peak, rss_mb(node_red.pid))
        cpu, elapsed, end_ns = cpu_seconds(node_red.pid) - cpu0, time.perf_counter() - started, time.time_ns()
        polls = await node_red.polls() - polls0
        await asyncio.sleep(1.0)  # the window's last writes in flight
    finally:
        node_red.stop()
    if polls == 0:
        raise NodeRedUnavailableError(f"Node-RED read nothing from the simulators: {node_red.problem()}")
    # influxd may still be working off a backlog of Node-RED's writes (it answers queries late then, and would
    # slow down the next run): the count, and the next run, wait until it is idle. Its database is kept:
    # dropping one influxd is still writing to can hang.
    assert influx.pid is not None
    await settle(influx.pid)
    try:
        async with asyncio.timeout(COUNT_TIMEOUT):
            delivered: int | None = await count_polls(influx, database, start_ns, end_ns)
    except TimeoutError:
        delivered = None
    return NodeRedRun(instruments, elapsed, polls, delivered, cpu, rss_peak, start_seconds)


def run_function(registers: list[int], topic: str, tags: dict[str, str]) -> dict[str, Any]:
    """The message the function node returns for one reply, evaluated by node (for the tests)."""
    script = (
        f"const msg = {{topic: {json.dumps(topic)}, payload: {json.dumps(registers)}}};\n"
        "const values = {}, flow = {get: (key) => values[key], set: (key, value) => { values[key] = value; }};\n"
        f"const out = (function (msg) {{\n{function_body(tags)}}})(msg);\n"
        "process.stdout.write(JSON.stringify(out));\n"
    )
    result = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=30, check=True)
    message: dict[str, Any] = json.loads(result.stdout)
    return message
