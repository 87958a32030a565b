"""MQTT output (aiomqtt 2.x): live records, rig events and the gateway's status, for dashboards, MES and SCADA.

Sample (gateway file)::

    outputs:
      mqtt:
        host: broker.lab2.example
        port: 8883                   # default 1883, or 8883 with tls
        topic_prefix: edge-daq
        qos: 1                       # 0 or 1
        username: gw-lab2-01
        password_file: /run/credentials/edge-daq.service/mqtt-password   # or password: ${MQTT_PASSWORD}
        tls: {ca_file: /etc/edge-daq/lab-ca.pem}
        keepalive: 30s
        protocol: "3.1.1"            # or 5
        retain_last: true

Topics (``{gateway}`` is the gateway name; a ``/``, ``+`` or ``#`` in a name is replaced by ``_``):

======================================  ==========================================================================
``{prefix}/{gateway}/{rig}/{instrument}``  one JSON message per record:
                                        ``{"measurement": m, "time": ns, "tags": {...}, "fields": {...}}``
``{prefix}/{gateway}/_gateway/{measurement}``  records without a ``rig`` and ``instrument`` tag
``{prefix}/{gateway}/{rig}/events``     rig events (:meth:`MqttOutput.publish_event`), never retained
``{prefix}/{gateway}/status``           retained: ``online`` on every (re)connect; ``offline`` as the last will
                                        and on a clean stop
======================================  ==========================================================================

Delivery: :meth:`MqttOutput.write` returns once the broker acknowledged every message of the batch (PUBACK
at QoS 1; at QoS 0, once written to the socket), which is what lets the runner advance this output's cursor.
Any failure drops the connection and raises :class:`RetriableSinkError`: the runner retries the whole batch
after a backoff and the next write reconnects (aiomqtt does not reconnect by itself), so delivery is
at-least-once; the nanosecond ``time`` of a record lets consumers drop duplicates.

A broker's PUBACK is not always a promise to keep the message: a cluster's MQTT listener (NATS, EMQX)
acknowledges once it has routed a message, before a replicated stream stored it, so what a node acknowledged
just before it died can be gone. ``resend_window`` covers that: after a lost connection, the messages
acknowledged within that many seconds before the last acknowledgement are published again, first, on the next
connection (duplicates with the same ``time``, counted as ``resent``; at most ``RESEND_LIMIT`` messages kept).

At most ``max_inflight`` messages are handed to the MQTT client at once: the rest of a batch waits in the
buffer, so the client's outgoing queue is bounded whatever the broker does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

import aiomqtt
import structlog
from aiomqtt import MqttError, ProtocolVersion, Will
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, field_validator, model_validator

from edge_daq import __version__
from edge_daq.config.types import StrictModel
from edge_daq.config.units import Duration, Timeout
from edge_daq.config.values import ConfigPath, HostName, check_host, check_login
from edge_daq.errors import FatalSinkError, RetriableSinkError, SinkError
from edge_daq.record import FieldValue, Record, Series
from edge_daq.sinks.base import Output, OutputConfig, WriteResult, read_secret
from edge_daq.sinks.registry import OutputContext
from edge_daq.sinks.secrets import Scrubber

log = structlog.get_logger("edge_daq.sinks.mqtt")
# paho logs through the standard library, at ERROR for each failed connection; the runner already logs an
# outage once, so paho speaks only when the daemon runs at debug level.
_paho_log = logging.getLogger("edge_daq.sinks.mqtt.paho")

GATEWAY_SEGMENT = "_gateway"
EVENTS_SEGMENT = "events"
STATUS_SEGMENT = "status"

# CONNACK codes: 3.1.1 return codes 4 and 5, and their MQTT 5 reason codes 134 and 135.
_CREDENTIALS_REFUSED = frozenset({4, 5, 134, 135})
# A broker that is starting, overloaded or rate limiting: worth a normal retry, unlike a configuration problem.
_BROKER_BUSY = frozenset({3, 136, 137, 151, 159})
_TOPIC_SPECIALS = str.maketrans({"/": "_", "+": "_", "#": "_", "\0": "_"})
_SERIES_CACHE_LIMIT = 4096
RESEND_LIMIT = 100_000  # messages kept for resend_window: ~20 MB at most, and 100 s of a 1,000-instrument gateway


def _protocol_name(value: object) -> object:
    # YAML reads `protocol: 5` as a number; `3.1.1` is a string either way.
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class MqttTlsConfig(StrictModel):
    """TLS to the broker; ``tls: {}`` verifies the broker against the system's CA certificates."""

    ca_file: ConfigPath | None = None
    cert_file: ConfigPath | None = None  # client certificate, for brokers that require one
    key_file: ConfigPath | None = None  # its private key, if not in cert_file
    insecure: bool = False  # skip the host name check only: the certificate is still verified

    @model_validator(mode="after")
    def _key_needs_certificate(self) -> MqttTlsConfig:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file")
        return self


