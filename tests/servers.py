"""Real servers for integration tests: InfluxDB 1.x (``influxd``), VictoriaMetrics, Mosquitto and a NATS cluster.

Each runs as a child process on free loopback ports, with its data in a folder of its own, and is stopped with
SIGTERM. ``start()`` and ``stop()`` block (they are meant for fixtures, or ``asyncio.to_thread`` in a test);
the read-back helpers are coroutines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

import aiohttp

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# The accounts of the ``mosquitto_auth`` fixture (user -> password).
MOSQUITTO_USERS = {"gw-test": "pw-SECRET-9d1e"}


class ServerBinaryMissingError(RuntimeError):
    """The server's program is not installed: the tests that need it must fail, not be skipped."""


def free_port() -> int:
    """A TCP port that nothing listens on right now (the server may still lose a race for it: start() retries)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports. The probes stay bound until all are chosen: one at a time, the
    kernel handed out the same port twice in 17 of 200 trials of 50 (bench/fleet.py's simulators then failed)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on the loopback ``port``."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(port: int, within: float = 10.0) -> None:
    """Block until something listens on the loopback ``port``; TimeoutError after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not listening(port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on port {port} after {within:g} s")
        time.sleep(0.05)


def _which(name: str) -> str | None:
    # Debian puts some servers (nats-server) in /usr/sbin, which is not on a normal user's PATH.
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"]))


def missing_binary(name: str, debian_package: str) -> str | None:
    """Why the server cannot run here, or None if its program is installed."""
    if _which(name) is not None:
        return None
    return (
        f"{name!r} is not on PATH: install the Debian package {debian_package!r} "
        f"(apt-get install {debian_package}); these integration tests need the real server"
    )


def find_binary(name: str, debian_package: str) -> str:
    if problem := missing_binary(name, debian_package):
        raise ServerBinaryMissingError(problem)
    path = _which(name)
    assert path is not None
    return path


class _ServerProcess:
    """A server child process: started, awaited until its health URL answers, stopped with SIGTERM."""

    name = "server"
    debian_package = ""
    health_path = "/health"
    health_status = 200

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path = root / f"{self.name}.log"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (benchmarks pin it to a core)."""
        return self._process.pid if self.running and self._process is not None else None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Called before each start attempt, once the ports are chosen (to write a config file, say)."""

    def _ready(self) -> bool:
        return self._health_status() == self.health_status

    def _choose_ports(self) -> None:
        self.port = free_port()

    def start(self) -> None:
        """Start on the ports chosen at the first start (so a restart keeps the URL), or on new free ones."""
        attempts = 1 if self.port else 3
        for attempt in range(attempts):
            if not self.port or attempt:
                self._choose_ports()
            if self._try_start():
                return
        raise RuntimeError(f"{self.name} did not start; last lines of {self.log_path}:\n{self._log_tail()}")

    def _try_start(self) -> bool:
        self._prepare()
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                self._command(), stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:  # exited: most likely a port taken in the meantime
                return False
            if self._ready():
                return True
            time.sleep(0.05)
        self.stop()
        return False

    def _health_status(self) -> int | None:
        try:
            with urllib.request.urlopen(self.url + self.health_path, timeout=1) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a server frozen by a test (SIGSTOP) could not handle SIGTERM
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL: the server dies as in a power cut, without closing anything cleanly."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def send_signal(self, signum: int) -> None:
        """SIGSTOP freezes the server with its connections open (a hung server); SIGCONT resumes it."""
        assert self._process is not None, f"{self.name} is not running"
        self._process.send_signal(signum)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class InfluxDBv1Server(_ServerProcess):
    """InfluxDB 1.x (Debian's 1.6.7: ``/write`` only), optionally with authentication enabled."""

    name = "influxd"
    debian_package = "influxdb"
    health_path = "/ping"
    health_status = 204

    def __init__(self, root: Path, *, auth_enabled: bool = False) -> None:
        self.binary = find_binary(self.name, self.debian_package)
        super().__init__(root)
        self.auth_enabled = auth_enabled
        self.rpc_port = 0
        self.config_path = root / "influxdb.conf"

    @classmethod
    def running_at(cls, root: Path, port: int) -> Self:
        """A handle on a server that another process started and stops: for its queries (bench.fleet's steps)."""
        server = cls(root)
        server.port = port
        return server

    def _choose_ports(self) -> None:
        self.port = free_port()
        self.rpc_port = free_port()

    def _command(self) -> list[str]:
        data = self.root / "data"
        # influxd also binds the backup/restore RPC port (top-level bind-address): it must be free too.
        self.config_path.write_text(
            f"""\
reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"

[meta]
  dir = "{data / "meta"}"

[data]
  dir = "{data / "data"}"
  wal-dir = "{data / "wal"}"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = {"true" if self.auth_enabled else "false"}
  log-enabled = false

[logging]
  level = "warn"
  suppress-logo = true
"""
        )
        return [self.binary, "-config", str(self.config_path)]

    async def query(
        self, statement: str, *, database: str | None = None, authorization: str | None = None
    ) -> dict[str, Any]:
        """Run one InfluxQL statement (POST /query, timestamps as ns integers); raise if it failed."""
        params = {"epoch": "ns"}
        if database is not None:
            params["db"] = database
        async with (
            aiohttp.ClientSession(headers={"Authorization": authorization} if authorization else None) as session,
            session.post(f"{self.url}/query", params=params, data={"q": statement}) as response,
        ):
            document: dict[str, Any] = await response.json(content_type=None)
        if response.status != 200:
            raise AssertionError(f"{statement!r} failed with {response.status}: {document}")
        result: dict[str, Any] = document["results"][0]
        if "error" in result:
            raise AssertionError(f"{statement!r} failed: {result['error']}")
        return result

    async def select(self, statement: str, *, database: str, authorization: str | None = None) -> list[dict[str, Any]]:
        """The rows of a SELECT as dicts ``{column: value}`` (with ``time`` in ns), in the server's order."""
        result = await self.query(statement, database=database, authorization=authorization)
        rows: list[dict[str, Any]] = []
        for series in result.get("series", []):
            tags = series.get("tags", {})
            rows.extend(
                {**tags, **dict(zip(series["columns"], values, strict=True))} for values in series.get("values", [])
            )
        return rows

    async def databases(self) -> set[str]:
        result = await self.query("SHOW DATABASES")
        return {values[0] for series in result.get("series", []) for values in series.get("values", [])}


class VictoriaMetricsServer(_ServerProcess):
    """Single-node VictoriaMetrics: accepts ``/api/v2/write``; read back with ``/api/v1/export``."""

    name = "victoria-metrics"
    debian_package = "victoria-metrics"

    def __init__(self, root: Path) -> None:
        self.binary = find_binary(self.name, self.debian_package)
        super().__init__(root)

    def _command(self) -> list[str]:
        return [
            self.binary,
            f"-storageDataPath={self.root / 'data'}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            # InfluxDB-like last-write-wins for replays of the same point (VM keeps duplicates otherwise).
            "-dedup.minScrapeInterval=1ms",
            "-loggerLevel=ERROR",
        ]

    async def export(self, match: str, *, min_samples: int = 1, within: float = 15.0) -> list[dict[str, Any]]:
        """The series matching ``match`` (a series selector) once at least ``min_samples`` samples are visible.

        Each series is ``{"metric": {labels}, "values": [...], "timestamps": [ms, ...]}``. Samples become
        visible a little after ``/internal/force_flush``, so this polls for up to ``within`` seconds.
        """
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as session:
            while True:
                async with session.get(f"{self.url}/internal/force_flush") as response:
                    response.raise_for_status()
                async with session.get(f"{self.url}/api/v1/export", params={"match[]": match}) as response:
                    response.raise_for_status()
                    text = await response.text()
                series = [json.loads(line) for line in text.splitlines() if line.strip()]
                if sum(len(item["values"]) for item in series) >= min_samples:
                    return series
                if time.monotonic() > deadline:
                    raise AssertionError(f"fewer than {min_samples} samples for {match} after {within} s: {series}")
                await asyncio.sleep(0.2)


class MosquittoServer(_ServerProcess):
    """Mosquitto 2.0 on a free loopback port, configured by a file of its own; ready once the port accepts.

    ``users`` (name -> password) creates a password file and refuses anonymous clients. ``tls`` (a
    :class:`TlsFiles`) makes the listener TLS-only. ``persistence`` keeps retained messages and persistent
    sessions across a restart (written on a clean stop). A restart keeps the port.
    """

    name = "mosquitto"
    debian_package = "mosquitto"

    def __init__(
        self,
        root: Path,
        *,
        users: dict[str, str] | None = None,
        tls: TlsFiles | None = None,
        persistence: bool = False,
    ) -> None:
        super().__init__(root)
        self.binary = find_binary(self.name, self.debian_package)
        self.users = users
        self.tls = tls
        self.persistence = persistence
        self.config_path = root / "mosquitto.conf"

    def _command(self) -> list[str]:
        return [self.binary, "-c", str(self.config_path)]

    def _ready(self) -> bool:
        return listening(self.port)

    def _prepare(self) -> None:
        lines = [
            # Started as root (CI containers), mosquitto would switch to the "mosquitto" user, which cannot read
            # the key and password files nor write the persistence file in our temp folders: stay who we are.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if self.users else 'true'}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.root}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            # Keep every queued message of a persistent test subscriber (the default keeps 1000, then drops).
            "max_queued_messages 0",
        ]
        if self.users:
            password_file = self.root / "passwords"
            password_file.unlink(missing_ok=True)
            passwd = find_binary("mosquitto_passwd", self.debian_package)
            for index, (user, password) in enumerate(self.users.items()):
                create = ["-c"] if index == 0 else []
                subprocess.run([passwd, *create, "-b", str(password_file), user, password], check=True)
            lines.append(f"password_file {password_file}")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_cert}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")


