"""The pipeline of one gateway: bus schedulers -> ring queue -> output runners, under one task group.

Start-up builds everything from a loaded configuration; shut-down stops acquisition first, then gives the
outputs a bounded time to deliver what is still buffered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import hashlib
import json
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from edge_daq import drivers
from edge_daq.buffer.ring import BatchSource, RingBuffer, RingReader
from edge_daq.buffer.spool import open_spool
from edge_daq.config.loader import LoadedConfig
from edge_daq.config.models import GatewayConfig, RigConfig, base_tags
from edge_daq.delivery import OutputRunner
from edge_daq.drivers.base import InstrumentConfig
from edge_daq.record import FieldValue, Record, Series
from edge_daq.reliability.engine import ReliabilityEngine
from edge_daq.scheduling import LinkScheduler, RecordBuilder, ScheduledInstrument
from edge_daq.sinks.base import Output, OutputConfig
from edge_daq.sinks.file import FileOutput, FileOutputConfig
from edge_daq.sinks.influxdb import InfluxDBOutput, InfluxDBOutputConfig
from edge_daq.sinks.mqtt import MqttOutput, MqttOutputConfig
from edge_daq.stats import InstrumentStats, OutputStats, PipelineStats, SpoolStats

log = structlog.get_logger("edge_daq.daemon")

SUMMARY_INTERVAL = 60.0
EVENT_MEASUREMENT = "edge_daq_event"
DEFAULT_DRAIN_TIMEOUT = 10.0


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


def output_configs(gateway: GatewayConfig) -> dict[str, OutputConfig]:
    """The configured outputs by name; with none, the file output with its defaults (the embedded default)."""
    configured = gateway.outputs
    outputs: dict[str, OutputConfig] = {}
    if configured.influxdb is not None:
        outputs["influxdb"] = configured.influxdb
    if configured.mqtt is not None:
        outputs["mqtt"] = configured.mqtt
    if configured.file is not None:
        outputs["file"] = configured.file
    return outputs or {"file": FileOutputConfig()}


def build_output(name: str, config: OutputConfig, gateway: GatewayConfig) -> Output:
    if isinstance(config, InfluxDBOutputConfig):
        return InfluxDBOutput(config)
    if isinstance(config, MqttOutputConfig):
        return MqttOutput(config, gateway=gateway.gateway)
    if isinstance(config, FileOutputConfig):
        return FileOutput(config)
    raise AssertionError(f"no output for {name}")


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
    def __init__(self, config: LoadedConfig, *, drain_timeout: float = DEFAULT_DRAIN_TIMEOUT) -> None:
        self.config = config
        self.drain_timeout = drain_timeout
        self.stats = PipelineStats()
        self.ring = RingBuffer(config.gateway.buffer.memory_records)
        # With a spool, its writer is the ring's only reader and the outputs read from disk.
        self.spool = open_spool(config.gateway.buffer, self.ring, SpoolStats())
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
        self.reliability = ReliabilityEngine(self)
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
        for stats in self.stats.instruments:
            if (stats.rig, stats.instrument) == (rig, instrument):
                stats.link = link
                return stats
        stats = InstrumentStats(rig=rig, instrument=instrument, link=link)
        self.stats.instruments.append(stats)
        return stats

    def _build_scheduler(self, link_id: LinkId, plan: LinkPlan, gateway: GatewayConfig) -> LinkScheduler:
        return build_scheduler(link_id, plan, gateway, self.ring, self._instrument_stats)

    def _build_runner(self, name: str, output_config: OutputConfig, source: BatchSource | None = None) -> OutputRunner:
        output_stats = next((stats for stats in self.stats.outputs if stats.output == name), None)
        if output_stats is None:
            output_stats = OutputStats(output=name)
            self.stats.outputs.append(output_stats)
        if source is None:
            source = self.spool.reader(name, output_stats) if self.spool else self.ring.reader(name)
        output = build_output(name, output_config, self.config.gateway)
        return OutputRunner(output, source, output_config, output_stats)

    def _start_runner(self, runner: OutputRunner) -> None:
        assert self._group is not None
        name = runner.output.name
        self._runner_tasks[name] = self._group.create_task(runner.run(), name=f"output {name}")

    def _start_link(self, link_id: LinkId) -> None:
        assert self._acquisition is not None
        scheduler = self._links[link_id][1]
        self._link_tasks[link_id] = self._acquisition.create_task(
            scheduler.run(), name=f"link {scheduler.link.describe}"
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
            spool = group.create_task(self.spool.run(), name="spool") if self.spool else None
            for runner in self.runners:
                self._start_runner(runner)
            acquisition = group.create_task(self._acquire(), name="acquisition")
            self._start_reliability()
            summary = group.create_task(self._log_summaries(), name="summaries")
            # Configs, models and drivers live as long as the daemon: keep them out of the cyclic collector's
            # full passes, which otherwise walk them all and stall every poller for tens of milliseconds
            # (bench/fleet.py: p99 schedule lateness). Records are freed by reference counting alone.
            gc.collect()
            gc.freeze()
            self.running.set()
            await stop.wait()

            self.running.clear()
            acquisition.cancel()
            summary.cancel()
            # A poll in flight may still append its record: let acquisition end before the outputs drain, and
            # the reliability engine write its last events and state before them too.
            await asyncio.wait([acquisition])
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

    def _start_reliability(self) -> None:
        assert self._group is not None
        self._reliability_stop = asyncio.Event()
        self._reliability_task = self._group.create_task(
            self.reliability.run(self._reliability_stop), name="reliability"
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
        for link_id in stopped:
            task = self._link_tasks.pop(link_id)
            task.cancel()
            await asyncio.wait([task])
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
        self.reliability = ReliabilityEngine(self)
        self._start_reliability()
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
                if isinstance(runner.source, RingReader):
                    self.ring.remove_reader(runner.source)
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
            if isinstance(runner.source, RingReader):
                oldest = runner.source.oldest_time_ns()
                return None if oldest is None else max(0.0, (time.time_ns() - oldest) / 1e9)
            return runner.stats.oldest_pending_seconds
        return None

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
