"""Regular expressions of SCPI points, matched in linear time.

Python's ``re`` backtracks: the README's own example ``(?P<pv>[^,]+),(?P<sp>[^,]+)`` takes time quadratic in
the length of a reply without a comma (13 s for 40 KB), and it would run on the event loop. RE2
(``google-re2``) matches in time linear in the reply for every pattern it accepts, so those run inline on a
reply already bounded by ``max_reply_bytes`` (well under a millisecond for 64 KiB).

RE2 refuses what needs backtracking (backreferences, lookarounds). Such a pattern still loads, as it did
before, and runs with Python's ``re`` in a worker process with a time limit: a pattern that takes too long
costs the worker (killed and started again on the next match) and that poll's fields, never the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import re
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Protocol

import re2  # type: ignore[import-untyped]

from edge_daq.errors import DriverProtocolError

Groups = dict[str, str | None]
INLINE_MATCH_LIMIT = 256 * 1024
"""Replies up to this many characters are matched on the event loop (under a millisecond with RE2)."""


class _CompiledRe2(Protocol):
    groupindex: dict[str, int]

    def search(self, text: str) -> _Re2Match | None: ...


class _Re2Match(Protocol):
    def groupdict(self) -> Groups: ...


def _re2_options() -> object:
    options = re2.Options()
    options.log_errors = False  # RE2 would print a refused pattern to stderr, outside our logs
    return options


_OPTIONS = _re2_options()


def _compile_re2(pattern: str) -> _CompiledRe2 | None:
    try:
        compiled: _CompiledRe2 = re2.compile(pattern, _OPTIONS)
    except re2.error:
        return None
    return compiled


@dataclass(frozen=True, slots=True)
class ReplyPattern:
    """A point's ``regex``: RE2 when it accepts the pattern, else Python ``re`` in the worker process."""

    pattern: str
    group_names: tuple[str, ...]
    _re2: _CompiledRe2 | None

    @classmethod
    def compile(cls, pattern: str) -> ReplyPattern:
        """Raises ``re.error`` if Python's ``re`` cannot compile it either (the load-time check)."""
        python = re.compile(pattern)
        return cls(pattern, tuple(python.groupindex), _compile_re2(pattern))

    @property
    def linear(self) -> bool:
        return self._re2 is not None

    async def search(self, text: str, *, within: float) -> Groups | None:
        """The named groups of the first match in ``text``, or None; DriverProtocolError past ``within`` s."""
        if self._re2 is not None:
            # Linear, but a reply of many megabytes (max_reply_bytes allows 16 MiB) still costs tens of ms: such
            # replies go to a thread (RE2's binding releases the GIL while it matches).
            if len(text) > INLINE_MATCH_LIMIT:
                match = await asyncio.to_thread(self._re2.search, text)
            else:
                match = self._re2.search(text)
            return None if match is None else match.groupdict()
        return await _WORKER.search(self.pattern, text, within=within)


def _serve(connection: multiprocessing.connection.Connection) -> None:
    """The worker's loop: (pattern, text) in, the named groups of the first match (or None) out."""
    compiled: dict[str, re.Pattern[str]] = {}
    while True:
        try:
            pattern, text = connection.recv()
        except EOFError:
            return
        regex = compiled.get(pattern)
        if regex is None:
            regex = compiled[pattern] = re.compile(pattern)
        match = regex.search(text)
        connection.send(None if match is None else match.groupdict())


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _PythonRegexWorker:
    """One child process, started on first use, that runs the patterns RE2 refuses."""

    def __init__(self) -> None:
        self._process: BaseProcess | None = None
        self._connection: multiprocessing.connection.Connection | None = None
        self._lock: asyncio.Lock | None = None

    def _start(self) -> multiprocessing.connection.Connection:
        if self._connection is not None and self._process is not None and self._process.is_alive():
            return self._connection
        self._stop()
        # spawn, not fork: the daemon has threads (executors), and a forked child would inherit their locks.
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(target=_serve, args=(child,), name="edge-daq-regex", daemon=True)
        process.start()
        child.close()
        self._process, self._connection = process, parent
        return parent

    def _stop(self) -> None:
        process, self._process = self._process, None
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
        if process is not None:
            process.kill()
            process.join(1.0)
            with contextlib.suppress(ValueError):
                process.close()

    async def search(self, pattern: str, text: str, *, within: float) -> Groups | None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            connection = self._start()
            loop = asyncio.get_running_loop()
            ready: asyncio.Future[None] = loop.create_future()
            fd = connection.fileno()
            loop.add_reader(fd, _set_once, ready)
            try:
                connection.send((pattern, text))
                async with asyncio.timeout(within):
                    await ready
                groups: Groups | None = connection.recv()
            except TimeoutError:
                loop.remove_reader(fd)
                self._stop()
                raise DriverProtocolError(
                    f"regex {pattern[:40]!r} took over {within:g} s on a reply of {len(text)} characters "
                    "(Python re backtracking; write it without backreferences or lookarounds for RE2)"
                ) from None
            except (OSError, EOFError) as exc:
                loop.remove_reader(fd)
                self._stop()
                raise DriverProtocolError(f"the regex worker process failed: {exc}") from exc
            loop.remove_reader(fd)
            return groups


_WORKER = _PythonRegexWorker()