class TlsFiles:
    """A throw-away CA and a server certificate for the name ``localhost`` only, made with the openssl command.

    Connecting to 127.0.0.1 therefore fails the host name check (what TLS ``insecure`` skips).
    """

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.ca_cert = root / "ca.pem"
        self.ca_key = root / "ca.key"
        self.server_cert = root / "server.pem"
        self.server_key = root / "server.key"
        openssl = find_binary("openssl", "openssl")

        def run(*args: str) -> None:
            subprocess.run([openssl, *args], check=True, capture_output=True)

        run(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=edge-daq test CA",
            "-keyout",
            str(self.ca_key),
            "-out",
            str(self.ca_cert),
        )
        request = root / "server.csr"
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(self.server_key),
            "-out",
            str(request),
        )
        extensions = root / "server.ext"
        extensions.write_text("subjectAltName = DNS:localhost\n")
        run(
            "x509",
            "-req",
            "-in",
            str(request),
            "-CA",
            str(self.ca_cert),
            "-CAkey",
            str(self.ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(extensions),
            "-out",
            str(self.server_cert),
        )


class NatsNode(_ServerProcess):
    """One node of a :class:`NatsCluster`: NATS clients on ``client_port``, MQTT on ``mqtt_port``, monitoring
    (``/healthz``, ``/connz``) on ``port``. Its ports and JetStream store are kept across restarts."""

    name = "nats-server"
    debian_package = "nats-server"
    health_path = "/healthz"

    def __init__(self, root: Path, server_name: str, cluster: NatsCluster) -> None:
        self.binary = find_binary(self.name, self.debian_package)
        super().__init__(root)
        self.server_name = server_name
        self.cluster = cluster
        self.client_port = self.cluster_port = self.mqtt_port = 0
        self.config_path = root / "nats.conf"

    def _choose_ports(self) -> None:
        raise AssertionError("the cluster chooses its nodes' ports: routes must know them all before any start")

    @property
    def mqtt_address(self) -> str:
        return f"127.0.0.1:{self.mqtt_port}"

    def _command(self) -> list[str]:
        routes = ", ".join(
            f'"nats-route://127.0.0.1:{node.cluster_port}"' for node in self.cluster.nodes if node is not self
        )
        # MQTT needs JetStream (its sessions, retained messages and QoS 1 state live in streams) and a
        # server_name; routes make the three nodes one cluster with one JetStream meta group.
        self.config_path.write_text(
            f"""\
server_name: {self.server_name}
listen: "127.0.0.1:{self.client_port}"
http: "127.0.0.1:{self.port}"
jetstream {{
  store_dir: "{self.root / "jetstream"}"
  max_memory_store: 64MB
  max_file_store: 1GB
}}
cluster {{
  name: "{self.cluster.name}"
  listen: "127.0.0.1:{self.cluster_port}"
  routes: [{routes}]
}}
mqtt {{
  listen: "127.0.0.1:{self.mqtt_port}"
  # The MQTT streams (sessions, retained messages) on all three nodes: the default counts the nodes known
  # when the first client connects, which may be 2 (and an R2 stream stalls when either of its nodes dies).
  stream_replicas: 3
}}
"""
        )
        return [self.binary, "-c", str(self.config_path)]

    def _ready(self) -> bool:
        # The node's own listeners. /healthz also wants a JetStream meta leader, which needs a quorum of the
        # cluster: the first node cannot have one alone (NatsCluster.wait_healthy waits for it).
        return listening(self.mqtt_port) and listening(self.client_port)

    def healthy(self) -> bool:
        """Whether the node is current with the cluster's JetStream (meta leader, its streams caught up)."""
        return self.running and self._health_status() == 200

    def mqtt_clients(self) -> list[str]:
        """The client ids of the MQTT connections to this node (from its /connz)."""
        try:
            with urllib.request.urlopen(f"{self.url}/connz?limit=1024", timeout=1) as response:
                document = json.load(response)
        except OSError:
            return []
        return [str(conn["mqtt_client"]) for conn in document.get("connections") or () if conn.get("mqtt_client")]


class NatsCluster:
    """Three ``nats-server`` nodes on free loopback ports, routed into one cluster, each with JetStream (a store
    folder of its own) and an MQTT listener. ``start()``/``stop()`` the whole; ``nodes[i].kill()`` and
    ``nodes[i].start()`` one node (it keeps its ports and store); :meth:`wait_healthy` until all that run are
    current. A JetStream stream of R replicas needs a quorum (2 of 3 for R3) to accept messages.
    """

    def __init__(self, root: Path, size: int = 3, name: str = "edge-daq-test") -> None:
        self.name = name
        self.nodes = [NatsNode(root / f"n{index + 1}", f"n{index + 1}", self) for index in range(size)]

    @property
    def client_urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{node.client_port}" for node in self.nodes]

    @property
    def mqtt_addresses(self) -> list[str]:
        return [node.mqtt_address for node in self.nodes]

    def start(self) -> None:
        for attempt in range(3):
            ports = free_ports(4 * len(self.nodes))
            for index, node in enumerate(self.nodes):
                node.port, node.client_port, node.cluster_port, node.mqtt_port = ports[4 * index : 4 * index + 4]
            try:
                for node in self.nodes:
                    node.start()
                self.wait_healthy()
                return
            except (RuntimeError, TimeoutError):  # most likely a port taken in the meantime
                self.stop()
                if attempt == 2:
                    raise

    def wait_healthy(self, within: float = STARTUP_TIMEOUT) -> None:
        """Block until every running node reports healthy (a meta leader, its streams current)."""
        deadline = time.monotonic() + within
        while not all(node.healthy() for node in self.nodes if node.running):
            if time.monotonic() > deadline:
                tails = "\n".join(f"{node.server_name}:\n{node._log_tail()}" for node in self.nodes)
                raise TimeoutError(f"the NATS cluster is not healthy after {within:g} s:\n{tails}")
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
