"""The pipeline of one gateway: bus schedulers -> ring queue -> output runners, under one task group.

Start-up builds everything from a loaded configuration; shut-down stops acquisition first, then gives the
outputs a bounded time to deliver what is still buffered. Every long-running task runs under the
:class:`~edge_daq.service.supervisor.Supervisor`: one link, output, the spool or the reliability engine failing
is restarted on its own with backoff, and never ends the task group.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import hashlib
import json
import sys
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import structlog

from edge_daq import drivers
from edge_daq.buffer.ring import BatchSource, RingBuffer, RingReader
from edge_daq.buffer.spool import SpoolReader, SpoolSettings, open_spool
from edge_daq.config.loader import LoadedConfig, one_collection
from edge_daq.config.models import BufferConfig, GatewayConfig, RigConfig, base_tags
from edge_daq.delivery import OutputRunner
from edge_daq.drivers.base import InstrumentConfig
from edge_daq.processing.source import ReducedSource, reduce_source
from edge_daq.record import FieldValue, Record, Series
from edge_daq.reliability.config import DUT_TAG_KEYS
from edge_daq.reliability.engine import ReliabilityEngine, read_states
from edge_daq.reliability.state import RigState
from edge_daq.scheduling import LinkScheduler, RecordBuilder, ScheduledInstrument
from edge_daq.service.supervisor import Supervisor
from edge_daq.sinks import registry as outputs_registry
from edge_daq.sinks.base import Output, OutputConfig
from edge_daq.sinks.event_routing import RoutedEventPublisher
from edge_daq.sinks.routing import describe as describe_route
from edge_daq.stats import InstrumentStats, OutputStats, PipelineStats, SpoolStats
from edge_daq.writes.actions import ActionRunner
from edge_daq.writes.wiring import WriteEvents, has_writable_points
from edge_daq.writes.wiring import build_service as build_write_service
from edge_daq.writes.wiring import serve_control as serve_writes

if TYPE_CHECKING:
    from edge_daq.sinks.mqtt import MqttOutput

log = structlog.get_logger("edge_daq.daemon")

SUMMARY_INTERVAL = 60.0
EVENT_MEASUREMENT = "edge_daq_event"
DEFAULT_DRAIN_TIMEOUT = 10.0
LINK_STOP_MARGIN = 1.0  # seconds beyond the schedulers' own stop grace (closing the links) before they are cancelled


LinkId = tuple[str, str]
"""(driver, link key): instruments with the same id share one link and one bus scheduler."""


@dataclass(frozen=True, slots=True)
class LinkPlan:
    """The instruments of one link as configured; a reload restarts the link only if its fingerprint changed."""

    members: tuple[tuple[RigConfig, InstrumentConfig], ...]
    fingerprint: str


def plan_links(config: LoadedConfig) -> dict[LinkId, LinkPlan]:
    grouped: dict[LinkId, list[tuple[RigConfig, InstrumentConfig]]] = defaultdict(list)
    for rig in config.rigs:
        for instrument in rig.instruments:
            grouped[(instrument.driver, drivers.plugin(instrument.driver).link_key(instrument))].append(
                (rig, instrument)
            )
    plans = {}
    for link_id, members in grouped.items():
        # Everything that shapes the link's records: each instrument's config and the tags it inherits.
        canonical = json.dumps(
            [[base_tags(config.gateway, rig), instrument.model_dump(mode="json")] for rig, instrument in members],
            sort_keys=True,
        )
        plans[link_id] = LinkPlan(tuple(members), hashlib.sha256(canonical.encode()).hexdigest())
    return plans


def build_scheduler(
    link_id: LinkId,
    plan: LinkPlan,
    gateway: GatewayConfig,
    ring: RingBuffer,
    stats_for: Callable[[str, str, str], InstrumentStats],
) -> LinkScheduler:
    driver_name, link_key = link_id
    plugin = drivers.plugin(driver_name)
    link = plugin.open_link([instrument for _, instrument in plan.members])
    scheduled = [
        ScheduledInstrument(
            instrument=plugin.make_instrument(instrument),
            builder=RecordBuilder(instrument, base_tags(gateway, rig)),
            stats=stats_for(rig.rig, instrument.name, link_key),
        )
        for rig, instrument in plan.members
    ]
    # A phase derived from the link's identity: stable across reloads, and spread evenly over many links.
    phase = zlib.crc32(f"{driver_name} {link_key}".encode()) / 2**32
    return LinkScheduler(link=link, instruments=scheduled, emit=ring.append, phase=phase)


def spool_settings(buffer: BufferConfig) -> SpoolSettings | None:
    """The spool's plain settings from the gateway file's ``buffer:`` keys, or None for a memory-only gateway."""
    if buffer.spool_dir is None:
        return None
    return SpoolSettings(
        directory=buffer.spool_dir,
        max_bytes=buffer.spool_max_bytes,
        max_age=buffer.spool_max_age,
        min_free=buffer.spool_min_free,
        fsync_interval=buffer.fsync_interval,
        segment_bytes=buffer.spool_segment_bytes,
    )


def output_configs(gateway: GatewayConfig) -> dict[str, OutputConfig]:
    """The configured outputs by instance name; with none, the file output with its defaults (the embedded default)."""
    return dict(gateway.outputs.items()) or {"file": outputs_registry.config_model("file")()}


def build_output(name: str, config: OutputConfig, gateway: GatewayConfig) -> Output:
    """Output instance ``name``, constructed by the registry entry of its config's type."""
    return outputs_registry.build(name, config, outputs_registry.OutputContext(gateway=gateway.gateway))


