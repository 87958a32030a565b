"""The ``visa`` driver: SCPI points (as ``scpi-tcp``) through pyvisa, addressed by a VISA resource string.

pyvisa is blocking, so every VISA call runs in the link's own worker thread (one thread per link): a slow or
hung instrument never blocks the event loop or another link. A link is one resource (LAN, USB-TMC, a socket),
or one GPIB board with every instrument addressed on it: a GPIB bus carries one transaction at a time, so its
instruments share one link and one bus scheduler, as RS-485 slaves do.

Each call is bounded twice: by pyvisa's own timeout (the instrument's ``timeout``) in the thread, and on the
loop by that timeout plus :data:`WEDGED_GRACE`. A call still running past both (a driver wedged in the kernel)
abandons the worker: the link reports itself down, the scheduler reopens it (with backoff) on a fresh thread,
and the wedged thread's resources are closed once it returns.

Replies are read with a bound (``max_reply_bytes`` and the termination) and parsed by the SCPI driver's
reader (``ScpiReader``): the same points, identity check, init and error-queue drain. After a timeout the
resource gets a device clear (viClear), or a raw socket a new connection, so that a late reply is not taken
for the next query's.

pyvisa shares one ResourceManager per VISA library among every caller, so links never close it; they close
only the resources they opened.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from edge_daq.drivers.base import DriverPlugin, Instrument, Link, PollResult
from edge_daq.drivers.scpi.config import VisaConfig
from edge_daq.drivers.scpi.driver import ScpiReader
from edge_daq.drivers.scpi.transaction import TransactionLock
from edge_daq.errors import DriverConnectionError, DriverError, DriverProtocolError, DriverTimeoutError
from edge_daq.stats import LinkStats

WEDGED_GRACE = 2.0
"""Seconds past pyvisa's own timeout after which a call is taken for wedged and its worker abandoned."""

_T = TypeVar("_T")
_managers: dict[str, Any] = {}
_managers_lock = threading.Lock()  # links' worker threads create a library's manager once


def resource_manager(library: str) -> Any:
    """pyvisa's ResourceManager of ``library`` (``@py``, ``@ivi``, a path, ``def.yaml@sim``); blocking."""
    import pyvisa

    with _managers_lock:
        manager = _managers.get(library)
        if manager is not None:
            # pyvisa keeps one manager per library for the whole process: other code that closed it (a script,
            # a plugin, pyvisa's own shell) left ours closed too. Then every open fails "Invalid session handle".
            try:
                manager.session  # noqa: B018 - raises InvalidSession once closed
            except pyvisa.errors.InvalidSession:
                manager = None
        if manager is None:
            try:
                manager = _managers[library] = pyvisa.ResourceManager(library)
            except (OSError, ValueError, pyvisa.errors.Error) as exc:
                raise DriverConnectionError(f"cannot load the VISA library {library!r}: {exc}") from exc
        return manager


def list_resources(library: str = "@py") -> tuple[str, ...]:
    """The resources the library finds (pyvisa-py: USB-TMC, GPIB boards, serial ports, VXI-11 on the LAN)."""
    resources: tuple[str, ...] = resource_manager(library).list_resources("?*")
    return resources


