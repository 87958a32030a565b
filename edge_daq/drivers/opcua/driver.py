"""OPC UA driver (``driver: opcua``, see ``config`` for a sample), on asyncua's client.

Every instrument on one endpoint with the same security and user shares one :class:`OpcUaLink`: one secure
channel and one session. The scheduler owns reconnects: asyncua's own reconnect loop is off, so a lost
session (a server restart, a dropped network) makes the link report itself closed and the next poll opens a
new session after the scheduler's backoff; each instrument then resolves its nodes again and, in subscribe
mode, creates its subscription anew. asyncua's log is silenced: it logs every retry, while the scheduler logs
one error per outage and counts the rest.

- ``mode: poll``: each poll is one Read service call for every node of the instrument (split only if the
  server's MaxNodesPerRead limit asks for it). Records carry the acquisition time, as with every driver.
- ``mode: subscribe``: one subscription per instrument, with one monitored item per point. The server samples
  at ``sampling_interval`` and publishes at ``publishing_interval``; each poll (every ``interval``) hands on
  the data changes received since the last one. Each becomes a record at the server's source timestamp, or at
  the time edge-daq received it when the server sent none; changes with the same timestamp share a record.
  A node whose last change had a status other than Good is reported failed in every poll until it recovers.

Either way a value whose status is not Good (Bad or Uncertain) is left out of the record and named, with its
status code, in ``edge_daq_status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent, Subscription
from asyncua.crypto import security_policies
from asyncua.crypto.uacrypto import CertProperties

from edge_daq.drivers.base import DriverPlugin, Instrument, Link, PollResult
from edge_daq.drivers.opcua.config import OpcUaConfig, OpcUaPoint
from edge_daq.drivers.opcua.security import load_credentials
from edge_daq.drivers.opcua.values import field_value, status_text, timestamp_ns
from edge_daq.errors import DeviceError, DriverConnectionError, DriverError, DriverProtocolError, DriverTimeoutError
from edge_daq.record import FieldValue
from edge_daq.sinks.secrets import Scrubber
from edge_daq.stats import LinkStats

logging.getLogger("asyncua").setLevel(logging.CRITICAL)

WATCHDOG_INTERVAL = 5.0
"""Seconds between asyncua's probes of a quiet session; a closed connection is noticed at once anyway."""
CONNECT_ROUND_TRIPS = 4
"""A connect is hello, secure channel, session and activation: it may take this many request timeouts."""
MAX_QUEUED_CHANGES = 100_000
"""Data changes held per subscribed instrument between two polls; more are dropped and counted."""
CLOSE_TIMEOUT = 1.0
_SESSION_LOST = frozenset(
    {
        ua.StatusCodes.BadSessionIdInvalid,
        ua.StatusCodes.BadSessionClosed,
        ua.StatusCodes.BadSessionNotActivated,
        ua.StatusCodes.BadSecureChannelIdInvalid,
        ua.StatusCodes.BadSecureChannelClosed,
        ua.StatusCodes.BadConnectionClosed,
        ua.StatusCodes.BadServerHalted,
        ua.StatusCodes.BadShutdown,
        ua.StatusCodes.BadCommunicationError,
        ua.StatusCodes.BadNotConnected,
    }
)
_IDENTITY_REFUSED = frozenset(
    {
        ua.StatusCodes.BadUserAccessDenied,
        ua.StatusCodes.BadIdentityTokenInvalid,
        ua.StatusCodes.BadIdentityTokenRejected,
    }
)
_POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
}
_MODES = {"Sign": ua.MessageSecurityMode.Sign, "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt}
_VALUE = ua.AttributeIds.Value
_ROOT = ua.NodeId(ua.Int32(ua.ObjectIds.RootFolder))
_MAX_NODES_PER_READ = ua.NodeId(ua.Int32(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead))


def describe_endpoint(config: OpcUaConfig) -> str:
    """The link's name in logs and metrics: the endpoint, and the security and user when there are any."""
    extras = []
    if config.security_policy != "None":
        extras.append(f"{config.security_policy}/{config.effective_security_mode}")
    if config.username is not None:
        extras.append(f"user {config.username}")
    return f"{config.endpoint} ({', '.join(extras)})" if extras else config.endpoint


class _CountingQueue(asyncio.Queue[Any]):
    """The subscription's event queue: bounded, and counting what did not fit instead of blocking asyncua."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.dropped = 0

    def put_nowait(self, item: Any) -> None:
        try:
            super().put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            raise


class OpcUaLink(Link):
    """One session with an OPC UA server, shared by the instruments on it."""

    def __init__(self, config: OpcUaConfig, *, request_timeout: float) -> None:
        self.config = config  # security and identity: the same for every instrument of the link (its key)
        self.request_timeout = request_timeout
        self.client: Client | None = None
        self.generation = 0
        """Incremented at each open: instruments resolve their nodes and subscribe once per generation."""
        self.namespaces: list[str] = []
        self.max_nodes_per_read = 0  # 0: no limit
        self.scrub = Scrubber()
        self._describe = describe_endpoint(config)
        self.stats = LinkStats(link=self._describe)
        """``reconnects``: sessions found lost (a server restart, a dropped connection)."""
        self._lost_counted = False

    @property
    def describe(self) -> str:
        return self._describe

    @property
    def is_open(self) -> bool:
        client = self.client
        if client is None:
            return False
        if client.uaclient.state is UaClientState.CONNECTED:
            return True
        if not self._lost_counted:
            self._lost_counted = True
            self.stats.reconnects += 1
        return False

    async def open(self) -> None:
        await self.close()
        config = self.config
        credentials = await load_credentials(config)
        client = Client(config.endpoint, timeout=self.request_timeout, watchdog_intervall=WATCHDOG_INTERVAL)
        client.name = client.description = "edge-daq"
        client.product_uri = "urn:edge-daq"
        if credentials.application_uri:
            client.application_uri = credentials.application_uri
        if config.username is not None:
            client.set_user(config.username)
        if credentials.password:
            self.scrub.add(credentials.password)
            client.set_password(credentials.password)
        connect_timeout = CONNECT_ROUND_TRIPS * self.request_timeout
        try:
            async with asyncio.timeout(connect_timeout):
                if config.security_policy != "None":
                    assert credentials.certificate is not None
                    assert credentials.private_key is not None
                    server = credentials.server_certificate
                    await client.set_security(
                        _POLICIES[config.security_policy],
                        CertProperties(credentials.certificate, extension="der"),
                        CertProperties(credentials.private_key, extension="der"),
                        server_certificate=None if server is None else CertProperties(server, extension="der"),
                        mode=_MODES[config.effective_security_mode],
                    )
                await client.connect()
                try:
                    self.namespaces = await client.get_namespace_array()
                    self.max_nodes_per_read = await self._read_limit(client)
                except BaseException:
                    await _disconnect(client)
                    raise
        except Exception as error:
            client.disconnect_socket()
            raise self._connect_error(error, connect_timeout) from None
        self.client = client
        self._lost_counted = False
        self.generation += 1

    @staticmethod
    async def _read_limit(client: Client) -> int:
        """The server's MaxNodesPerRead (0: none); a server without the node has no limit to tell."""
        try:
            value = await client.get_node(_MAX_NODES_PER_READ).read_value()
        except ua.UaStatusCodeError:
            return 0
        return value if isinstance(value, int) and value > 0 else 0

    def _connect_error(self, error: Exception, connect_timeout: float) -> DriverConnectionError:
        where = f"cannot connect to {self._describe}"
        config = self.config
        if isinstance(error, TimeoutError):
            return DriverConnectionError(f"{where}: no answer in {connect_timeout:g} s")
        if isinstance(error, ua.UaStatusCodeError):
            code = error.code
            status = status_text(ua.StatusCode(code))
            if code in _IDENTITY_REFUSED:
                who = f"user {config.username!r}" if config.username else "an anonymous session"
                hint = ": check username and password_file" if config.username else ": the server wants a username"
                return DriverConnectionError(f"{where}: the server refused {who} ({status}){hint}")
            if "Certificate" in status or "Security" in status:
                return DriverConnectionError(
                    f"{where}: the server refused the secure channel ({status}): check certificate and private_key, "
                    "and that the server trusts this client's certificate"
                )
            return DriverConnectionError(f"{where}: {status}")
        if isinstance(error, OSError):
            return DriverConnectionError(f"{where}: {error.strerror or error}")
        if isinstance(error, ua.UaError) and "No matching endpoints" in str(error):
            return DriverConnectionError(
                f"{where}: the server offers no endpoint with security {config.security_policy} "
                f"{config.effective_security_mode}"
            )
        if isinstance(error, DriverError):
            return DriverConnectionError(f"{where}: {error}")
        return DriverConnectionError(self.scrub(f"{where}: {type(error).__name__}: {error}")[:500])

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await _disconnect(client)

    def request_error(self, error: Exception, what: str, timeout: float) -> DriverError:
        """A failed service call as a DriverError: connection errors make the scheduler reopen the link."""
        if isinstance(error, TimeoutError):
            return DriverTimeoutError(f"{self._describe}: no response to {what} within {timeout:g} s")
        if isinstance(error, ua.UaStatusCodeError):
            status = status_text(ua.StatusCode(error.code))
            if error.code in _SESSION_LOST:
                return DriverConnectionError(f"{self._describe}: session lost ({status}) during {what}")
            return DeviceError(f"{self._describe}: {what} failed: {status}")
        if isinstance(error, ConnectionError | OSError):
            return DriverConnectionError(f"{self._describe}: connection lost during {what}")
        return DriverProtocolError(
            self.scrub(f"{self._describe}: {what} failed: {type(error).__name__}: {error}")[:500]
        )


async def _disconnect(client: Client) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await client.disconnect()
    client.disconnect_socket()


class OpcUaInstrument(Instrument[OpcUaConfig, OpcUaLink]):
    def __init__(self, config: OpcUaConfig) -> None:
        super().__init__(config)
        self._generation = 0
        self._unresolved: dict[str, DriverError] = {}  # point name -> why its node could not be found
        self._reads: list[tuple[ua.ReadParameters, list[OpcUaPoint]]] = []
        self._subscription: Subscription | None = None
        self._queue: _CountingQueue | None = None
        self._handles: dict[int, OpcUaPoint] = {}
        self._bad: dict[str, DriverError] = {}  # subscribe: points whose last change was not Good
        self._dropped_reported = 0

    async def poll(self, link: OpcUaLink) -> PollResult:
        client = link.client
        if client is None or not link.is_open:
            raise DriverConnectionError(f"{link.describe}: the session was lost")
        if self._generation != link.generation:
            await self._prepare(link, client)
        if self.config.mode == "subscribe":
            return self._drain(link)
        return await self._read(link, client)

    # -- connecting

    async def _prepare(self, link: OpcUaLink, client: Client) -> None:
        """Resolve every point's node (node ids and browse paths) and, subscribed, create the subscription."""
        self._subscription = self._queue = None
        self._bad.clear()
        node_ids = await self._resolve(link, client)
        points = [(point, node_ids[point.name]) for point in self.config.points if point.name in node_ids]
        if self.config.mode == "subscribe":
            await self._subscribe(link, client, points)
        else:
            limit = link.max_nodes_per_read or len(points) or 1
            self._reads = []
            for start in range(0, len(points), limit):
                chunk = points[start : start + limit]
                params = ua.ReadParameters()
                params.TimestampsToReturn = ua.TimestampsToReturn.Both
                params.NodesToRead = [
                    ua.ReadValueId(NodeId=node, AttributeId=ua.AttributeIds.Value) for _, node in chunk
                ]
                self._reads.append((params, [point for point, _ in chunk]))
        self._generation = link.generation

    async def _resolve(self, link: OpcUaLink, client: Client) -> dict[str, ua.NodeId]:
        self._unresolved = {}
        resolved: dict[str, ua.NodeId] = {}
        paths: list[tuple[OpcUaPoint, ua.RelativePath]] = []
        for point in self.config.points:
            try:
                if point.node is not None:
                    resolved[point.name] = self._node_id(point.node, link.namespaces)
                else:
                    assert point.path is not None
                    paths.append((point, ua.RelativePath.from_string(point.path)))
            except (ValueError, ua.UaError) as error:
                self._unresolved[point.name] = DriverProtocolError(f"{point.name}: {point.address}: {error}")
        if paths:
            timeout = self.config.timeout
            try:
                async with asyncio.timeout(timeout):
                    results = await client.uaclient.translate_browsepaths_to_nodeids(
                        [ua.BrowsePath(StartingNode=_ROOT, RelativePath=path) for _, path in paths]
                    )
            except Exception as error:
                raise link.request_error(error, "TranslateBrowsePathsToNodeIds", timeout) from None
            for (point, _), result in zip(paths, results, strict=False):
                if result.StatusCode.is_good() and result.Targets:
                    resolved[point.name] = result.Targets[0].TargetId
                else:
                    why = status_text(result.StatusCode)
                    self._unresolved[point.name] = DeviceError(f"{point.name}: {point.address} not found ({why})")
        return resolved

    @staticmethod
    def _node_id(text: str, namespaces: list[str]) -> ua.NodeId:
        node = ua.NodeId.from_string(text)
        if isinstance(node, ua.ExpandedNodeId) and node.NamespaceUri:
            try:
                index = namespaces.index(node.NamespaceUri)
            except ValueError:
                raise ValueError(f"the server has no namespace {node.NamespaceUri!r}") from None
            return ua.NodeId(node.Identifier, ua.Int16(index), node.NodeIdType)
        return node

    async def _subscribe(self, link: OpcUaLink, client: Client, points: list[tuple[OpcUaPoint, ua.NodeId]]) -> None:
        config = self.config
        timeout = config.timeout
        queue = _CountingQueue(MAX_QUEUED_CHANGES)
        try:
            async with asyncio.timeout(timeout * 2):
                subscription = await client.create_subscription(config.effective_publishing_interval * 1000.0, None)
                # asyncua 2.1's iterator mode fills this queue; ours counts what overflows (the pin keeps it there,
                # and the check below turns a renamed attribute into an error rather than a silent subscription).
                if not isinstance(getattr(subscription, "_event_queue", None), asyncio.Queue):
                    raise DriverProtocolError("this asyncua version has no subscription event queue: pin asyncua 2.1")
                subscription._event_queue = queue
                requests = []
                self._handles = {}
                for handle, (point, node) in enumerate(points, start=1):
                    self._handles[handle] = point
                    parameters = ua.MonitoringParameters(
                        ClientHandle=handle,
                        SamplingInterval=config.effective_sampling_interval * 1000.0,
                        QueueSize=config.effective_queue_size,
                        DiscardOldest=True,
                    )
                    requests.append(
                        ua.MonitoredItemCreateRequest(
                            ItemToMonitor=ua.ReadValueId(NodeId=node, AttributeId=ua.AttributeIds.Value),
                            MonitoringMode=ua.MonitoringMode.Reporting,
                            RequestedParameters=parameters,
                        )
                    )
                results = await subscription.create_monitored_items(requests) if requests else []
        except Exception as error:
            if isinstance(error, DriverError):
                raise
            raise link.request_error(error, "CreateSubscription", timeout * 2) from None
        for (point, _), result in zip(points, results, strict=False):
            if isinstance(result, ua.StatusCode):
                self._unresolved[point.name] = DeviceError(
                    f"{point.name}: cannot monitor {point.address} ({status_text(result)})"
                )
        self._subscription, self._queue = subscription, queue
        self._dropped_reported = 0

    # -- reading

    async def _read(self, link: OpcUaLink, client: Client) -> PollResult:
        result = PollResult({})
        timeout = self.config.timeout
        for params, points in self._reads:
            try:
                async with asyncio.timeout(timeout):
                    values = await client.uaclient.read(params)
            except Exception as error:
                raise link.request_error(error, f"Read of {len(points)} nodes", timeout) from None
            if len(values) != len(points):
                raise DriverProtocolError(f"{link.describe}: Read of {len(points)} nodes answered {len(values)} values")
            for point, value in zip(points, values, strict=True):
                self._accept(point, value, result.fields, result)
        self._report_unresolved(result)
        return result

    def _accept(
        self, point: OpcUaPoint, value: ua.DataValue, fields: dict[str, FieldValue], result: PollResult
    ) -> bool:
        status = value.StatusCode
        if status is not None and not status.is_good():
            result.failed.append(point.name)
            result.errors.append(DeviceError(f"{point.name}: {status_text(status)}"))
            return False
        try:
            fields[point.name] = field_value(point, value.Value)
        except ValueError as error:
            result.failed.append(point.name)
            result.errors.append(DriverProtocolError(f"{point.name}: {point.address}: {error}"))
            return False
        return True

    def _report_unresolved(self, result: PollResult) -> None:
        for name, error in self._unresolved.items():
            result.failed.append(name)
            result.errors.append(error)

    def _drain(self, link: OpcUaLink) -> PollResult:
        """The data changes received since the last poll, as timed samples (subscribe mode)."""
        queue = self._queue
        assert queue is not None
        result = PollResult({}, samples=[])
        by_time: dict[int, dict[str, FieldValue]] = {}
        arrived = time.time_ns()
        lost: DriverError | None = None
        while not queue.empty():
            event = queue.get_nowait()
            if isinstance(event, StatusChangeEvent):
                status = event.notification.Status
                if status is not None and not status.is_good():
                    # A DeviceError: the session may be fine (a lost one shows in link.is_open and reconnects).
                    lost = DeviceError(
                        f"{link.describe}: subscription ended ({status_text(status)}); subscribing again"
                    )
                continue
            if not isinstance(event, DataChangeEvent):
                continue
            item = event.data.monitored_item
            point = self._handles.get(item.ClientHandle)
            if point is None or item.Value is None:
                continue
            value = item.Value
            scratch = PollResult({})
            fields: dict[str, FieldValue] = {}
            if self._accept(point, value, fields, scratch):
                self._bad.pop(point.name, None)
                at = timestamp_ns(value.SourceTimestamp, value.SourcePicoseconds) or arrived
                by_time.setdefault(at, {}).update(fields)
            else:
                self._bad[point.name] = scratch.errors[0]
        assert result.samples is not None
        result.samples.extend(sorted(by_time.items()))
        for name, error in self._bad.items():
            result.failed.append(name)
            result.errors.append(error)
        self._report_unresolved(result)
        if queue.dropped > self._dropped_reported:
            dropped = queue.dropped - self._dropped_reported
            self._dropped_reported = queue.dropped
            result.errors.append(
                DriverProtocolError(
                    f"{dropped} data changes dropped: more than {MAX_QUEUED_CHANGES} arrived between two polls "
                    "(shorten interval or lengthen sampling_interval)"
                )
            )
            result.failed.append("(dropped data changes)")
        if lost is not None:
            # The changes above are kept; the next poll subscribes again (or reconnects, if the session is gone).
            self._generation = 0
            if not result.samples:
                raise lost
            result.errors.append(lost)
        return result


class OpcUaPlugin(DriverPlugin[OpcUaConfig, OpcUaLink]):
    def link_key(self, config: OpcUaConfig) -> str:
        return describe_endpoint(config)

    def open_link(self, configs: Sequence[OpcUaConfig]) -> OpcUaLink:
        return OpcUaLink(configs[0], request_timeout=max(config.timeout for config in configs))

    def make_instrument(self, config: OpcUaConfig) -> OpcUaInstrument:
        return OpcUaInstrument(config)


PLUGIN = OpcUaPlugin()
