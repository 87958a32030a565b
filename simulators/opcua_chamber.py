"""An environmental chamber served over OPC UA: the Watlow F4 thermal model behind asyncua's server.

The physics is :class:`simulators.watlow_f4.WatlowF4`'s (the same seed gives the same chamber), shown the way an
OPC UA chamber controller (or an OPC UA gateway in front of an F4) shows it. Namespace
``urn:edge-daq:simulators:opcua-chamber``, under ``Objects/Chamber``; every node id is ``ns=<i>;s=Chamber.<Name>``
and its browse name ``<i>:<Name>``:

=================  ========  ======================================================
node               type      meaning
=================  ========  ======================================================
Temperature        Double    chamber air, degC (input 1)
LoadTemperature    Double    load thermocouple, degC (input 2)
Setpoint           Double    set point 1, degC
OutputPower        Double    loop 1 output, %, heat positive, cooling negative
DoorOpen           Boolean   door switch
Model              String    "Watlow F4 (OPC UA)"
SerialNumber       UInt32    the controller's serial number
=================  ========  ======================================================

Values are written every ``update_interval`` real seconds with the scan's wall-clock time as their source
timestamp (asyncua's server notifies subscriptions on writes, so that is also the fastest sampling it offers).
While the controller is powered off (``power_loss``) every value has status BadNoCommunication, as a gateway
shows a silent controller; nodes named in ``bad_nodes`` always have status BadSensorFailure (an open
thermocouple). :attr:`OpcUaChamberServer.history` keeps the last scans as written, so a test can check what a
client received against what was served.

Security: ``security`` lists the endpoints offered: ``None``, ``Basic256Sha256:Sign``,
``Basic256Sha256:SignAndEncrypt``. A secure endpoint needs the server's ``certificate`` and ``private_key``
(DER or PEM bytes or paths); ``users`` (name -> password) makes the server refuse any other user and, unless
``allow_anonymous``, anonymous sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, cast

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_server import InternalServer
from asyncua.server.user_managers import UserManager

from simulators.modbus_server import ModelClock
from simulators.watlow_f4 import Scan, WatlowF4

NAMESPACE = "urn:edge-daq:simulators:opcua-chamber"
APPLICATION_URI = "urn:edge-daq:simulators:opcua-chamber:server"
MODEL = "Watlow F4 (OPC UA)"
SECURITY_OPTIONS: dict[str, ua.SecurityPolicyType] = {
    "None": ua.SecurityPolicyType.NoSecurity,
    "Basic256Sha256:Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "Basic256Sha256:SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
}
NODES: dict[str, ua.VariantType] = {
    "Temperature": ua.VariantType.Double,
    "LoadTemperature": ua.VariantType.Double,
    "Setpoint": ua.VariantType.Double,
    "OutputPower": ua.VariantType.Double,
    "DoorOpen": ua.VariantType.Boolean,
    "Model": ua.VariantType.String,
    "SerialNumber": ua.VariantType.UInt32,
}
HISTORY = 10_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

logging.getLogger("asyncua").setLevel(logging.CRITICAL)  # it logs every client that goes away


def node_id(name: str, namespace: int = 2) -> str:
    """The text node id of a chamber node (``ns=2;s=Chamber.Temperature``: the namespace is 2 on this server)."""
    return f"ns={namespace};s=Chamber.{name}"


def _ns(stamp: datetime) -> int:
    delta = stamp - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


class _Users(UserManager):
    """asyncua's user manager: the configured users, and anonymous sessions if allowed."""

    def __init__(self, users: Mapping[str, str] | None, allow_anonymous: bool) -> None:
        self.users = dict(users or {})
        self.allow_anonymous = allow_anonymous or users is None
        self.refused = 0

    def get_user(
        self, iserver: InternalServer, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if username is None:
            return User(role=UserRole.User) if self.allow_anonymous else self._refuse()
        if username in self.users and self.users[username] == password:
            return User(role=UserRole.User, name=username)
        return self._refuse()

    def _refuse(self) -> User | None:
        self.refused += 1
        return None


class OpcUaChamberServer:
    """The chamber's OPC UA server; ``async with`` starts and stops it. ``port=0`` picks a free port."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        time_scale: float = 1.0,
        update_interval: float = 0.1,
        security: Iterable[str] = ("None",),
        certificate: bytes | Path | None = None,
        private_key: bytes | Path | None = None,
        users: Mapping[str, str] | None = None,
        allow_anonymous: bool = False,
        bad_nodes: Iterable[str] = (),
        **model_options: Any,
    ) -> None:
        self.security = list(security)
        unknown = [option for option in self.security if option not in SECURITY_OPTIONS]
        if unknown or not self.security:
            raise ValueError(f"security options are {', '.join(SECURITY_OPTIONS)}; got {', '.join(unknown) or 'none'}")
        if any(option != "None" for option in self.security) and (certificate is None or private_key is None):
            raise ValueError("a secure endpoint needs the server's certificate and private_key")
        self.bad_nodes = set(bad_nodes)
        if self.bad_nodes - set(NODES):
            raise ValueError(f"unknown nodes {sorted(self.bad_nodes - set(NODES))}; nodes are {', '.join(NODES)}")
        if not update_interval > 0:
            raise ValueError("update_interval must be positive")
        self.host = host
        self.port = port
        self.update_interval = update_interval
        self.certificate = certificate
        self.private_key = private_key
        self.device = WatlowF4(seed=seed, clock=ModelClock(time_scale), **model_options)
        self.user_manager = _Users(users, allow_anonymous)
        self.history: collections.deque[tuple[int, Scan]] = collections.deque(maxlen=HISTORY)
        """(source timestamp in ns, scan) of every update written, oldest first."""
        self.namespace = 0
        self._server: Server | None = None
        self._nodes: dict[str, ua.NodeId] = {}
        self._updater: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/"

    async def start(self) -> None:
        server = Server(user_manager=self.user_manager)
        await server.init()
        server.set_server_name("edge-daq OPC UA chamber simulator")
        await server.set_application_uri(APPLICATION_URI)
        server.set_endpoint(f"opc.tcp://{self.host}:{self.port}/")
        server.set_security_policy([SECURITY_OPTIONS[option] for option in self.security])
        tokens: list[type] = [ua.UserNameIdentityToken]
        if self.user_manager.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        if self.certificate is not None and self.private_key is not None:
            await server.load_certificate(self.certificate, format=_format(self.certificate))
            await server.load_private_key(self.private_key, format=_format(self.private_key))
        self.namespace = await server.register_namespace(NAMESPACE)
        ns = self.namespace
        chamber = await server.nodes.objects.add_object(ua.NodeId.from_string(f"ns={ns};s=Chamber"), f"{ns}:Chamber")
        for name, variant_type in NODES.items():
            initial = ua.Variant(_initial(variant_type), variant_type)
            node = await chamber.add_variable(ua.NodeId.from_string(node_id(name, ns)), f"{ns}:{name}", initial)
            self._nodes[name] = node.nodeid
        await self._update(server)
        await server.start()
        assert server.bserver is not None
        listener = cast(asyncio.Server, server.bserver._server)
        self.port = listener.sockets[0].getsockname()[1]
        self._server = server
        self._updater = asyncio.create_task(self._run(server), name="opcua-chamber updates")

    async def close(self) -> None:
        updater, self._updater = self._updater, None
        if updater is not None:
            updater.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await updater
        server, self._server = self._server, None
        if server is not None:
            await server.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _run(self, server: Server) -> None:
        while True:
            await asyncio.sleep(self.update_interval)
            await self._update(server)

    async def _update(self, server: Server) -> None:
        scan = self.device.scan()
        now = datetime.now(UTC)
        stamp = cast(ua.DateTime, now)  # asyncua's DateTime is a datetime at run time
        values: dict[str, Any] = {
            "Temperature": scan.air,
            "LoadTemperature": scan.load,
            "Setpoint": scan.setpoint1,
            "OutputPower": scan.power,
            "DoorOpen": scan.door_open,
            "Model": MODEL,
            "SerialNumber": self.device.serial_number,
        }
        for name, value in values.items():
            if name in self.bad_nodes:
                status = ua.StatusCodes.BadSensorFailure
            elif not scan.powered:
                status = ua.StatusCodes.BadNoCommunication
            else:
                status = ua.StatusCodes.Good
            good = status == ua.StatusCodes.Good
            data = ua.DataValue(
                ua.Variant(value, NODES[name]) if good else ua.Variant(),
                StatusCode=ua.StatusCode(ua.UInt32(status)),
                SourceTimestamp=stamp,
                ServerTimestamp=stamp,
            )
            await server.write_attribute_value(self._nodes[name], data)
        self.history.append((_ns(now), scan))

    def served(self, name: str) -> list[tuple[int, Any]]:
        """(source timestamp ns, value) of node ``name`` in every update kept in :attr:`history`."""
        attribute = {
            "Temperature": "air",
            "LoadTemperature": "load",
            "Setpoint": "setpoint1",
            "OutputPower": "power",
            "DoorOpen": "door_open",
        }[name]
        return [(at, getattr(scan, attribute)) for at, scan in self.history]


def _initial(variant_type: ua.VariantType) -> Any:
    return {ua.VariantType.Boolean: False, ua.VariantType.String: "", ua.VariantType.UInt32: 0}.get(variant_type, 0.0)


def _format(source: bytes | Path) -> str:
    data = source if isinstance(source, bytes) else source.read_bytes()
    return "pem" if data.lstrip().startswith(b"-----BEGIN") else "der"


# -- CLI glue (edge-daq simulate opcua-chamber)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--security", action="append", choices=list(SECURITY_OPTIONS), default=[],
        help="an endpoint security offered (repeatable; default None)",
    )  # fmt: skip
    parser.add_argument("--certificate", type=Path, help="the server's certificate (DER or PEM), for secure endpoints")
    parser.add_argument("--private-key", type=Path, help="its private key (PEM or DER)")
    parser.add_argument(
        "--user", action="append", default=[], metavar="NAME:PASSWORD_FILE",
        help="accept this user, with the password in PASSWORD_FILE (repeatable; then anonymous is refused)",
    )  # fmt: skip
    parser.add_argument("--allow-anonymous", action="store_true", help="with --user: accept anonymous sessions too")
    parser.add_argument("--bad-node", action="append", choices=list(NODES), default=[], help="always BadSensorFailure")
    parser.add_argument("--update-interval", type=float, default=0.1, help="seconds between value updates (0.1)")


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    users: dict[str, str] | None = None
    if args.user:
        users = {}
        for entry in args.user:
            name, separator, path = entry.partition(":")
            if not separator or not name or not path:
                raise ValueError(f"--user takes NAME:PASSWORD_FILE, got {entry!r}")
            users[name] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    return {
        "security": args.security or ["None"],
        "certificate": args.certificate,
        "private_key": args.private_key,
        "users": users,
        "allow_anonymous": args.allow_anonymous,
        "bad_nodes": args.bad_node,
        "update_interval": args.update_interval,
    }