class _Session:
    """One open pyvisa resource; used only in its link's worker thread."""

    def __init__(self, config: VisaConfig, generation: int = 0) -> None:
        self.config = config
        self.resource: Any = None
        self.generation = generation
        """Counts opens, across the sessions that replace an abandoned one: each open runs identity and init."""
        self.term = config.read_termination.encode("ascii")
        self.can_flush = True
        self.socket = config.resource.upper().endswith("::SOCKET")

    def open(self) -> None:
        import pyvisa
        from pyvisa import constants

        config = self.config
        manager = resource_manager(config.visa_library)
        try:
            # No lock around it: a resource slow to open (a VXI-11 host that does not answer) must not hold up
            # another link's open; the library's session table takes concurrent opens.
            resource = manager.open_resource(config.resource, open_timeout=int(config.timeout * 1000))
            resource.timeout = config.timeout * 1000.0
            resource.read_termination = config.read_termination
            resource.write_termination = ""  # written by us with the command, in one write
            if self.socket:
                # A raw socket has no END: a reply is complete only at the termination, however it is split.
                with contextlib.suppress(pyvisa.errors.Error, AttributeError, NotImplementedError):
                    resource.set_visa_attribute(constants.ResourceAttribute.suppress_end_enabled, True)
        except pyvisa.errors.VisaIOError as exc:
            raise DriverConnectionError(f"visa://{config.resource}: cannot open: {exc.description}") from exc
        except (pyvisa.errors.Error, OSError, ValueError, TypeError) as exc:
            raise DriverConnectionError(f"visa://{config.resource}: cannot open: {exc}") from exc
        self.resource = resource
        self.generation += 1

    def close(self) -> None:
        resource, self.resource = self.resource, None
        if resource is not None:
            with contextlib.suppress(Exception):  # closing must never raise: the peer may be gone
                resource.close()

    def _failed(self, exc: Exception, command: str) -> DriverError:
        """A pyvisa error as ours; the resource is closed unless the instrument only timed out."""
        import pyvisa

        where = f"visa://{self.config.resource}"
        if isinstance(exc, pyvisa.errors.VisaIOError) and exc.error_code == pyvisa.constants.StatusCode.error_timeout:
            # A late reply must not be taken for the next query's. A message-based instrument (VXI-11, HiSLIP,
            # USB-TMC, GPIB) gets a device clear; a raw socket is reconnected instead: pyvisa-py's clear() of a
            # socket reads until the line is quiet and never returns once the peer has closed it (a socket whose
            # peer is gone also reads as a timeout there, not as a lost connection).
            if self.socket:
                self.close()
            else:
                with contextlib.suppress(Exception):
                    self.resource.clear()
            return DriverTimeoutError(f"{where}: no reply to {command!r} within {self.config.timeout:g} s")
        self.close()
        detail = exc.description if isinstance(exc, pyvisa.errors.VisaIOError) else str(exc) or type(exc).__name__
        return DriverConnectionError(f"{where}: {command!r} failed: {detail}")

    def _check_open(self) -> Any:
        if self.resource is None:
            raise DriverConnectionError(f"visa://{self.config.resource} is closed (after an error)")
        return self.resource

    def write(self, command: str, termination: str) -> None:
        self._check_open()
        try:
            self.resource.write_raw((command + termination).encode("ascii", "replace"))
        except Exception as exc:  # pyvisa and its backends raise from many trees (OSError, VisaIOError, ...)
            raise self._failed(exc, command) from exc

    def query(self, command: str, termination: str, max_reply_bytes: int) -> str:
        resource = self._check_open()
        limit = max_reply_bytes + len(self.term)
        try:
            if self.can_flush:
                try:
                    resource.flush(_discard_read_buffer_no_io())  # what a backend still buffers from before
                except Exception:  # a backend without viFlush (pyvisa-sim): nothing of its own to drop
                    self.can_flush = False
            resource.write_raw((command + termination).encode("ascii", "replace"))
            reply = self._read(resource, limit)
        except Exception as exc:
            raise self._failed(exc, command) from exc
        if reply.endswith(self.term):
            reply = reply[: -len(self.term)]
        elif len(reply) >= limit:
            # The rest of that reply is still coming: only a fresh session is back in step.
            self.close()
            raise DriverProtocolError(
                f"visa://{self.config.resource}: reply to {command!r} is longer than max_reply_bytes "
                f"({max_reply_bytes}) without {self.config.read_termination!r}; reconnecting"
            )
        if len(reply) > max_reply_bytes:
            raise DriverProtocolError(
                f"visa://{self.config.resource}: reply to {command!r} is {len(reply)} bytes, "
                f"over max_reply_bytes ({max_reply_bytes})"
            )
        return reply.decode("ascii", "replace").strip()

    def _read(self, resource: Any, limit: int) -> bytes:
        """One reply: up to the termination (or the message's END), ``limit`` bytes or the timeout.

        pyvisa's ``read_bytes`` loops until it has its count or a success status, and a backend that returns
        an error status without raising (pyvisa-sim on an address with no device) keeps it spinning a core for
        ever; here an error status raises and the whole read has a deadline.
        """
        import pyvisa
        from pyvisa import constants

        codes = constants.StatusCode
        done = (codes.success, codes.success_termination_character_read)
        deadline = time.monotonic() + self.config.timeout
        visalib, session = resource.visalib, resource.session
        reply = bytearray()
        with resource.ignore_warning(codes.success_device_not_present, codes.success_max_count_read):
            while len(reply) < limit:
                chunk, status = visalib.read(session, min(resource.chunk_size, limit - len(reply)))
                reply += chunk
                if status < 0:
                    raise pyvisa.errors.VisaIOError(status)
                if status in done:
                    break
                if time.monotonic() > deadline:
                    raise pyvisa.errors.VisaIOError(codes.error_timeout)
        return bytes(reply)


