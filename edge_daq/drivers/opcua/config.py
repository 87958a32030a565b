"""Config model of the OPC UA driver (``driver: opcua``). Light: pydantic only, never asyncua.

Sample (rig file)::

    - name: chamber
      driver: opcua
      endpoint: opc.tcp://10.0.4.40:4840        # the server's endpoint URL, as its manual or UaExpert shows it
      interval: 2s
      timeout: 1s
      mode: poll                                # poll (one Read of every node per interval) | subscribe
      security_policy: Basic256Sha256           # None (the default) | Basic256Sha256
      security_mode: SignAndEncrypt             # Sign | SignAndEncrypt (the default with a policy)
      certificate: /etc/edge-daq/opcua/edge-daq-cert.der   # this client's application instance certificate
      private_key: /etc/edge-daq/opcua/edge-daq-key.pem
      server_certificate: /etc/edge-daq/opcua/chamber.der  # optional: pin the server's certificate
      username: daq                             # optional; the password from password_file (or password: ${ENV})
      password_file: /run/credentials/edge-daq.service/opcua-chamber
      points:
        - {name: temp_pv, node: "ns=2;s=Chamber.Temperature", unit: degC}
        - {name: temp_sp, path: "/Objects/2:Chamber/2:Setpoint", unit: degC}   # a browse path from Root
        - {name: door_open, node: "ns=2;s=Chamber.DoorOpen", type: bool}
        - {name: run_hours, node: "ns=2;i=1007", type: int}
        - {name: power_pct, node: "nsu=urn:acme:chamber;s=Loop1.Output", scale: 0.1}

``node`` is a node id in the OPC UA text form: ``ns=<index>;`` (or ``nsu=<namespace URI>;``, looked up in the
server's namespace array at each connect) then ``i=<number>``, ``s=<string>``, ``g=<guid>`` or ``b=<base64>``.
``path`` is a browse path in the OPC UA relative-path syntax (Part 4, A.2), from the Root folder:
``/Objects/2:Chamber/2:Temperature``; a name without ``<index>:`` is in namespace 0. Paths are translated to
node ids at each connect, in one TranslateBrowsePathsToNodeIds call.
"""

from __future__ import annotations

import math
import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from edge_daq.config.types import NAME_PATTERN, ConfigPath, Duration, StrictModel
from edge_daq.config.values import check_host, check_login
from edge_daq.drivers.base import InstrumentConfig

ValueType = Literal["float", "int", "bool", "str"]
SecurityPolicy = Literal["None", "Basic256Sha256"]
SecurityMode = Literal["Sign", "SignAndEncrypt"]
DEFAULT_MAX_LENGTH = 256
MAX_QUEUE_SIZE = 10_000
MAX_TEXT = 4096
"""Longest node id or browse path accepted (a longer one is a paste gone wrong)."""

_NAMESPACE = r"(?:ns=(?P<ns>\d{1,5});|nsu=(?P<nsu>[^;]{1,1000});)?"
_IDENTIFIER = (
    r"(?:i=(?P<i>\d{1,20})|s=(?P<s>.+)|g=(?P<g>[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-"
    r"[0-9A-Fa-f]{12})|b=(?P<b>[A-Za-z0-9+/]*={0,2}))"
)
NODE_ID = re.compile(_NAMESPACE + _IDENTIFIER, re.DOTALL)
"""The text form of a node id (OPC 10000-6, 5.3.1.10): ``ns=2;s=Chamber.Temperature``, ``i=2258``."""
_PATH_ELEMENT = re.compile(r"(?:[/.]|<[#!]{0,2}(?:\d{1,5}:)?(?:[^<>&]|&.)+>)(?:\d{1,5}:)?(?:[^/.<>&]|&.)+")
"""One element of a relative path: a reference (``/`` hierarchical, ``.`` aggregates, ``<ns:Type>``), then a
target browse name (``2:Chamber``), with ``&`` escaping a reserved character."""


def check_node_id(text: str) -> str:
    match = NODE_ID.fullmatch(text)
    if match is None:
        raise ValueError(
            "not an OPC UA node id: expected ns=<index>; (or nsu=<URI>;) then i=<number>, s=<string>, "
            'g=<guid> or b=<base64>, such as "ns=2;s=Chamber.Temperature"'
        )
    if match["ns"] is not None and int(match["ns"]) > 0xFFFF:
        raise ValueError("a namespace index is 0 to 65535")
    if match["i"] is not None and int(match["i"]) > 0xFFFF_FFFF:
        raise ValueError("a numeric node id is 0 to 4294967295")
    return text


def check_browse_path(text: str) -> str:
    position = 0
    while position < len(text):
        match = _PATH_ELEMENT.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(
                f"not an OPC UA browse path at character {position + 1}: expected elements such as "
                '"/Objects/2:Chamber/2:Temperature" (a / or . then [namespace index:]name; & escapes / . < > &)'
            )
        position = match.end()
    if not text:
        raise ValueError("a browse path cannot be empty")
    return text


