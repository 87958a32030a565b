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
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    GetCoreSchemaHandler,
    GetPydanticSchema,
    PlainValidator,
    RootModel,
    SecretStr,
    SerializeAsAny,
    ValidationError,
    model_validator,
)
from pydantic_core import core_schema

from edge_daq import drivers
from edge_daq.config.layout import BoardLayout, channel_sockets, layout_issues
from edge_daq.config.types import NAME_PATTERN, StrictModel
from edge_daq.config.units import Duration, Size
from edge_daq.config.values import ConfigPath, check_host
from edge_daq.drivers.base import InstrumentConfig
from edge_daq.reliability.acceleration import AccelerationModel
from edge_daq.reliability.config import DutConfig, FailuresConfig, StressConfig, TestConfig
from edge_daq.sinks import registry as outputs_registry
from edge_daq.sinks.base import OutputConfig
from edge_daq.writes.action_config import Interlock
from edge_daq.writes.http_config import HttpWritesConfig

DEFAULT_STATE_DIR = Path("/var/lib/edge-daq/state")
CONTROL_SOCKET = "control.sock"
"""The control socket's name in the state folder (``--state-dir`` of the commands that talk to the daemon)."""


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str | Path) else value


PathList = Annotated[list[ConfigPath], BeforeValidator(_one_or_many, json_schema_input_type=str | list[str])]
"""A list of paths; a single path may be written without the brackets."""


def split_host_port(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` as a host and a port number."""
    host, separator, port = listen.rpartition(":")
    if not separator or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected host:port such as 127.0.0.1:9108 or [::1]:9108, got {listen!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _check_listen(listen: str) -> str:
    check_host(split_host_port(listen)[0])  # a NUL or an over-long label would make the bind raise at start
    return listen


class BufferConfig(StrictModel):
    """The ring queue, and the durable spool when ``spool_dir`` is set (see the README's "Buffering")."""

    memory_records: int = Field(default=100_000, ge=1)
    # The ring queue's estimated memory; the oldest records are dropped beyond it (counted like memory_records).
    memory_bytes: Size = Field(default=128 << 20, ge=1 << 20)
    spool_dir: ConfigPath | None = None
    spool_max_bytes: Size = Field(default=2 << 30, ge=1 << 20)
    # Oldest records are dropped once older than this (None: no age limit).
    spool_max_age: Duration | None = None
    # Free space the spool always leaves on its file system; None: 5 % of it, at most 1 GiB.
    spool_min_free: Size | None = None
    # Records reach the disk (write + fsync) at most this long after acquisition; 0: at once.
    fsync_interval: Duration = Field(default=0.1, le=10.0)
    # Segment file size; None: a 64th of what the spool may use (spool_max_bytes, or the file system less
    # spool_min_free if smaller), between 64 KiB and 64 MiB.
    spool_segment_bytes: Size | None = Field(default=None, ge=4096)


def _output_types(value: object) -> object:
    """A key that is a type name and has no ``type:`` is that type; an empty entry (``influxdb:``) is no output."""
    if not isinstance(value, dict):
        return value
    entries: dict[object, object] = {}
    for name, entry in value.items():
        if entry is None:
            continue
        if isinstance(entry, dict) and "type" not in entry and name in outputs_registry.type_names():
            entry = {"type": name, **entry}
        entries[name] = entry
    return entries


def _one_output(value: object) -> OutputConfig:
    """An entry validated by the config model of its ``type:`` (its errors keep their place below the entry)."""
    if isinstance(value, OutputConfig):
        return value
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of output settings")
    settings = dict(value)
    kind = settings.pop("type", None)
    known = outputs_registry.type_names()
    if kind is None:
        raise _entry_error("missing", (), value, "")
    if not isinstance(kind, str) or kind not in known:
        raise _entry_error(
            "value_error", ("type",), kind, f"unknown output type {kind!r}; known types: {', '.join(known)}"
        )
    return outputs_registry.config_model(kind).model_validate(settings)


def _entry_error(kind: str, loc: tuple[str, ...], value: object, message: str) -> ValidationError:
    if kind == "missing":
        return ValidationError.from_exception_data("output", [{"type": "missing", "loc": ("type",), "input": value}])
    details = {"type": kind, "loc": loc, "input": value, "ctx": {"error": ValueError(message)}}
    return ValidationError.from_exception_data("output", [details])  # type: ignore[list-item]


AnyOutput = SerializeAsAny[Annotated[OutputConfig, PlainValidator(_one_output)]]
"""An output validated by the config model of its ``type:`` (edge_daq.sinks.registry)."""
OutputName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=200)]  # it names the output's cursor file


class OutputsConfig(RootModel[dict[OutputName, AnyOutput]]):
    """Output instances by name; with none, the daemon writes to the file output.

    ``outputs: {lab: {type: influxdb, ...}, customer: {type: influxdb, ...}}``; the name is the output's label in
    /metrics and /status and the name of its spool cursor (renaming an output starts a new cursor).
    """

    root: Annotated[dict[OutputName, AnyOutput], BeforeValidator(_output_types)] = Field(default_factory=dict)

    def items(self) -> list[tuple[str, OutputConfig]]:
        return list(self.root.items())

    def get(self, name: str) -> OutputConfig | None:
        return self.root.get(name)

    def __len__(self) -> int:
        return len(self.root)


class HttpConfig(StrictModel):
    listen: Annotated[str, AfterValidator(_check_listen)] = "127.0.0.1:9108"
    writes: HttpWritesConfig = Field(default_factory=HttpWritesConfig)  # POST /write: off by default
    # The status page's actions (pause/resume a test) need this token; without one the page is read-only.
    token: SecretStr | None = None
    token_file: ConfigPath | None = None

    @model_validator(mode="after")
    def _one_token(self) -> Self:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give token or token_file, not both")
        return self

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
    state_dir: ConfigPath | None = None

    @property
    def state_path(self) -> Path:
        """``state_dir``, or ``state`` beside the spool folder, or /var/lib/edge-daq/state."""
        if self.state_dir is not None:
            return self.state_dir
        if self.buffer.spool_dir is not None:
            return self.buffer.spool_dir.parent / "state"
        return DEFAULT_STATE_DIR

    @property
    def control_socket_path(self) -> Path:
        """The Unix socket of ``edge-daq test``, ``note`` and ``write``, in the state folder."""
        return self.state_path / CONTROL_SOCKET


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
    duts_csv: ConfigPath | None = None  # relative to the rig file
    stress: StressConfig | None = None
    failures: FailuresConfig | None = None
    # Acceleration models of `edge-daq report` (edge_daq.reliability.acceleration); the report only reads them.
    acceleration: list[AccelerationModel] = Field(default_factory=list)
    interlocks: list[Interlock] = Field(default_factory=list)  # edge_daq.writes.action_config
    layout: dict[str, BoardLayout] = Field(default_factory=dict)  # the status page's board maps

    @model_validator(mode="after")
    def _check_layout(self) -> Self:
        channels = {i.name: len(sockets) for i in self.instruments if (sockets := channel_sockets(i))}
        if issues := layout_issues(self.layout, channels):
            raise ValueError("; ".join(issues))
        return self

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