def _discard_read_buffer_no_io() -> Any:
    from pyvisa import constants

    return constants.BufferOperation.discard_read_buffer_no_io


def _set_result(future: asyncio.Future[_T], result: _T) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class _Worker:
    """One daemon thread running blocking calls in order: a call wedged for ever cannot hold up the exit."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.busy_since: float | None = None
        """Monotonic time the running call started, None when idle."""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (call := self._calls.get()) is not None:
            self.busy_since = time.monotonic()
            call()
            self.busy_since = None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def call(self, loop: asyncio.AbstractEventLoop, function: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """Run ``function(*args)`` in the thread; its result on an asyncio future of ``loop``.

        One hop each way and nothing more (half the cost of wrapping a concurrent future: bench/visa_overhead.py).
        A future cancelled meanwhile (a timeout) is left alone when the call returns.
        """
        future: asyncio.Future[_T] = loop.create_future()

        def call() -> None:
            try:
                result = function(*args)
            except BaseException as exc:  # handed to the awaiting task, which maps it
                loop.call_soon_threadsafe(_set_exception, future, exc)
            else:
                loop.call_soon_threadsafe(_set_result, future, result)

        self._calls.put(call)
        return future

    def submit(self, function: Callable[..., _T], *args: Any) -> concurrent.futures.Future[_T]:
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def call() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(function(*args))
            except BaseException as exc:  # handed to the awaiting task, which maps it
                future.set_exception(exc)

        self._calls.put(call)
        return future

    def stop(self) -> None:
        """End the thread after the calls already submitted (at once, if it is idle)."""
        self._calls.put(None)


class VisaLink(Link):
    """One VISA resource, or one GPIB board and its instruments, with its own worker thread."""

    def __init__(self, configs: Sequence[VisaConfig], describe: str) -> None:
        self._describe = describe
        self._sessions = {config.resource: _Session(config) for config in configs}
        self._worker: _Worker | None = None
        self._wedged: _Worker | None = None
        self.transactions = TransactionLock()  # a write and its check go to the instruments with nothing between
        """A worker abandoned in a call that never returned: no second one is started while it is stuck."""
        self.stats = LinkStats(link=describe)

    @property
    def describe(self) -> str:
        return self._describe

    @property
    def is_open(self) -> bool:
        return self._worker is not None

    async def _call(self, function: Callable[..., _T], *args: Any, within: float) -> _T:
        async with self.transactions.hold():
            return await self._call_held(function, *args, within=within)

    async def _call_held(self, function: Callable[..., _T], *args: Any, within: float) -> _T:
        worker = self._worker
        if worker is None:
            raise DriverConnectionError(f"{self.describe} is not open")
        future = worker.call(asyncio.get_running_loop(), function, *args)
        try:
            async with asyncio.timeout(within + WEDGED_GRACE):
                return await future
        except TimeoutError:
            self._abandon(worker)
            raise DriverTimeoutError(
                f"{self.describe}: the VISA library did not return within {within + WEDGED_GRACE:g} s; "
                "its worker is abandoned and the link reopens"
            ) from None

    def _abandon(self, worker: _Worker) -> None:
        """Leave a wedged worker behind: its sessions close when (if) its call returns."""
        if self._worker is worker:
            self._worker = None
        self._wedged = worker
        self.stats.reconnects += 1
        sessions = list(self._sessions.values())
        self._sessions = {s.config.resource: _Session(s.config, s.generation) for s in sessions}
        for session in sessions:
            worker.submit(session.close)
        worker.stop()

    async def open(self) -> None:
        await self.close()
        wedged = self._wedged
        if wedged is not None and wedged.alive:
            # One stuck thread per link at most: until it returns, the link stays down (with backoff).
            since = time.monotonic() - (wedged.busy_since or time.monotonic())
            raise DriverConnectionError(
                f"{self.describe}: the VISA library is still stuck in a call made {since:.0f} s ago"
            )
        self._wedged = None
        self._worker = _Worker(f"edge-daq-visa {self.describe}")
        sessions = list(self._sessions.values())
        errors: list[DriverError] = []
        for session in sessions:
            try:
                await self._call(session.open, within=session.config.timeout)
            except DriverError as exc:
                errors.append(exc)
        # A GPIB board with one instrument switched off still serves the others; that one retries at its polls.
        if len(errors) == len(sessions):
            await self.close()
            raise errors[0]

    async def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        closed = [asyncio.wrap_future(worker.submit(session.close)) for session in self._sessions.values()]
        worker.stop()
        # Closing waits for the resources to close, but never longer than a call may take.
        await asyncio.wait(closed, timeout=max(s.config.timeout for s in self._sessions.values()) + WEDGED_GRACE)

    def session(self, resource: str) -> VisaResource:
        return VisaResource(self, self._sessions[resource].config)

    def _session(self, resource: str) -> _Session:
        return self._sessions[resource]


class VisaResource:
    """One resource of a :class:`VisaLink` as a :class:`~edge_daq.drivers.scpi.driver.ScpiTransport`."""

    def __init__(self, link: VisaLink, config: VisaConfig) -> None:
        self.link = link
        self.config = config

    @property
    def describe(self) -> str:
        return f"visa://{self.config.resource}"

    @property
    def is_open(self) -> bool:
        return self.link.is_open and self.link._session(self.config.resource).resource is not None

    @property
    def generation(self) -> int:
        return self.link._session(self.config.resource).generation

    def transaction(self) -> AbstractAsyncContextManager[None]:
        return self.link.transactions.hold()

    async def write(self, command: str, *, termination: str) -> None:
        session = self.link._session(self.config.resource)
        await self.link._call(session.write, command, termination, within=self.config.timeout)

    async def query(
        self, command: str, *, write_termination: str, read_termination: str, within: float, max_reply_bytes: int
    ) -> str:
        session = self.link._session(self.config.resource)
        # pyvisa's timeout bounds each read; a reply trickling in slower than that is bounded here.
        return await self.link._call(session.query, command, write_termination, max_reply_bytes, within=within)


class VisaInstrument(Instrument[VisaConfig, VisaLink]):
    def __init__(self, config: VisaConfig) -> None:
        super().__init__(config)
        self.reader = ScpiReader(config)

    async def poll(self, link: VisaLink) -> PollResult:
        session = link._session(self.config.resource)
        if session.resource is None:
            # Closed after an error (or never opened on a GPIB board): reopen first, so that the reader sees a
            # new generation and runs the identity check and init again.
            await link._call(session.open, within=self.config.timeout)
        return await self.reader.read(link.session(self.config.resource))


class VisaPlugin(DriverPlugin[VisaConfig, VisaLink]):
    def link_key(self, config: VisaConfig) -> str:
        board = config.gpib_board
        where = f"GPIB{board}" if board is not None else config.resource.upper()
        return f"visa:{config.visa_library}:{where}"

    def open_link(self, configs: Sequence[VisaConfig]) -> VisaLink:
        board = configs[0].gpib_board
        describe = f"visa://GPIB{board}" if board is not None else f"visa://{configs[0].resource}"
        return VisaLink(configs, describe)

    def make_instrument(self, config: VisaConfig) -> VisaInstrument:
        return VisaInstrument(config)


PLUGIN = VisaPlugin()
