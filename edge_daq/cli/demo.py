"""``edge-daq demo``: simulated instruments, the daemon and a live table of the latest values.

The demo loads the example gateway file, starts a simulator for every instrument whose profile has one (on
the instrument's own loopback address), and sends the records to line-protocol files in a local folder
instead of the configured outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from edge_daq.buffer.ring import RingReader
from edge_daq.cli.test_cmd import print_config_issues
from edge_daq.config.loader import LoadedConfig, load_config, shipped_profiles_folder
from edge_daq.config.models import OutputsConfig
from edge_daq.daemon import Daemon
from edge_daq.errors import ConfigError
from edge_daq.logs import configure_logging
from edge_daq.record import FieldValue, Record
from edge_daq.scheduling import STATUS_MEASUREMENT
from edge_daq.service import split_listen
from edge_daq.service.lifecycle import http_endpoint
from edge_daq.sinks.file import FileOutputConfig

# Profiles whose instruments the demo can simulate, and the simulator kind for each.
SIMULATED_PROFILES = {"watlow-f4": "watlow-f4", "burnin-board": "burnin-board"}
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TIME_SCALE = 10.0  # the chamber ramps ten times faster than a real one, so the demo shows movement
SHOWN_FIELDS = 8


def run_demo(*, config: Path | None, out: Path, duration: float | None, live: bool) -> int:
    config_path = config or shipped_profiles_folder().parent / "edge-daq.yaml"
    try:
        loaded = load_config(config_path)
    except ConfigError as error:
        return print_config_issues(error)
    # Everything the demo writes stays in its output folder: the line protocol, and the test state of rigs
    # under reliability test (stress time, DUT states, the event journal).
    gateway = loaded.gateway.model_copy(
        update={
            "outputs": OutputsConfig({"file": FileOutputConfig(dir=out.resolve())}),
            "state_dir": out.resolve() / "state",
        }
    )
    loaded = dataclasses.replace(loaded, gateway=gateway)
    console = Console()
    live = live and console.is_terminal
    # Logs go to stderr in colour; the live table owns stdout.
    configure_logging("warning" if live else "info", json=False)
    return asyncio.run(_demo(loaded, out.resolve(), duration, live, console))


async def _demo(config: LoadedConfig, out: Path, duration: float | None, live: bool, console: Console) -> int:
    from simulators import serve  # test-bench tooling: only the demo and `simulate` import it

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    endpoints: dict[tuple[str, int], tuple[str, set[int]]] = {}
    for rig in config.rigs:
        for instrument in rig.instruments:
            kind = SIMULATED_PROFILES.get(instrument.profile or "")
            host, port, unit = (getattr(instrument, key, None) for key in ("host", "port", "unit"))
            if kind and host in LOOPBACK and isinstance(port, int) and isinstance(unit, int):
                endpoints.setdefault((host, port), (kind, set()))[1].add(unit)

    async with contextlib.AsyncExitStack() as stack:
        for (host, port), (kind, units) in endpoints.items():
            try:
                await stack.enter_async_context(
                    serve(kind, host=host, port=port, seed=7, units=sorted(units), time_scale=TIME_SCALE)
                )
            except OSError as error:
                console.print(f"cannot start the simulated {kind} on {host}:{port}: {error.strerror}")
                console.print("is another demo or simulator running? stop it, or edit the ports in the rig file")
                return 1
            console.print(f"simulated {kind} on {host}:{port} (units {', '.join(map(str, sorted(units)))})")
        daemon = Daemon(config)
        view = LatestValues(daemon.ring.reader("demo-view"))
        endpoint, feed = http_endpoint(daemon, listen=config.gateway.http.listen, token=None)
        try:
            await endpoint.__aenter__()
        except OSError:  # a daemon already serves the configured address: any free port will do
            endpoint, feed = http_endpoint(daemon, listen=_any_port(config.gateway.http.listen), token=None)
            await endpoint.__aenter__()
        stack.push_async_callback(endpoint.__aexit__, None, None, None)
        console.print(f"status page: {endpoint.url}/  (read-only)")
        console.print(f"writing line protocol to {out}/  (Ctrl-C stops)")
        async with asyncio.TaskGroup() as group:
            run = group.create_task(daemon.run(stop), name="daemon")
            page = group.create_task(endpoint.serve_forever(), name="demo http")
            page_feed = group.create_task(feed.run(), name="demo status page")
            group.create_task(view.follow(stop), name="demo view")
            group.create_task(_show(view, daemon, stop, live, console), name="demo display")
            if duration is not None:
                group.create_task(_stop_after(duration, stop), name="demo timer")
            await run
            page.cancel()
            page_feed.cancel()
        report = run.result()
    delivered = sum(stats.delivered for stats in daemon.stats.outputs)
    console.print(f"{delivered} records written to {out}/")
    console.print(f"import them with: influx write --bucket BUCKET --precision ns --file {out}/<file>.lp")
    return 0 if report.complete else 1


def _any_port(listen: str) -> str:
    host, _ = split_listen(listen)
    return f"[{host}]:0" if ":" in host else f"{host}:0"


async def _stop_after(seconds: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    stop.set()


class LatestValues:
    """Follows the ring like an output does and keeps the latest record of every instrument."""

    def __init__(self, reader: RingReader) -> None:
        self.reader = reader
        self.latest: dict[tuple[str, str], Record] = {}
        """The instrument's own points (a board's temperature and bias, not a socket's)."""
        self.sockets: dict[tuple[str, str], dict[int, Record]] = {}
        """Per instrument with channels: the latest record of each socket."""
        self.status: dict[tuple[str, str], Record] = {}
        self.records = 0

    async def follow(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.reader.wait(1, max_wait=0.5)
            batch = self.reader.read(10_000)
            for record in batch.records:
                self.file(record)
            self.records += len(batch.records)
            self.reader.commit(batch)

    def file(self, record: Record) -> None:
        if "instrument" not in record.tags:
            return  # rig and gateway events: the reliability table shows their effect
        key = (record.tags["rig"], record.tags["instrument"])
        socket = record.tags.get("socket", "")
        if socket.isdigit():
            self.sockets.setdefault(key, {})[int(socket)] = record
            return
        target = self.status if record.measurement == STATUS_MEASUREMENT else self.latest
        target[key] = record


def _format(value: FieldValue) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _values(record: Record) -> str:
    shown = list(record.fields.items())[:SHOWN_FIELDS]
    values = "  ".join(f"{name}={_format(value)}" for name, value in shown)
    if len(record.fields) > SHOWN_FIELDS:
        values += f"  (+{len(record.fields) - SHOWN_FIELDS} more)"
    return values


def _table(view: LatestValues, daemon: Daemon) -> Group:
    table = Table(title="edge-daq demo: latest values", expand=True)
    for column in ("rig", "instrument", "state", "polls", "age", "values"):
        table.add_column(column, overflow="fold")
    now = time.time_ns()
    for stats in daemon.stats.instruments:
        key = (stats.rig, stats.instrument)
        record = view.latest.get(key)
        state = Text("up", style="green") if stats.up else Text(stats.last_error or "waiting", style="red")
        age = "-" if record is None else f"{(now - record.time_ns) / 1e9:.1f}s"
        values = "" if record is None else _values(record)
        table.add_row(stats.rig, stats.instrument, state, str(stats.polls), age, values)
        sockets = view.sockets.get(key)
        if sockets:
            # One socket stands for the board here (the page shows them all): the first, named, with its DUT.
            socket = min(sockets)
            shown = sockets[socket]
            dut = shown.tags.get("dut")
            name = f"  socket {socket}" + (f" ({dut})" if dut else "")
            table.add_row(
                "", name, Text(f"1 of {len(sockets)}"), "", f"{(now - shown.time_ns) / 1e9:.1f}s", _values(shown)
            )
    outputs = "  ".join(
        f"{stats.output}: {stats.delivered} delivered, {stats.retries} retries" for stats in daemon.stats.outputs
    )
    return Group(table, _reliability_table(daemon), Text(outputs))


def _reliability_table(daemon: Daemon) -> Table:
    """Stress time and DUT states of every rig under test (the rig file's test, stress and failures keys)."""
    table = Table(title="tests: stress time and failures", expand=True)
    for column in ("rig", "test", "stress time", "stress", "DUTs active", "failed", "removed"):
        table.add_column(column)
    for rig in daemon.reliability.rigs.values():
        status = rig.status()
        test = status["test"] or {}
        holding = Text("holding", style="green") if status["holding"] else Text(str(status["reason"]), style="yellow")
        duts = status["duts"]
        table.add_row(
            status["rig"],
            f"{test.get('id', '-')} ({test.get('kind', '-')})" if test else "-",
            f"{status['stress_h']:.3f} h",
            holding,
            str(duts.get("active", 0)),
            Text(str(duts.get("failed", 0)), style="red" if duts.get("failed") else ""),
            str(duts.get("removed", 0)),
        )
    return table


async def _show(view: LatestValues, daemon: Daemon, stop: asyncio.Event, live: bool, console: Console) -> None:
    if live:
        with Live(_table(view, daemon), console=console, refresh_per_second=4) as screen:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
                screen.update(_table(view, daemon))
        return
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 5.0)
        console.print(
            f"{view.records} records; latest: "
            + ", ".join(
                f"{instrument} {_format(next(iter(record.fields.values())))}"
                for (_, instrument), record in view.latest.items()
            )
        )