class OpcUaPoint(StrictModel):
    """One node's Value attribute; becomes one field of the instrument's record."""

    name: str = Field(pattern=NAME_PATTERN)
    node: str | None = Field(default=None, min_length=3, max_length=MAX_TEXT)
    path: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT)
    type: ValueType = Field(default="float", description="float | int | bool | str: the field type, stable")
    scale: float | None = None
    offset: float | None = None
    max_length: int = Field(default=DEFAULT_MAX_LENGTH, ge=1, le=1 << 20, description="characters of a str value")
    unit: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("node")
    @classmethod
    def _check_node(cls, value: str | None) -> str | None:
        return None if value is None else check_node_id(value)

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str | None) -> str | None:
        return None if value is None else check_browse_path(value)

    @model_validator(mode="after")
    def _check_shape(self) -> OpcUaPoint:
        if (self.node is None) == (self.path is None):
            raise ValueError("a point gives exactly one of node (a node id) or path (a browse path)")
        if (self.scale is not None or self.offset is not None) and self.type in ("bool", "str"):
            raise ValueError(f"scale and offset do not apply to {self.type} points")
        if "max_length" in self.model_fields_set and self.type != "str":
            raise ValueError("max_length applies to str points")
        return self

    @property
    def is_scaled(self) -> bool:
        return self.scale is not None or self.offset is not None

    @property
    def address(self) -> str:
        """The node id or browse path, for messages."""
        return self.node if self.node is not None else f"path {self.path}"


class OpcUaConfig(InstrumentConfig):
    endpoint: str = Field(min_length=1, max_length=MAX_TEXT, description="opc.tcp://host:port[/path]")
    mode: Literal["poll", "subscribe"] = "poll"
    sampling_interval: Duration | None = Field(
        default=None, description="subscribe: how often the server samples each node (default: publishing_interval)"
    )
    publishing_interval: Duration | None = Field(
        default=None, description="subscribe: how often the server sends the changes (default: interval)"
    )
    queue_size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_QUEUE_SIZE,
        description="subscribe: changes the server queues per node between publishes (default: enough for one "
        "publishing interval of samples)",
    )
    security_policy: SecurityPolicy = "None"
    security_mode: SecurityMode | None = None
    certificate: ConfigPath | None = Field(default=None, description="client certificate (DER or PEM)")
    private_key: ConfigPath | None = Field(default=None, description="its private key (PEM or DER)")
    server_certificate: ConfigPath | None = Field(default=None, description="pin the server's certificate")
    application_uri: str | None = Field(
        default=None, max_length=MAX_TEXT, description="this client's URI; default: the certificate's URI"
    )
    username: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT)
    password: SecretStr | None = None
    password_file: ConfigPath | None = None
    points: list[OpcUaPoint] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "opc.tcp":
            raise ValueError("an endpoint is an opc.tcp:// URL, such as opc.tcp://10.0.4.40:4840")
        # The endpoint is shown in logs, metrics and /status: credentials belong in username and password.
        if "@" in parts.netloc:
            raise ValueError("put credentials in username and password_file, not in the endpoint")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("the endpoint's port is not a number from 1 to 65535") from None
        if port == 0:
            raise ValueError("the endpoint's port is not a number from 1 to 65535")
        check_host(parts.hostname or "")
        return value

    @model_validator(mode="after")
    def _check_instrument(self) -> OpcUaConfig:
        seen: set[str] = set()
        for point in self.points:
            if point.name in seen:
                raise ValueError(f"two points are named {point.name!r}")
            seen.add(point.name)
        if self.mode == "poll":
            given = [
                key
                for key in ("sampling_interval", "publishing_interval", "queue_size")
                if key in self.model_fields_set
            ]
            if given:
                raise ValueError(f"{', '.join(given)} apply to mode: subscribe")
        if self.security_policy == "None":
            needless = [
                key
                for key in ("security_mode", "certificate", "private_key", "server_certificate")
                if getattr(self, key) is not None
            ]
            if needless:
                raise ValueError(f"{', '.join(needless)} need a security_policy other than None")
        elif self.certificate is None or self.private_key is None:
            raise ValueError(f"security_policy {self.security_policy} needs certificate and private_key")
        check_login(self.username, self.password, self.password_file)
        return self

    @property
    def effective_security_mode(self) -> Literal["None", "Sign", "SignAndEncrypt"]:
        if self.security_policy == "None":
            return "None"
        return self.security_mode or "SignAndEncrypt"

    @property
    def effective_publishing_interval(self) -> float:
        return self.publishing_interval if self.publishing_interval is not None else self.interval

    @property
    def effective_sampling_interval(self) -> float:
        """0 asks the server for its fastest practical rate."""
        if self.sampling_interval is not None:
            return self.sampling_interval
        return self.effective_publishing_interval

    @property
    def effective_queue_size(self) -> int:
        if self.queue_size is not None:
            return self.queue_size
        sampling = self.effective_sampling_interval
        if sampling <= 0:
            return 10
        return max(1, min(MAX_QUEUE_SIZE, math.ceil(self.effective_publishing_interval / sampling)))

    def field_tags(self) -> dict[str, dict[str, str]]:
        return {point.name: point.tags for point in self.points if point.tags}
