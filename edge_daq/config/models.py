"""The typed shape of the gateway file and of rig files (see the configuration contract).

Sample gateway file::

    gateway: gw-lab2-01
    site: lab2
    rigs: rigs.d/                 # a folder, or a list of files and folders, relative to this file
    profiles: [profiles/]
    buffer: {memory_records: 100000, spool_dir: /var/lib/edge-daq/spool, spool_max_bytes: 2GiB}
    outputs:
      influxdb: {url: http://127.0.0.1:8086, org: lab, bucket: reliability, token: ${INFLUX_TOKEN}}
    http: {listen: 127.0.0.1:9108}
    log: {level: info}

Sample rig file::

    rig: htol-07
    tags: {test: HTOL, product: PMIC-A3}
    instruments:
      - {name: chamber, profile: watlow-f4, host: 10.0.4.17}
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, GetCoreSchemaHandler, GetPydanticSchema
from pydantic_core import core_schema

from edge_daq import drivers
from edge_daq.config.units import Duration, Size
from edge_daq.drivers.base import NAME_PATTERN, InstrumentConfig, StrictModel
from edge_daq.reliability.config import DutConfig, FailuresConfig, StressConfig, TestConfig
from edge_daq.sinks.file import FileOutputConfig
from edge_daq.sinks.influxdb import InfluxDBOutputConfig
from edge_daq.sinks.mqtt import MqttOutputConfig

DEFAULT_STATE_DIR = Path("/var/lib/edge-daq/state")


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str | Path) else value


PathList = Annotated[list[Path], BeforeValidator(_one_or_many)]
"""A list of paths; a single path may be written without the brackets."""


def split_host_port(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` as a host and a port number."""
    host, separator, port = listen.rpartition(":")
    if not separator or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected host:port such as 127.0.0.1:9108 or [::1]:9108, got {listen!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _check_listen(listen: str) -> str:
    split_host_port(listen)
    return listen


class BufferConfig(StrictModel):
    """The ring queue, and the durable spool when ``spool_dir`` is set (see the README's "Buffering")."""

    memory_records: int = Field(default=100_000, ge=1)
    spool_dir: Path | None = None
    spool_max_bytes: Size = Field(default=2 << 30, ge=1 << 20)
    # Oldest records are dropped once older than this (None: no age limit).
    spool_max_age: Duration | None = None
    # Free space the spool always leaves on its file system; None: 5 % of it, at most 1 GiB.
    spool_min_free: Size | None = None
    # Records reach the disk (write + fsync) at most this long after acquisition; 0: at once.
    fsync_interval: Duration = Field(default=0.1, le=10.0)
    # Segment file size; None: spool_max_bytes / 16, between 64 KiB and 64 MiB.
    spool_segment_bytes: Size | None = Field(default=None, ge=4096)


class OutputsConfig(StrictModel):
    """Any subset of the outputs; with none, the daemon writes to the file output."""

    influxdb: InfluxDBOutputConfig | None = None
    file: FileOutputConfig | None = None
    mqtt: MqttOutputConfig | None = None


class HttpConfig(StrictModel):
    listen: Annotated[str, AfterValidator(_check_listen)] = "127.0.0.1:9108"

    @property
    def host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.listen)[1]


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


class LogConfig(StrictModel):
    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = "info"


class GatewayConfig(StrictModel):
    gateway: str = Field(pattern=NAME_PATTERN)
    site: str | None = Field(default=None, pattern=NAME_PATTERN)
    # None: the rigs.d folder beside the gateway file, if there is one.
    rigs: PathList | None = None
    profiles: PathList = Field(default_factory=list)
    buffer: BufferConfig = Field(default_factory=BufferConfig)
    outputs: OutputsConfig = Field(default_factory=OutputsConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    # Reliability state (stress time, DUT states, event journal, control socket); None: see state_path.
    state_dir: Path | None = None

    @property
    def state_path(self) -> Path:
        """``state_dir``, or ``state`` beside the spool folder, or /var/lib/edge-daq/state."""
        if self.state_dir is not None:
            return self.state_dir
        if self.buffer.spool_dir is not None:
            return self.buffer.spool_dir.parent / "state"
        return DEFAULT_STATE_DIR


def _instrument_schema(source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
    # A tagged union on `driver:` built from the registry, so a new driver needs no change here and the
    # errors of an instrument are those of its own driver's model.
    choices = {name: handler.generate_schema(drivers.config_model(name)) for name in drivers.driver_names()}
    return core_schema.tagged_union_schema(choices=choices, discriminator="driver")


AnyInstrument = Annotated[InstrumentConfig, GetPydanticSchema(_instrument_schema)]
"""An instrument validated by the config model of its ``driver:``."""


class RigConfig(StrictModel):
    rig: str = Field(pattern=NAME_PATTERN)
    tags: dict[str, str] = Field(default_factory=dict)
    instruments: list[AnyInstrument] = Field(default_factory=list)
    # Reliability testing (edge_daq.reliability.config): all optional, a plain data-logging rig has none.
    test: TestConfig | None = None
    duts: list[DutConfig] = Field(default_factory=list)  # inline ones, then the rows of duts_csv
    duts_csv: Path | None = None  # relative to the rig file
    stress: StressConfig | None = None
    failures: FailuresConfig | None = None

    @property
    def has_reliability(self) -> bool:
        return bool(self.duts or self.stress or self.failures or self.test)


def base_tags(gateway: GatewayConfig, rig: RigConfig) -> dict[str, str]:
    """Tags on every record of a rig; the identifying ones come last so a rig tag cannot overwrite them."""
    tags = dict(rig.tags)
    tags["gateway"] = gateway.gateway
    if gateway.site:
        tags["site"] = gateway.site
    tags["rig"] = rig.rig
    return tags
