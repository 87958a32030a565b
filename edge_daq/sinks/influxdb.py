"""InfluxDB output: ``api: v2`` through influxdb-client's async API, ``api: v1`` through ``/write``.

Sample (gateway file)::

    outputs:
      influxdb:
        url: http://127.0.0.1:8086
        api: v2
        org: lab
        bucket: reliability
        token: ${INFLUX_TOKEN}       # or token_file: /run/credentials/edge-daq.service/influx-token
        batch_size: 5000
        flush_interval: 1s
        timeout: 10s

How a reply is classified (Telegraf's ``influxdb_v2`` table, plus the writer rules of the design notes):

======================================  =============================================================
2xx                                     written
400/422 "partial write" / ``dropped=N`` the valid points were written: count N dropped, never resend
400/422 that rejected the whole batch   bisect to isolate the bad lines; drop only those
413                                     split in halves and resend; a single line still too large is dropped
429, 502, 503, 504                      :class:`RetriableSinkError` with ``Retry-After`` (capped at 600 s)
other 5xx, connection errors, timeouts  :class:`RetriableSinkError`
401, 403, 404, other 4xx                :class:`FatalSinkError` (configuration problem: the data is kept)
======================================  =============================================================
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import structlog
from pydantic import AfterValidator, Field, SecretStr, model_validator
from yarl import URL

from edge_daq.config.units import Duration, Timeout
from edge_daq.config.values import ConfigPath
from edge_daq.errors import FatalSinkError, RetriableSinkError
from edge_daq.record import Record, encode_lines_yielding
from edge_daq.sinks.base import Output, OutputConfig, WriteResult, read_secret
from edge_daq.sinks.registry import OutputContext
from edge_daq.sinks.secrets import MAX_SCRUBBED_CHARS, Scrubber, scrub_credentials

# The HTTP clients are imported when an output opens, not with the config models (bench/startup.py: influxdb-client
# pulls in numpy, and aiohttp builds its TLS contexts at import, together over half a second of `edge-daq check`).
if TYPE_CHECKING:
    import aiohttp
    from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
    from influxdb_client.client.write_api_async import WriteApiAsync

log = structlog.get_logger("edge_daq.sinks.influxdb")

RETRY_AFTER_CAP = 600.0  # seconds; Telegraf caps Retry-After at 10 minutes too
PROBE_TIMEOUT = 2.0  # seconds for a reachability probe (GET /ping), or the write timeout if shorter
THROTTLING_STATUSES = frozenset({429, 502, 503, 504})
_DROPPED = re.compile(r"dropped=(\d+)")
_LOGGED_MESSAGE_CHARS = 500
_WRONG_PATH = "unsupported path requested"  # VictoriaMetrics' 400 for a path it does not serve


def _no_credentials_in_url(url: str) -> str:
    # The URL is shown in logs, errors and /status: credentials belong in token, username or password.
    if URL(url).user is not None:
        raise ValueError("put credentials in token, username or password, not in url")
    return url


InfluxUrl = Annotated[str, Field(pattern=r"^https?://", max_length=2048), AfterValidator(_no_credentials_in_url)]
"""A server's base URL; a path prefix is kept (VictoriaMetrics cluster: http://vminsert:8480/insert/0/influx)."""


class InfluxDBOutputConfig(OutputConfig):
    url: InfluxUrl = "http://127.0.0.1:8086"
    # Failover: the first that answers; another one after a connection-level failure, the first again later.
    urls: list[InfluxUrl] | None = Field(default=None, min_length=1, max_length=16)
    failback: Duration = Field(default=60.0, ge=1.0)  # how long on a later URL before the first is tried again
    api: Literal["v1", "v2"] = "v2"
    # v2
    org: str | None = None
    bucket: str | None = None
    token: SecretStr | None = None
    token_file: ConfigPath | None = None
    # v1
    database: str | None = None
    retention_policy: str = ""
    username: str = ""
    password: SecretStr | None = None
    password_file: ConfigPath | None = None
    create_database: bool = True
    # both
    timeout: Timeout = 10.0
    gzip: bool = True
    verify_tls: bool = True
    max_backoff: Duration = 300.0

    @property
    def targets(self) -> list[str]:
        """The URLs in the order they are tried."""
        return list(self.urls) if self.urls else [self.url]

    def for_target(self, url: str) -> InfluxDBOutputConfig:
        """These settings with one URL: what a transport to that server uses."""
        return self.model_copy(update={"url": url, "urls": None})

    @model_validator(mode="after")
    def _check_api_keys(self) -> InfluxDBOutputConfig:
        if self.urls is not None and "url" in self.model_fields_set:
            raise ValueError("give url or urls, not both")
        if self.api == "v2":
            missing = [key for key in ("org", "bucket") if getattr(self, key) is None]
            if self.token is None and self.token_file is None:
                missing.append("token (or token_file)")
            if missing:
                raise ValueError(f"api v2 needs {', '.join(missing)}")
            if self.token is not None and self.token_file is not None:
                raise ValueError("give token or token_file, not both")
        else:
            if self.database is None:
                raise ValueError("api v1 needs database")
            if self.password is not None and self.password_file is not None:
                raise ValueError("give password or password_file, not both")
        return self