@dataclass(frozen=True, slots=True)
class DrainReport:
    undelivered: dict[str, int]

    @property
    def complete(self) -> bool:
        return not any(self.undelivered.values())


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What a reload changed; instruments and outputs it did not list kept running untouched."""

    config_hash: str
    links_started: int
    links_stopped: int
    links_kept: int
    outputs_restarted: list[str]
    needs_restart: list[str]  # settings that only take effect when the daemon restarts


class Daemon:
    def __init__(
        self,
        config: LoadedConfig,
        *,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        supervisor: Supervisor | None = None,
    ) -> None:
        # The build allocates ~100k long-lived objects (compiled reads, schedulers) next to the loaded config:
        # automatic passes of the cyclic collector would walk all of it to find nothing; run() freezes the
        # lot once the pipeline is built (bench/NOTES.md, start-up: 0.1 s of READY on 1000 instruments).
        with one_collection(collect=False):
            self._build(config, drain_timeout, supervisor)

    def _build(self, config: LoadedConfig, drain_timeout: float, supervisor: Supervisor | None) -> None:
        self.config = config
        self.drain_timeout = drain_timeout
        self.supervisor = supervisor or Supervisor()
        self.stats = PipelineStats()
        self._instrument_index: dict[tuple[str, str], InstrumentStats] = {}
        self.ring = RingBuffer(config.gateway.buffer.memory_records, config.gateway.buffer.memory_bytes)
        # With a spool, its writer is the ring's only reader and the outputs read from disk.
        self.spool = open_spool(spool_settings(config.gateway.buffer), self.ring, SpoolStats())
        self.stats.spool = self.spool.stats if self.spool is not None else None
        self._links: dict[LinkId, tuple[LinkPlan, LinkScheduler]] = {}
        for link_id, plan in plan_links(config).items():
            self._links[link_id] = (plan, self._build_scheduler(link_id, plan, config.gateway))
        self._link_tasks: dict[LinkId, asyncio.Task[None]] = {}
        self._output_configs = output_configs(config.gateway)
        self.runners: list[OutputRunner] = [
            self._build_runner(name, output_config) for name, output_config in self._output_configs.items()
        ]
        self._runner_tasks: dict[str, asyncio.Task[None]] = {}
        # Reliability semantics (DUTs, stress time, failures) follow the live records like an output does.
        self._events_not_published = 0
        self.write_events = WriteEvents(
            gateway=lambda: self.config.gateway,
            rigs=lambda: self.config.rigs,
            engine=lambda: self.reliability,
            ring=self.ring,
        )
        self.writes = build_write_service(schedulers=lambda: self.schedulers, events=self.write_events)
        self.actions = ActionRunner(rigs=lambda: self.config.rigs, service=self.writes, pause=self._pause_test)
        self.reliability = self._build_reliability()
        self._reliability_stop = asyncio.Event()
        self._reliability_task: asyncio.Task[None] | None = None
        self._group: asyncio.TaskGroup | None = None
        self._acquisition: asyncio.TaskGroup | None = None
        self.running = asyncio.Event()

    @property
    def schedulers(self) -> list[LinkScheduler]:
        return [scheduler for _, scheduler in self._links.values()]

    def _instrument_stats(self, rig: str, instrument: str, link: str) -> InstrumentStats:
        """The counters of an instrument, kept across reloads so that /metrics counters never go backwards."""
        # An index, not a scan of the list: a 1000-instrument gateway spent 0.16 s of its start in the scan
        # (py-spy on bench.fleet). Rebuilt when the list was changed elsewhere (a reload prunes it).
        index = self._instrument_index
        if len(index) != len(self.stats.instruments):
            index.clear()
            index.update(((s.rig, s.instrument), s) for s in self.stats.instruments)
        stats = index.get((rig, instrument))
        if stats is not None:
            stats.link = link
            return stats
        stats = InstrumentStats(rig=rig, instrument=instrument, link=link)
        self.stats.instruments.append(stats)
        index[(rig, instrument)] = stats
        return stats

    def _build_scheduler(self, link_id: LinkId, plan: LinkPlan, gateway: GatewayConfig) -> LinkScheduler:
        scheduler = build_scheduler(link_id, plan, gateway, self.ring, self._instrument_stats)
        # The link's wire counters, labelled like its instruments' and kept across reloads (as theirs are).
        link, link_key = scheduler.link, link_id[1]
        kept = next((stats for stats in self.stats.links if stats.link == link_key), None)
        if kept is None:
            link.stats.link = link_key
            self.stats.links.append(link.stats)
        else:
            link.stats = kept
        return scheduler

    def _build_runner(self, name: str, output_config: OutputConfig, source: BatchSource | None = None) -> OutputRunner:
        output_stats = next((stats for stats in self.stats.outputs if stats.output == name), None)
        if output_stats is None:
            output_stats = OutputStats(output=name)
            self.stats.outputs.append(output_stats)
        previous = source if isinstance(source, ReducedSource) else None
        if previous is not None:
            source = previous.inner  # a reload: the reduction starts over on the same reader
        if source is None:
            source = self.spool.reader(name, output_stats) if self.spool else self.ring.reader(name)
        if isinstance(source, RingReader | SpoolReader):
            # The reader skips what the output does not take: it never counts in the output's backlog.
            source.set_route(output_config.route())
        source = reduce_source(
            source, output_config, output_stats, self.spool.directory if self.spool else None, previous
        )
        output = build_output(name, output_config, self.config.gateway)
        return OutputRunner(output, source, output_config, output_stats)

    def events_not_published(self) -> int:
        """Reliability events the MQTT output could not take, over the daemon's life (for /metrics)."""
        return self._events_not_published + self.reliability.events_not_published

    async def _replace_reliability(self) -> None:
        """A new engine (after a reload or a failure), from the state the previous one saved on disk."""
        # The files are read in a worker thread: the event loop goes on acquiring meanwhile.
        saved = await asyncio.to_thread(read_states, self.config.gateway.state_path, self.config.rigs)
        self._events_not_published += self.reliability.events_not_published  # a counter never goes back
        self.reliability = self._build_reliability(saved)

    def _build_reliability(self, saved: dict[str, RigState | None] | None = None) -> ReliabilityEngine:
        """An engine with what it uses: the rigs, a ring reader of its own, the ring to emit into, the state
        folder, and every MQTT output that takes events, to publish each event at once where its routing takes it."""
        # The MQTT output's module (aiomqtt, paho: 60-80 ms of start-up) is imported by the output registry
        # only when a gateway configures it: without it there is no MQTT output to publish to.
        mqtt = sys.modules.get("edge_daq.sinks.mqtt")
        targets = [
            (cast("MqttOutput", runner.output), runner.config.route())
            for runner in self.runners
            if mqtt is not None and isinstance(runner.output, mqtt.MqttOutput) and "events" in runner.config.records
        ]
        publisher = (
            RoutedEventPublisher(
                targets=targets,
                rig_tags={rig.rig: base_tags(self.config.gateway, rig) for rig in self.config.rigs},
                identity_keys=frozenset(("dut", *DUT_TAG_KEYS)),
            )
            if targets
            else None
        )
        self._reliability_reader = self.ring.reader("reliability")
        engine = ReliabilityEngine(
            rigs=self.config.rigs,
            gateway=self.config.gateway,
            config_hash=self.config.hash,
            reader=self._reliability_reader,
            emit=self.ring.append,
            state_dir=self.config.gateway.state_path,
            publisher=publisher,
            saved=saved,
        )
        engine.write_handler = self.writes.handle  # `edge-daq write` arrives on the engine's control socket
        for rig_engine in engine.rigs.values():
            rig_engine.observer = self.actions.on_event  # on_start, on_stop, on_failure
        return engine

    def _start_runner(self, runner: OutputRunner) -> None:
        assert self._group is not None
        name = f"output {runner.output.name}"
        self._runner_tasks[runner.output.name] = self._group.create_task(
            self.supervisor.supervise(name, lambda: _run_output(runner), kind="output"), name=name
        )

    def _start_link(self, link_id: LinkId) -> None:
        assert self._acquisition is not None
        scheduler = self._links[link_id][1]
        name = f"link {scheduler.link.describe}"
        self._link_tasks[link_id] = self._acquisition.create_task(
            self.supervisor.supervise(name, scheduler.run, kind="link"), name=name
        )

    async def run(self, stop: asyncio.Event) -> DrainReport:
        """Acquire and deliver until ``stop`` is set; then stop polling and drain the outputs."""
        log.info(
            "daemon_started",
            gateway=self.config.gateway.gateway,
            rigs=len(self.config.rigs),
            instruments=len(self.stats.instruments),
            outputs=[runner.output.name for runner in self.runners],
            config_hash=self.config.hash[:12],
        )
        async with asyncio.TaskGroup() as group:
            self._group = group
            supervise = self.supervisor.supervise
            spool = (
                group.create_task(supervise("spool", self.spool.run, kind="spool"), name="spool")
                if self.spool
                else None
            )
            for runner in self.runners:
                self._start_runner(runner)
            acquisition = group.create_task(self._acquire(), name="acquisition")
            self._start_reliability()
            if not self.reliability.rigs and has_writable_points(self.config.rigs):
                # No engine serves the control socket: the write command still needs it.
                socket_path = self.config.gateway.control_socket_path
                group.create_task(
                    supervise("writes", lambda: serve_writes(socket_path, self.writes, stop), kind="writes"),
                    name="writes control",
                )
            actions = group.create_task(supervise("actions", self._run_actions, kind="actions"), name="actions")
            summary = group.create_task(supervise("summaries", self._log_summaries, kind="summaries"), name="summaries")
            # Configs, models and drivers live as long as the daemon: keep them out of the cyclic collector's
            # full passes, which otherwise walk them all and stall every poller for tens of milliseconds
            # (bench/fleet.py: p99 schedule lateness). Records are freed by reference counting alone.
            gc.collect()
            gc.freeze()
            self.running.set()
            await stop.wait()

            self.running.clear()
            summary.cancel()
            actions.cancel()
            await self._stop_acquisition(acquisition)
            # The reliability engine writes its last events and state before the outputs drain too.
            await self._stop_reliability()
            if self.spool is not None:
                await self.spool.flush(within=self.drain_timeout)  # what is still in the ring, onto disk
            for runner in self.runners:
                runner.begin_drain()
            _, still_running = await asyncio.wait(self._runner_tasks.values(), timeout=self.drain_timeout)
            for task in still_running:
                task.cancel()
            if spool is not None:
                spool.cancel()
        self._group = None
        if self.spool is not None:
            await self.spool.close()  # persist the cursors, seal the current segment
        report = DrainReport({runner.output.name: runner.source.pending for runner in self.runners})
        log.info("daemon_stopped", undelivered=report.undelivered)
        return report

    async def _run_actions(self) -> None:
        """The rig file's actions; interlocks read the records with a reader of their own."""
        reader = self.ring.reader("interlocks") if any(rig.interlocks for rig in self.config.rigs) else None
        try:
            await self.actions.run(reader)
        finally:
            if reader is not None:
                self.ring.remove_reader(reader)

    def _pause_test(self, rig: str, reason: str) -> None:
        engine = self.reliability.rigs.get(rig)
        if engine is None:
            log.warning("interlock_no_test", rig=rig, reason=reason)
            return
        reply = engine.command({"command": "test", "action": "pause", "reason": reason})
        if not reply.get("ok"):
            log.warning("interlock_pause_refused", rig=rig, reason=reason, error=reply.get("error"))

    def writes_status(self) -> dict[str, object]:
        """For /status: the write service's counters and the actions (never a token)."""
        return {**self.writes.status(), "actions": self.actions.status()}

    async def _stop_acquisition(self, acquisition: asyncio.Task[None]) -> None:
        """Stop every link gracefully (a poll under way appends its record before the drain), then acquisition."""
        await self._stop_links(list(self._link_tasks))
        acquisition.cancel()
        await asyncio.wait([acquisition])

    async def _stop_links(self, link_ids: list[LinkId]) -> None:
        """Stop these links together: no new poll, and a poll under way gets its reply and emits its record.

        Each scheduler bounds its own stop (its ``stop_grace``); cancelling is the backstop past that.
        """
        schedulers = [self._links[link_id][1] for link_id in link_ids]
        tasks = [self._link_tasks.pop(link_id) for link_id in link_ids]
        for scheduler in schedulers:
            scheduler.request_stop()
        if tasks:
            await asyncio.wait(tasks, timeout=max(s.stop_grace for s in schedulers) + LINK_STOP_MARGIN)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)

    def _start_reliability(self) -> None:
        assert self._group is not None
        self._reliability_stop = asyncio.Event()
        stop, first = self._reliability_stop, True

        async def run() -> None:
            nonlocal first
            if not first:  # restarted after a failure: a fresh engine, from the state it saved on disk
                await self._replace_reliability()
            first = False
            engine, reader = self.reliability, self._reliability_reader
            try:
                await engine.run(stop)
            finally:
                self.ring.remove_reader(reader)  # however the run ended: a stale reader would hold the ring

        self._reliability_task = self._group.create_task(
            self.supervisor.supervise("reliability", run, kind="reliability"), name="reliability"
        )

    async def _stop_reliability(self) -> None:
        if self._reliability_task is not None:
            self._reliability_stop.set()
            await asyncio.wait([self._reliability_task])
            self._reliability_task = None

    async def _acquire(self) -> None:
        async with asyncio.TaskGroup() as acquisition:
            self._acquisition = acquisition
            for link_id in self._links:
                self._start_link(link_id)
            try:
                await asyncio.Future()  # links come and go with reloads; this task ends when cancelled
            finally:
                self._acquisition = None

    async def reload(self, config: LoadedConfig) -> ReloadReport:
        """Switch to a new, already validated configuration without losing a record.

        Only the links whose instruments changed are restarted, and only the outputs whose settings changed
        reconnect; they keep their cursor in the buffer. A config-change event records the new hash.
        """
        if not self.running.is_set() or self._acquisition is None:
            raise RuntimeError("the daemon is not running")
        old_gateway, new_gateway = self.config.gateway, config.gateway
        plans = plan_links(config)
        stopped = [
            link_id
            for link_id, (plan, _) in self._links.items()
            if link_id not in plans or plans[link_id].fingerprint != plan.fingerprint
        ]
        await self._stop_links(stopped)  # their polls under way still emit their records
        for link_id in stopped:
            del self._links[link_id]
        self.config = config
        started = [link_id for link_id in plans if link_id not in self._links]
        for link_id in started:
            self._links[link_id] = (plans[link_id], self._build_scheduler(link_id, plans[link_id], new_gateway))
            self._start_link(link_id)
        current = {(rig.rig, instrument.name) for rig in config.rigs for instrument in rig.instruments}
        self.stats.instruments[:] = [s for s in self.stats.instruments if (s.rig, s.instrument) in current]

        restarted = await self._reload_outputs(output_configs(new_gateway))
        # The engine keeps its state on disk: a new one picks it up with the new rigs, DUTs and rules.
        await self._stop_reliability()
        await self._replace_reliability()
        self._start_reliability()
        self.actions.reload()
        needs_restart = [
            key for key in ("buffer", "http", "log") if getattr(old_gateway, key) != getattr(new_gateway, key)
        ]
        report = ReloadReport(
            config_hash=config.hash,
            links_started=len(started),
            links_stopped=len(stopped),
            links_kept=len(self._links) - len(started),
            outputs_restarted=restarted,
            needs_restart=needs_restart,
        )
        self._emit_event(
            "config_change",
            config_hash=config.hash,
            links_started=report.links_started,
            links_stopped=report.links_stopped,
            outputs_restarted=",".join(restarted),
        )
        log.info("config_reloaded", **dataclasses.asdict(report))
        if needs_restart:
            log.warning("config_needs_restart", settings=needs_restart)
        return report

    async def _reload_outputs(self, configs: dict[str, OutputConfig]) -> list[str]:
        """Restart the outputs whose settings changed, on the same cursor; add and remove outputs."""
        restarted = []
        for runner in list(self.runners):
            name = runner.output.name
            if configs.get(name) == self._output_configs.get(name):
                continue
            task = self._runner_tasks.pop(name)
            task.cancel()  # a batch in flight is not committed: the new runner sends it again
            await asyncio.wait([task])
            self.runners.remove(runner)
            if name in configs:
                replacement = self._build_runner(name, configs[name], source=runner.source)
            else:
                self.stats.outputs[:] = [s for s in self.stats.outputs if s.output != name]
                reader = runner.source.inner if isinstance(runner.source, ReducedSource) else runner.source
                if isinstance(reader, RingReader):
                    self.ring.remove_reader(reader)
                restarted.append(name)
                continue
            self.runners.append(replacement)
            self._start_runner(replacement)
            restarted.append(name)
        for name, output_config in configs.items():
            if name not in self._output_configs:
                runner = self._build_runner(name, output_config)
                self.runners.append(runner)
                self._start_runner(runner)
                restarted.append(name)
        self._output_configs = configs
        return restarted

    def _emit_event(self, kind: str, **fields: FieldValue) -> None:
        """A gateway event as a record: it reaches every output like the measurements do."""
        tags = {"gateway": self.config.gateway.gateway}
        if self.config.gateway.site:
            tags["site"] = self.config.gateway.site
        self.ring.append(Record(Series(EVENT_MEASUREMENT, tags), {"kind": kind, **fields}, time.time_ns()))

    def oldest_age(self, output: str) -> float | None:
        """Seconds since the acquisition of the oldest record the output has not delivered; None if none."""
        for runner in self.runners:
            if runner.output.name != output:
                continue
            reader = runner.source.inner if isinstance(runner.source, ReducedSource) else runner.source
            if isinstance(reader, RingReader):
                oldest = reader.oldest_time_ns()
                return None if oldest is None else max(0.0, (time.time_ns() - oldest) / 1e9)
            return runner.stats.oldest_pending_seconds
        return None

    def output_details(self, output: str) -> dict[str, object]:
        """For /status: the output's type, where it delivers now, and what it takes."""
        for runner in self.runners:
            if runner.output.name == output:
                return {
                    "type": outputs_registry.type_of(runner.config),
                    "target": runner.output.target,
                    "routing": describe_route(runner.config.route()),
                }
        return {}

    def backlog(self, output: str) -> int:
        """Records the output has not delivered yet (for /metrics and the status line)."""
        return next((runner.source.pending for runner in self.runners if runner.output.name == output), 0)

    async def _log_summaries(self) -> None:
        last_appended, last_time = self.ring.appended, time.monotonic()
        while True:
            await asyncio.sleep(SUMMARY_INTERVAL)
            now = time.monotonic()
            log.info(
                "pipeline_summary",
                records_per_second=round((self.ring.appended - last_appended) / (now - last_time), 1),
                instruments_up=sum(1 for s in self.stats.instruments if s.up),
                instruments=len(self.stats.instruments),
                ring_records=len(self.ring),
                ring_dropped=self.ring.dropped,
                backlog={runner.output.name: runner.source.pending for runner in self.runners},
            )
            last_appended, last_time = self.ring.appended, now


async def _run_output(runner: OutputRunner) -> None:
    """One run of an output: a run that failed (or a reload) left batches read and not committed: send them again."""
    if isinstance(runner.source, RingReader | SpoolReader | ReducedSource):
        runner.source.rewind()
    await runner.run()