def _check_broker(entry: str) -> str:
    host, port = _split_broker(entry)
    check_host(host)
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"a port must be between 1 and 65535, got {port}")
    return entry


def _split_broker(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port`` or ``[ipv6]:port`` (an IPv6 address without a port needs no brackets)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            raise ValueError(f"expected host:port or [ipv6]:port, got {entry!r}")
        return host, int(rest[1:]) if rest else None
    host, separator, port = entry.rpartition(":")
    if not separator or ":" in host:  # no port, or a bare IPv6 address
        return entry, None
    if not port.isdigit():
        raise ValueError(f"expected host:port, got {entry!r}")
    return host, int(port)


BrokerAddress = Annotated[str, Field(min_length=1, max_length=300), AfterValidator(_check_broker)]


class MqttOutputConfig(OutputConfig):
    host: HostName = Field(default="127.0.0.1", min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)  # None: 1883, or 8883 with tls
    # Failover: tried in order at every (re)connection; an entry without a port takes `port` or its default.
    hosts: list[BrokerAddress] | None = Field(default=None, min_length=1, max_length=16)
    topic_prefix: str = "edge-daq"
    qos: Literal[0, 1] = 1
    client_id: str | None = Field(default=None, min_length=1, max_length=65535)  # None: edge-daq-{gateway}
    username: str | None = None
    password: SecretStr | None = None
    password_file: ConfigPath | None = None
    tls: MqttTlsConfig | None = None
    keepalive: Duration = 30.0
    protocol: Annotated[
        Literal["3.1.1", "5"], BeforeValidator(_protocol_name, json_schema_input_type=Literal["3.1.1", "5", 5])
    ] = "3.1.1"
    retain_last: bool = False
    max_inflight: int = Field(default=100, ge=1, le=65535)
    # Connecting (TCP, TLS, CONNACK), and the longest wait for any acknowledgement before the connection is
    # considered dead; keepalive catches a silent broker too, but only after up to twice its value.
    timeout: Timeout = 10.0
    # After a lost connection, publish again what was acknowledged this long before the last acknowledgement:
    # for brokers that acknowledge before they store (cluster MQTT listeners); 0 turns it off.
    resend_window: Duration = Field(default=0.0, le=60.0)

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, prefix: str) -> str:
        if not prefix or prefix.startswith("/") or prefix.endswith("/") or any(c in prefix for c in "+#\0"):
            raise ValueError("topic_prefix must be a topic without wildcards (+, #) nor a leading or trailing /")
        return prefix

    @field_validator("keepalive")
    @classmethod
    def _check_keepalive(cls, seconds: float) -> float:
        if not 1 <= seconds <= 65535:
            raise ValueError("keepalive must be between 1s and 65535s (18h12m15s)")
        return seconds

    @model_validator(mode="after")
    def _check_hosts(self) -> MqttOutputConfig:
        if self.hosts is not None and "host" in self.model_fields_set:
            raise ValueError("give host or hosts, not both")
        return self

    @property
    def brokers(self) -> list[tuple[str, int]]:
        """The brokers as (host, port), in the order they are tried."""
        if not self.hosts:
            return [(self.host, self.broker_port)]
        return [(host, self.broker_port if port is None else port) for host, port in map(_split_broker, self.hosts)]

    @model_validator(mode="after")
    def _check_credentials(self) -> MqttOutputConfig:
        check_login(self.username, self.password, self.password_file)
        return self

    @property
    def broker_port(self) -> int:
        if self.port is not None:
            return self.port
        return 8883 if self.tls is not None else 1883


def topic_segment(name: str) -> str:
    """A name as one topic level: MQTT wildcards and the level separator would change the topic's meaning."""
    return name.translate(_TOPIC_SPECIALS) or "_"


def _encoder() -> json.JSONEncoder:
    # One encoder built once: json.dumps with any non-default argument builds a new one on every call.
    return json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default)


def _json_default(value: object) -> object:
    # Numbers of other types (numpy's) as floats; anything else (an event's datetime, a Path) as text.
    if isinstance(value, datetime):
        return value.isoformat()
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)