@dataclass(frozen=True, slots=True)
class Rejection:
    """A non-2xx reply to one write request, whichever API produced it."""

    status: int
    body: bytes = b""
    retry_after: str | None = None  # the raw Retry-After header

    @property
    def message(self) -> str:
        """The server's error message: ``error`` (1.x, 3.x) or ``message`` (2.x) of a JSON body, else the text."""
        text = self.body.decode("utf-8", "replace").strip()
        try:
            document = json.loads(text)
        except ValueError:
            return text
        if isinstance(document, dict):
            for key in ("message", "error"):
                if isinstance(document.get(key), str):
                    return str(document[key])
        return text

    @property
    def is_partial_write(self) -> bool:
        message = self.message
        return "partial write" in message or _DROPPED.search(message) is not None

    def dropped_count(self) -> int:
        """How many points a partial write rejected, from whatever the server reports (at least one)."""
        message = self.message
        count = sum(int(found) for found in _DROPPED.findall(message))
        # 1.x reports lines it could not parse separately from dropped=N (which then says 0).
        count += message.count("unable to parse")
        if count == 0:
            # 3.x lists the rejected lines (up to 100) in "data" instead of a count.
            try:
                details = json.loads(self.body).get("data")
            except (ValueError, AttributeError):
                details = None
            if isinstance(details, list):
                count = len(details)
        return max(count, 1)

    def retry_after_seconds(self) -> float | None:
        """``Retry-After`` as seconds (it may be a number or an HTTP date), capped; None if absent or unreadable."""
        if self.retry_after is None:
            return None
        value = self.retry_after.strip()
        try:
            seconds = float(value)
        except ValueError:
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError):
                return None
        return min(max(seconds, 0.0), RETRY_AFTER_CAP)


class _Transport(ABC):
    """One write API: posts a body of line protocol, returns None on 2xx or the rejection."""

    target: str  # for messages: "bucket 'x'" or "database 'y'"
    scrub: Scrubber
    """Knows the credentials once opened: every body of a reply passes through it before it is shown."""

    def _rejection(self, status: int, body: bytes, retry_after: str | None) -> Rejection:
        # A server may echo the request's Authorization header or URL in its error body.
        shown = self.scrub(body[:MAX_SCRUBBED_CHARS].decode("utf-8", "replace")).encode()
        return Rejection(status=status, body=shown, retry_after=retry_after)

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def post(self, body: bytes) -> Rejection | None:
        """Raise :class:`RetriableSinkError` for connection errors and timeouts."""


class UnreachableError(RetriableSinkError):
    """A connection-level failure (refused, reset, DNS, timeout): with several ``urls``, the next one is tried."""


def _unreachable(config: InfluxDBOutputConfig, error: BaseException) -> UnreachableError:
    url = config.url
    if isinstance(error, TimeoutError):
        return UnreachableError(f"InfluxDB at {url} did not answer in time")
    # aiohttp's connection errors name host and port only, never the request's headers: scrubbed all the same.
    return UnreachableError(f"InfluxDB at {url} is unreachable: {scrub_credentials(str(error))}")


