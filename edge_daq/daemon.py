"""The pipeline of one gateway: bus schedulers -> ring queue -> output runners, under one task group.

Start-up builds everything from a loaded configuration; shut-down stops acquisition first, then gives the
outputs a bounded time to deliver what is still buffered.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from edge_daq import drivers
from edge_daq.buffer.ring import BatchSource, RingBuffer, RingReader
from edge_daq.buffer.spool import open_spool
from edge_daq.config.loader import LoadedConfig
from edge_daq.config.models import GatewayConfig, RigConfig
from edge_daq.delivery import OutputRunner
from edge_daq.drivers.base import InstrumentConfig
from edge_daq.scheduling import LinkScheduler, RecordBuilder, ScheduledInstrument
from edge_daq.sinks.base import Output, OutputConfig
from edge_daq.sinks.file import FileOutput, FileOutputConfig
from edge_daq.sinks.influxdb import InfluxDBOutput
from edge_daq.sinks.mqtt import MqttOutput
from edge_daq.stats import InstrumentStats, OutputStats, PipelineStats, SpoolStats

log = structlog.get_logger("edge_daq.daemon")

SUMMARY_INTERVAL = 60.0
DEFAULT_DRAIN_TIMEOUT = 10.0


def base_tags(gateway: GatewayConfig, rig: RigConfig) -> dict[str, str]:
    """Tags on every record of a rig; the identifying ones come last so a rig tag cannot overwrite them."""
    tags = dict(rig.tags)
    tags["gateway"] = gateway.gateway
    if gateway.site:
        tags["site"] = gateway.site
    tags["rig"] = rig.rig
    return tags


def build_schedulers(config: LoadedConfig, ring: RingBuffer, stats: PipelineStats) -> list[LinkScheduler]:
    """One scheduler per physical link: instruments whose driver gives the same link key share it."""
    by_link: dict[tuple[str, str], list[tuple[RigConfig, InstrumentConfig]]] = defaultdict(list)
    for rig in config.rigs:
        for instrument in rig.instruments:
            plugin = drivers.plugin(instrument.driver)
            by_link[(instrument.driver, plugin.link_key(instrument))].append((rig, instrument))

    schedulers = []
    for (driver_name, link_key), members in by_link.items():
        plugin = drivers.plugin(driver_name)
        link = plugin.open_link([instrument for _, instrument in members])
        scheduled = []
        for rig, instrument in members:
            instrument_stats = InstrumentStats(rig=rig.rig, instrument=instrument.name, link=link_key)
            stats.instruments.append(instrument_stats)
            scheduled.append(
                ScheduledInstrument(
                    instrument=plugin.make_instrument(instrument),
                    builder=RecordBuilder(instrument, base_tags(config.gateway, rig)),
                    stats=instrument_stats,
                )
            )
        schedulers.append(LinkScheduler(link=link, instruments=scheduled, emit=ring.append))
    return schedulers


def build_outputs(gateway: GatewayConfig) -> list[tuple[Output, OutputConfig]]:
    """The configured outputs; with none, the file output with its defaults (the embedded default)."""
    outputs: list[tuple[Output, OutputConfig]] = []
    configured = gateway.outputs
    if configured.influxdb is not None:
        outputs.append((InfluxDBOutput(configured.influxdb), configured.influxdb))
    if configured.mqtt is not None:
        outputs.append((MqttOutput(configured.mqtt, gateway=gateway.gateway), configured.mqtt))
    if configured.file is not None:
        outputs.append((FileOutput(configured.file), configured.file))
    if not outputs:
        default = FileOutputConfig()
        outputs.append((FileOutput(default), default))
    return outputs


@dataclass(frozen=True, slots=True)
class DrainReport:
    undelivered: dict[str, int]

    @property
    def complete(self) -> bool:
        return not any(self.undelivered.values())


class Daemon:
    def __init__(self, config: LoadedConfig, *, drain_timeout: float = DEFAULT_DRAIN_TIMEOUT) -> None:
        self.config = config
        self.drain_timeout = drain_timeout
        self.stats = PipelineStats()
        self.ring = RingBuffer(config.gateway.buffer.memory_records)
        # With a spool, its writer is the ring's only reader and the outputs read from disk.
        self.spool = open_spool(config.gateway.buffer, self.ring, SpoolStats())
        self.stats.spool = self.spool.stats if self.spool is not None else None
        self.schedulers = build_schedulers(config, self.ring, self.stats)
        self.runners: list[OutputRunner] = []
        for output, output_config in build_outputs(config.gateway):
            output_stats = OutputStats(output=output.name)
            self.stats.outputs.append(output_stats)
            source: BatchSource = (
                self.spool.reader(output.name, output_stats) if self.spool else self.ring.reader(output.name)
            )
            self.runners.append(OutputRunner(output, source, output_config, output_stats))
        self.running = asyncio.Event()

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
            spool = group.create_task(self.spool.run(), name="spool") if self.spool else None
            delivery = [group.create_task(runner.run(), name=f"output {runner.output.name}") for runner in self.runners]
            acquisition = group.create_task(self._acquire(self.schedulers), name="acquisition")
            summary = group.create_task(self._log_summaries(), name="summaries")
            self.running.set()
            await stop.wait()

            acquisition.cancel()
            summary.cancel()
            # A poll in flight may still append its record: let acquisition end before the outputs drain.
            await asyncio.wait([acquisition])
            if self.spool is not None:
                await self.spool.flush(within=self.drain_timeout)  # what is still in the ring, onto disk
            for runner in self.runners:
                runner.begin_drain()
            _, still_running = await asyncio.wait(delivery, timeout=self.drain_timeout)
            for task in still_running:
                task.cancel()
            if spool is not None:
                spool.cancel()
        if self.spool is not None:
            await self.spool.close()  # persist the cursors, seal the current segment
        report = DrainReport({runner.output.name: runner.source.pending for runner in self.runners})
        log.info("daemon_stopped", undelivered=report.undelivered)
        return report

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

    @staticmethod
    async def _acquire(schedulers: Sequence[LinkScheduler]) -> None:
        async with asyncio.TaskGroup() as group:
            for scheduler in schedulers:
                group.create_task(scheduler.run(), name=f"link {scheduler.link.describe}")

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