def _is_finite(value: object) -> bool:
    if isinstance(value, bool | int | str):
        return True
    try:
        return math.isfinite(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True  # not a number: the encoder's default turns it into text


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when the handshake fails: paho drops such a socket unclosed (a ResourceWarning per try)."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def _tls_context(tls: MqttTlsConfig) -> ssl.SSLContext:
    """Blocking (it reads files): run in a thread. A ca_file replaces the system CAs rather than adding to them."""
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file is not None else None)
    if tls.cert_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file is not None else None)
    if tls.insecure:
        context.check_hostname = False
    context.sslsocket_class = _ClosingSSLSocket
    return context


@dataclass(frozen=True, slots=True)
class MqttMessage:
    """One message to publish."""

    topic: str
    payload: bytes
    retain: bool = False


@dataclass(eq=False, slots=True)
class _Connection:
    """One connected aiomqtt client (they are not reusable after a failure) and the task that sees it drop."""

    client: aiomqtt.Client
    watcher: asyncio.Task[str]  # finishes, with the reason, when the connection is lost
    broker: tuple[str, int]


class MqttOutput(Output):
    """Publishes records, rig events and the gateway's retained status to one MQTT broker."""

    name = "mqtt"

    def __init__(self, config: MqttOutputConfig, *, gateway: str) -> None:
        self.config = config
        self.gateway = gateway
        self._brokers = config.brokers
        self.broker = _broker_name(*self._brokers[0])  # the one connected to, or tried last
        self._unreachable_logged: set[str] = set()  # brokers logged as unreachable while another one answered
        # The broker whose connection was lost last: tried last at the next connection, since a broker that
        # lost power or its network answers nothing (each try costs `timeout`) while its peers take over.
        self._lost: tuple[str, int] | None = None
        self.client_id = config.client_id or f"edge-daq-{gateway}"
        self._base_topic = f"{config.topic_prefix}/{topic_segment(gateway)}"
        self.status_topic = f"{self._base_topic}/{STATUS_SEGMENT}"
        self.started = datetime.now(UTC)
        self._encode = _encoder().encode
        self._connection: _Connection | None = None
        self._connect_lock = asyncio.Lock()
        self._acknowledged = 0  # messages acknowledged so far: progress, for the stall check
        self._scrub = Scrubber()  # knows the password once read: for texts from the broker and the client
        # Per series (an instrument's records share one): topic and the constant parts of the payload. The entry
        # keeps the series alive, so its id cannot be reused by another series while cached.
        self._series_cache: dict[int, tuple[Series, str, str, str]] = {}
        # resend_window: batches acknowledged on the current connection, as (monotonic time, messages), and
        # those to publish again before anything else once a connection was lost.
        self._recent: deque[tuple[float, Sequence[MqttMessage]]] = deque()
        self._recent_messages = 0
        self._resend: list[MqttMessage] = []

    @property
    def target(self) -> str:
        return self.broker

    def __repr__(self) -> str:
        return f"MqttOutput(broker={self.broker!r}, client_id={self.client_id!r}, qos={self.config.qos})"

    # --- topics and payloads --------------------------------------------------------------------------------

    def record_topic(self, tags: Mapping[str, str], measurement: str) -> str:
        rig, instrument = tags.get("rig"), tags.get("instrument")
        if rig and instrument:
            return f"{self._base_topic}/{topic_segment(rig)}/{topic_segment(instrument)}"
        return f"{self._base_topic}/{GATEWAY_SEGMENT}/{topic_segment(measurement)}"

    def events_topic(self, rig: str) -> str:
        return f"{self._base_topic}/{topic_segment(rig)}/{EVENTS_SEGMENT}"

    def status_payload(self, state: Literal["online", "offline"], **extra: str) -> bytes:
        started = self.started.isoformat(timespec="seconds")
        document = {"state": state, "gateway": self.gateway, "version": __version__, "started": started, **extra}
        return self._encode(document).encode()

    def encode_record(self, record: Record) -> tuple[str, bytes]:
        """The topic and the JSON payload of one record."""
        series = record.series
        cached = self._series_cache.get(id(series))
        if cached is None or cached[0] is not series:
            cached = self._describe(series)
        _, topic, head, middle = cached
        body = f"{head}{record.time_ns}{middle}{self._encode_fields(record.fields)}}}"
        return topic, body.encode("utf-8", "replace")  # "replace": a lone surrogate must not fail the batch

    def _describe(self, series: Series) -> tuple[Series, str, str, str]:
        if len(self._series_cache) >= _SERIES_CACHE_LIMIT:
            self._series_cache.clear()
        tags = dict(sorted(series.tags.items()))
        entry = (
            series,
            self.record_topic(series.tags, series.measurement),
            f'{{"measurement":{self._encode(series.measurement)},"time":',
            f',"tags":{self._encode(tags)},"fields":',
        )
        self._series_cache[id(series)] = entry
        return entry

    def _encode_fields(self, fields: Mapping[str, FieldValue]) -> str:
        try:
            return self._encode(fields)
        except ValueError:
            # NaN or infinity, which JSON cannot carry: left out, as in line protocol.
            return self._encode({key: value for key, value in fields.items() if _is_finite(value)})

    def messages(self, records: Sequence[Record]) -> list[MqttMessage]:
        encoded = [self.encode_record(record) for record in records]
        if not self.config.retain_last:
            return [MqttMessage(topic, payload) for topic, payload in encoded]
        # The last record of each topic is published retained instead of plainly (not twice): live subscribers
        # see no difference, and a dashboard that subscribes later gets it at once.
        last = {topic: index for index, (topic, _) in enumerate(encoded)}
        return [MqttMessage(topic, payload, last[topic] == index) for index, (topic, payload) in enumerate(encoded)]

    # --- the Output interface -------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._connected()

    async def write(self, records: Sequence[Record]) -> WriteResult:
        if not records:
            return WriteResult(written=0)
        messages = self.messages(records)
        resent = await self._publish(messages, self.config.qos)
        return WriteResult(written=len(records), resent=resent)

    async def probe(self) -> bool:
        """The reconnect itself: True once connected (the next write uses that connection), False while the
        broker cannot be reached. A broker that answers and refuses (credentials, TLS) counts as reachable."""
        try:
            await self._connected()
        except FatalSinkError:
            return True
        except SinkError:
            return False
        return True

    async def publish_event(self, rig: str, event: Mapping[str, object]) -> None:
        """Publish one rig event (a failure, an interruption, a reload) as JSON on ``.../{rig}/events``.

        Returns once acknowledged as :meth:`write` does; raises :class:`RetriableSinkError` or
        :class:`FatalSinkError` if it could not be delivered.
        """
        payload = self._encode(dict(event)).encode("utf-8", "replace")
        await self._publish([MqttMessage(self.events_topic(rig), payload)], self.config.qos)

    async def close(self) -> None:
        """Mark the gateway offline (the last will only covers an unclean end) and disconnect; never raises."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            if not connection.watcher.done():
                stopped = datetime.now(UTC).isoformat(timespec="seconds")
                payload = self.status_payload("offline", reason="stopped", stopped=stopped)
                async with asyncio.timeout(self.config.timeout):
                    await connection.client.publish(self.status_topic, payload, qos=1, retain=True)
        except (MqttError, TimeoutError) as error:
            log.warning("mqtt_offline_status_failed", broker=self.broker, error=str(error))
        await self._disconnect(connection)

    # --- connection -----------------------------------------------------------------------------------------

    async def _connected(self) -> _Connection:
        """The live connection, connecting first if there is none or it was lost since the last use."""
        async with self._connect_lock:
            connection = self._connection
            if connection is not None and connection.watcher.done():
                self._forget(connection)
                await self._disconnect(connection)
                connection = None
            if connection is None:
                connection = self._connection = await self._connect()
            return connection

    async def _connect(self) -> _Connection:
        """Connect to the first broker that accepts, in the configured order (the first is preferred), except
        that the broker whose connection was just lost is tried last."""
        failure: RetriableSinkError | None = None
        order = self._brokers
        if self._lost is not None and len(order) > 1:
            order = [broker for broker in order if broker != self._lost] + [self._lost]
        for host, port in order:
            self.broker = _broker_name(host, port)
            try:
                connection = await self._connect_to(host, port)
            except RetriableSinkError as error:  # unreachable or busy: the next one; refused for good: raised
                failure = error
                if len(self._brokers) > 1 and self.broker not in self._unreachable_logged:
                    self._unreachable_logged.add(self.broker)
                    log.warning("mqtt_broker_unreachable", output=self.name, broker=self.broker, error=str(error))
                continue
            self._unreachable_logged.discard(self.broker)
            self._lost = None
            return connection
        assert failure is not None
        raise failure

    async def _connect_to(self, host: str, port: int) -> _Connection:
        config = self.config
        password = await read_secret(config.password, config.password_file, what="password_file")
        self._scrub.add(password)
        tls_context = None
        if config.tls is not None:
            try:
                tls_context = await asyncio.to_thread(_tls_context, config.tls)
            except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
                raise FatalSinkError(f"cannot load the MQTT TLS files: {error}") from error
        v5 = config.protocol == "5"
        _paho_log.setLevel(logging.DEBUG if logging.getLogger().isEnabledFor(logging.DEBUG) else logging.CRITICAL)
        client = aiomqtt.Client(
            host,
            port,
            username=config.username,
            password=password,
            identifier=self.client_id,
            protocol=ProtocolVersion.V5 if v5 else ProtocolVersion.V311,
            will=Will(self.status_topic, self.status_payload("offline", reason="connection lost"), qos=1, retain=True),
            # Nothing is subscribed and an unacknowledged batch is resent whole: no session state to keep.
            # (MQTT 5 has clean_start instead, and aiomqtt's default starts clean with a new client.)
            clean_session=None if v5 else True,
            timeout=config.timeout,
            keepalive=max(1, round(config.keepalive)),
            max_inflight_messages=config.max_inflight,
            max_concurrent_outgoing_calls=config.max_inflight,
            tls_context=tls_context,
            logger=_paho_log,
        )
        # aiomqtt warns on every publish once more than this many are pending; a full window is what we want.
        client.pending_calls_threshold = config.max_inflight + 1
        try:
            # Entered here and exited in _disconnect: the connection outlives this call.
            await client.__aenter__()
        except MqttError as error:
            raise self._connect_error(error) from error
        # Owned by the connection: cancelled and awaited in _disconnect, whichever way the connection ends.
        watcher = asyncio.create_task(_watch(client), name=f"mqtt watch {self.broker}")
        connection = _Connection(client, watcher, (host, port))
        try:
            await client.publish(self.status_topic, self.status_payload("online"), qos=1, retain=True)
        except BaseException as error:  # cancelled too: the connection is not stored yet, so close it here
            await self._disconnect(connection)
            if isinstance(error, MqttError):
                message = f"MQTT broker at {self.broker}: could not publish the status: {self._scrub(str(error))}"
                raise RetriableSinkError(message) from error
            raise
        log.info("mqtt_connected", broker=self.broker, client_id=self.client_id, protocol=config.protocol)
        return connection

    def _connect_error(self, error: MqttError) -> SinkError:
        broker = self.broker
        if isinstance(error, MqttConnectError):
            code = error.rc.value if isinstance(error.rc, ReasonCode) else error.rc
            reason = self._scrub(str(error.rc) if isinstance(error.rc, ReasonCode) else str(error))
            if code in _CREDENTIALS_REFUSED:
                who = f"user {self.config.username!r}" if self.config.username else "anonymous clients"
                return FatalSinkError(f"MQTT broker at {broker} refused the credentials of {who}: {reason}")
            if code in _BROKER_BUSY:
                return RetriableSinkError(f"MQTT broker at {broker} refused the connection for now: {reason}")
            return FatalSinkError(f"MQTT broker at {broker} refused the connection: {reason}")
        # aiomqtt re-raises socket errors as a plain MqttError (from None); the original is the context.
        cause = error.__context__
        if isinstance(cause, ssl.SSLError):
            detail = getattr(cause, "verify_message", None) or cause.reason or str(cause)
            return FatalSinkError(f"TLS handshake failed: {detail} (MQTT broker at {broker})")
        if isinstance(cause, TimeoutError) and self.config.tls is None and str(error) == "Operation timed out":
            # Connected, but no CONNACK: typically a TLS listener waiting for a handshake that never comes.
            return RetriableSinkError(
                f"MQTT broker at {broker} did not answer the connection within {self.config.timeout:g} s"
                " (if this port expects TLS, configure tls)"
            )
        return RetriableSinkError(f"MQTT broker at {broker} is unreachable: {self._scrub(str(error))}")

    async def _disconnect(self, connection: _Connection) -> None:
        connection.watcher.cancel()
        await asyncio.wait([connection.watcher])  # unlike `await`, never raises the task's CancelledError
        try:
            await connection.client.__aexit__(None, None, None)
        except MqttError as error:  # a timeout waiting for the broker to close: the socket goes anyway
            log.debug("mqtt_disconnect_failed", broker=self.broker, error=str(error))

    async def _drop(self, connection: _Connection) -> None:
        """Forget a failed connection (once, whoever noticed first): the next publish reconnects."""
        if self._connection is connection:
            self._forget(connection)
            await self._disconnect(connection)

    def _forget(self, connection: _Connection) -> None:
        """The connection is lost: its broker is tried last, and what it acknowledged last is to be resent."""
        self._connection, self._lost = None, connection.broker
        recent, self._recent, self._recent_messages = self._recent, deque(), 0
        if recent:
            since = recent[-1][0] - self.config.resend_window
            again = [message for acknowledged, batch in recent if acknowledged >= since for message in batch]
            self._resend.extend(again)

    # --- publishing -----------------------------------------------------------------------------------------

    async def _publish(self, messages: Sequence[MqttMessage], qos: int) -> int:
        """Publish concurrently, up to max_inflight at once, and return when all are acknowledged; the number
        of messages resent first (``resend_window``)."""
        connection = await self._connected()
        # Taken, so that an event published meanwhile does not send them too; given back if this fails.
        resend, self._resend = self._resend, []
        if resend:
            messages = [*resend, *messages]
        try:
            await self._publish_on(connection, messages, qos)
        except BaseException:
            self._resend[:0] = resend
            raise
        if resend:
            log.info("mqtt_resent", broker=self.broker, messages=len(resend), window=self.config.resend_window)
        self._remember(messages)
        return len(resend)

    def _remember(self, messages: Sequence[MqttMessage]) -> None:
        """Keep what was just acknowledged for resend_window, and forget what has left it."""
        window = self.config.resend_window
        if window <= 0:
            return
        now = time.monotonic()
        recent = self._recent
        recent.append((now, messages))
        self._recent_messages += len(messages)
        while recent and (recent[0][0] < now - window or self._recent_messages > RESEND_LIMIT):
            self._recent_messages -= len(recent.popleft()[1])

    async def _publish_on(self, connection: _Connection, messages: Sequence[MqttMessage], qos: int) -> None:
        client = connection.client
        pending = iter(messages)

        async def publisher() -> None:
            # Takes the next message as soon as the previous one is acknowledged; messages leave in order,
            # since each publish() hands its message to the client before its first await.
            for message in pending:
                try:
                    await client.publish(message.topic, message.payload, qos, message.retain, timeout=math.inf)
                except MqttError as error:
                    reason = self._scrub(str(error))
                    raise RetriableSinkError(f"could not publish to MQTT broker at {self.broker}: {reason}") from error
                self._acknowledged += 1

        try:
            async with asyncio.TaskGroup() as group:
                guard = group.create_task(self._guard(connection), name="mqtt guard")
                publishers = [
                    group.create_task(publisher(), name=f"mqtt publisher {index}")
                    for index in range(min(len(messages), self.config.max_inflight))
                ]
                await asyncio.wait(publishers)
                guard.cancel()
        except BaseExceptionGroup as errors:
            await self._drop(connection)
            sink_errors = [error for error in errors.exceptions if isinstance(error, SinkError)]
            if not sink_errors:
                raise
            raise sink_errors[0] from sink_errors[0].__cause__
        except BaseException:
            await self._drop(connection)  # cancelled mid-batch: unacknowledged messages must not linger
            raise

    async def _guard(self, connection: _Connection) -> None:
        """Fail the batch if the connection drops (pending acknowledgements would wait forever) or stalls."""
        timeout = self.config.timeout
        acknowledged = -1
        while True:
            lost, _ = await asyncio.wait([connection.watcher], timeout=timeout)
            if lost:
                reason = self._scrub(connection.watcher.result())
                raise RetriableSinkError(f"lost the connection to MQTT broker at {self.broker}: {reason}")
            if self._acknowledged == acknowledged:
                raise RetriableSinkError(f"MQTT broker at {self.broker} acknowledged nothing for {timeout:g} s")
            acknowledged = self._acknowledged


async def _watch(client: aiomqtt.Client) -> str:
    """Wait until the client's connection ends; the reason why."""
    try:
        # Nothing is subscribed, so no message arrives: the iteration only ends when the connection does.
        async for _ in client.messages:
            pass
    except MqttError as error:
        return str(error.__cause__ or error)
    return "disconnected"


def _broker_name(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def make_output(name: str, config: MqttOutputConfig, context: OutputContext) -> MqttOutput:
    output = MqttOutput(config, gateway=context.gateway)
    output.name = name
    return output