class _V2Transport(_Transport):
    """``/api/v2/write`` through influxdb-client's async API; its batching WriteApi is not used (we own the buffer)."""

    def __init__(self, config: InfluxDBOutputConfig) -> None:
        self._config = config
        # Both enforced by the config model.
        assert config.bucket is not None
        assert config.org is not None
        self._bucket = config.bucket
        self._org = config.org
        self.target = f"bucket {config.bucket!r} of org {config.org!r}"
        self._client: InfluxDBClientAsync | None = None
        self._write_api: WriteApiAsync | None = None
        self.scrub = Scrubber()

    async def open(self) -> None:
        await self.close()
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

        token = await read_secret(self._config.token, self._config.token_file, what="token_file")
        self.scrub.add(token)
        # The async client must be created inside the running loop; it has no retries of its own.
        self._client = InfluxDBClientAsync(
            url=self._config.url,
            token=token or "",
            org=self._org,
            timeout=int(self._config.timeout * 1000),  # milliseconds, for the whole request
            enable_gzip=self._config.gzip,  # gzips /api/v2/write bodies itself
            verify_ssl=self._config.verify_tls,
        )
        self._write_api = self._client.write_api()

    async def close(self) -> None:
        client, self._client, self._write_api = self._client, None, None
        if client is not None:
            await client.close()  # type: ignore[no-untyped-call]

    async def post(self, body: bytes) -> Rejection | None:
        import aiohttp
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        if self._write_api is None:
            await self.open()
        assert self._write_api is not None
        # influxdb-client annotates write_precision with the WritePrecision class, whose members are plain strings.
        precision = cast(WritePrecision, WritePrecision.NS)
        try:
            await self._write_api.write(bucket=self._bucket, org=self._org, record=body, write_precision=precision)
        except ApiException as error:
            if not error.status:  # the client could not even build the request
                raise FatalSinkError(f"influxdb-client refused the request: {self.scrub(str(error.reason))}") from None
            headers: Mapping[str, str] = error.headers or {}
            return self._rejection(error.status, _as_bytes(error.body), headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise _unreachable(self._config, error) from error
        return None


def _as_bytes(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    return str(body or "").encode()


class _V1Transport(_Transport):
    """``/write`` of InfluxDB 1.x with aiohttp; credentials go in basic auth, never in the URL."""

    def __init__(self, config: InfluxDBOutputConfig) -> None:
        self._config = config
        assert config.database is not None  # enforced by the config model
        self._database = config.database
        self.target = f"database {config.database!r}"
        self._base_url = config.url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._write_params = {"db": config.database, "precision": "ns"}
        self.scrub = Scrubber()
        if config.retention_policy:
            self._write_params["rp"] = config.retention_policy

    async def open(self) -> None:
        import aiohttp

        await self.close()
        password = await read_secret(self._config.password, self._config.password_file, what="password_file")
        self.scrub.add(password, username=self._config.username)
        headers = {}
        if self._config.username or password:
            headers["Authorization"] = aiohttp.encode_basic_auth(self._config.username, password or "")
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self._config.timeout),
            connector=aiohttp.TCPConnector(ssl=self._config.verify_tls),
        )
        if self._config.create_database:
            try:
                await self._create_database()
            except BaseException:
                await self.close()  # the runner retries open(): do not leak a session per attempt
                raise

    async def _create_database(self) -> None:
        import aiohttp

        assert self._session is not None
        quoted = self._database.replace("\\", "\\\\").replace('"', '\\"')
        try:
            async with self._session.post(
                f"{self._base_url}/query", data={"q": f'CREATE DATABASE "{quoted}"'}
            ) as response:
                body = self._rejection(response.status, await _read_body(response), None).body
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise _unreachable(self._config, error) from error
        if response.status == 401:
            raise FatalSinkError("InfluxDB rejected the username or password (401)")
        if response.status >= 500:
            raise RetriableSinkError(f"InfluxDB could not create {self.target} ({response.status})")
        if problem := _query_problem(response.status, body):
            # Often a user without admin rights on an existing database: the writes will tell (404 if missing).
            log.warning(
                "influxdb_create_database_failed",
                database=self._database,
                status=response.status,
                message=problem[:_LOGGED_MESSAGE_CHARS],
            )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def post(self, body: bytes) -> Rejection | None:
        import aiohttp

        if self._session is None:
            await self.open()
        assert self._session is not None
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self._config.gzip:
            # Level 1: line protocol compresses well even so. In a thread: zlib releases the GIL, so a large
            # batch does not hold up the pollers (bench/fleet.py: p99 schedule lateness).
            body = await asyncio.to_thread(gzip.compress, body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        try:
            async with self._session.post(
                f"{self._base_url}/write", params=self._write_params, data=body, headers=headers
            ) as response:
                if 200 <= response.status < 300:
                    return None
                return self._rejection(response.status, await _read_body(response), response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise _unreachable(self._config, error) from error


async def _read_body(response: aiohttp.ClientResponse) -> bytes:
    """At most MAX_SCRUBBED_CHARS bytes of a reply's body: it is only ever shown or searched for a count."""
    chunks: list[bytes] = []
    size = 0
    while size < MAX_SCRUBBED_CHARS and (chunk := await response.content.read(MAX_SCRUBBED_CHARS - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _query_problem(status: int, body: bytes) -> str | None:
    """What went wrong with a 1.x /query statement, which answers 200 even when the statement failed."""
    if status != 200:
        return f"{status} {Rejection(status=status, body=body).message}"
    try:
        results = json.loads(body).get("results", [])
    except (ValueError, AttributeError):
        return None
    for result in results:
        if isinstance(result, dict) and isinstance(result.get("error"), str):
            return str(result["error"])
    return None


@dataclass(slots=True)
class _Delivery:
    """The outcome of one write() call across all the requests it took."""

    written: int = 0
    dropped: int = 0
    rejection_messages: list[str] = field(default_factory=list)


class InfluxDBOutput(Output):
    """Writes batches to InfluxDB 1.x (``api: v1``) or to any ``/api/v2/write`` server (``api: v2``)."""

    name = "influxdb"
    # InfluxDB orders points by their timestamps, not by arrival. Two writes under way: the next batch is encoded
    # while InfluxDB ingests the previous one, instead of one waiting for the other (bench/pipeline.py).
    writes_in_flight = 2

    def __init__(self, config: InfluxDBOutputConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._targets = config.targets
        self._active = 0  # index in _targets of the URL written to
        self._since = clock()  # when _active was chosen
        self._clock = clock
        self._all_failed = False  # every URL failed at the last attempt, and none answered since
        self._transport = self._new_transport(0)

    def _new_transport(self, index: int) -> _Transport:
        config = self.config.for_target(self._targets[index]) if len(self._targets) > 1 else self.config
        return _V2Transport(config) if config.api == "v2" else _V1Transport(config)

    def __repr__(self) -> str:
        return f"InfluxDBOutput(url={self.target!r}, api={self.config.api!r}, {self._transport.target})"

    @property
    def target(self) -> str:
        """The URL written to now (for /status; URLs never carry credentials)."""
        return self._targets[self._active]

    async def _switch(self, index: int, reason: str) -> None:
        if index == self._active:
            return
        previous, self._transport = self._transport, self._new_transport(index)
        # Once every URL failed, the runner logs the outage: the switches while it lasts are not news.
        report = log.debug if self._all_failed else log.warning
        report(
            "influxdb_target_switched", output=self.name, previous=self.target, to=self._targets[index], reason=reason
        )
        self._active, self._since = index, self._clock()
        await _close_quietly(previous)

    async def _fail_back_if_due(self) -> None:
        if self._active and self._clock() - self._since >= self.config.failback:
            await self._switch(0, "failback")

    async def _on_each_target(self, attempt: Callable[[], Awaitable[None]]) -> None:
        """``attempt`` on the URL in use, then on each following one after a connection-level failure."""
        await self._fail_back_if_due()
        for tried in range(len(self._targets)):
            try:
                await attempt()
            except UnreachableError as error:
                if tried == len(self._targets) - 1:
                    self._all_failed = True
                    raise
                await self._switch((self._active + 1) % len(self._targets), str(error))
            else:
                self._all_failed = False
                return

    async def open(self) -> None:
        await self._on_each_target(lambda: self._transport.open())

    async def close(self) -> None:
        await _close_quietly(self._transport)

    async def probe(self) -> bool:
        """Whether the server answers ``GET /ping`` (1.x, 2.x, 3.x and VictoriaMetrics have it) in time.

        Any reply below 500 counts, 401 and 404 included: the server is up (a proxy answers 502 or 503 while the
        server behind it is down). No credentials are sent. A connection of its own, closed afterwards, so that
        a server restarted on the same port is seen as it is now, not through a kept-alive connection.
        """
        ordered = self._targets[self._active :] + self._targets[: self._active]
        for url in ordered:  # with several urls, any one answering will do: the write moves to it
            if await self._ping(url):
                return True
        return False

    async def _ping(self, url: str) -> bool:
        import aiohttp

        config = self.config
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=min(config.timeout, PROBE_TIMEOUT)),
                    connector=aiohttp.TCPConnector(ssl=config.verify_tls, force_close=True),
                ) as session,
                session.get(f"{url.rstrip('/')}/ping", allow_redirects=False) as response,
            ):
                return response.status < 500
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def write(self, records: Sequence[Record]) -> WriteResult:
        # A batch of thousands of records takes tens of milliseconds to encode: in slices, between polls.
        lines = await encode_lines_yielding(records)
        delivery = _Delivery()

        async def attempt() -> None:
            nonlocal delivery
            # Counted afresh on each URL tried: what a failed one took before failing is written again.
            delivery = _Delivery(dropped=len(records) - len(lines))  # records with no writable field
            await self._deliver(lines, delivery)

        await self._on_each_target(attempt)
        if delivery.rejection_messages:
            # Once per batch, however many requests it took to isolate the rejected points.
            log.warning(
                "influxdb_points_rejected",
                target=self._transport.target,
                dropped=delivery.dropped,
                message=delivery.rejection_messages[0][:_LOGGED_MESSAGE_CHARS],
                distinct_messages=len(set(delivery.rejection_messages)),
            )
        return WriteResult(written=delivery.written, dropped=delivery.dropped)

    async def _deliver(self, lines: list[bytes], delivery: _Delivery) -> None:
        if not lines:
            return
        rejection = await self._transport.post(b"".join(lines))
        if rejection is None:
            delivery.written += len(lines)
            return
        status = rejection.status
        if status == 400 and _WRONG_PATH in rejection.message:
            # VictoriaMetrics answers 400 to a path it does not serve (a wrong prefix in url): no point is bad,
            # so bisecting would drop them all. A configuration problem: keep the data.
            raise FatalSinkError(f"{self.target} does not serve this write path (400): {rejection.message[:200]}")
        if status in (400, 422) and rejection.is_partial_write:
            # The valid points are stored: resending would only be rejected again.
            dropped = min(rejection.dropped_count(), len(lines))
            delivery.written += len(lines) - dropped
            delivery.dropped += dropped
            delivery.rejection_messages.append(rejection.message)
        elif status in (400, 413, 422):
            if len(lines) == 1:
                delivery.dropped += 1
                delivery.rejection_messages.append(f"{status} {rejection.message}")
                return
            # 413: too large, so halve. 400/422: something in the batch is bad, so halve to find it;
            # each level halves the batch, so at most log2(n) levels of requests per bad line.
            middle = len(lines) // 2
            await self._deliver(lines[:middle], delivery)
            await self._deliver(lines[middle:], delivery)
        else:
            raise self._error_for(rejection)

    def _error_for(self, rejection: Rejection) -> RetriableSinkError | FatalSinkError:
        status = rejection.status
        target = self._transport.target
        if status in THROTTLING_STATUSES:
            return RetriableSinkError(
                f"InfluxDB is throttling or unavailable ({status})", retry_after=rejection.retry_after_seconds()
            )
        if status >= 500:
            return RetriableSinkError(f"InfluxDB failed to write ({status}): {rejection.message[:200]}")
        if status == 401:
            what = "token" if self.config.api == "v2" else "username or password"
            return FatalSinkError(f"InfluxDB rejected the {what} (401)")
        if status == 403:
            return FatalSinkError(f"InfluxDB refused to write to {target}: permission denied (403)")
        if status == 404:
            return FatalSinkError(f"{target} not found (404): {rejection.message[:200]}")
        # 405, 406, ...: most likely a wrong URL or API; keep the data until the configuration is fixed.
        return FatalSinkError(f"InfluxDB answered {status} to a write: {rejection.message[:200]}")


async def _close_quietly(transport: _Transport) -> None:
    try:
        await transport.close()
    except Exception as error:  # close() never raises: it runs while shutting down or switching
        log.warning("influxdb_close_failed", error=repr(error))


def make_output(name: str, config: InfluxDBOutputConfig, context: OutputContext) -> InfluxDBOutput:
    output = InfluxDBOutput(config)
    output.name = name
    return output
