"""sd_notify without libsystemd: READY, STATUS, WATCHDOG, RELOADING, STOPPING over the $NOTIFY_SOCKET datagram socket.

The protocol is a datagram of ``KEY=value`` lines sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET``
(a path, or ``@name`` for the abstract namespace). Outside systemd the variable is unset and every call is a
no-op, so the daemon runs the same way in a terminal.

The watchdog is fed from the event loop, never from a thread: a blocked loop stops the pings and systemd
restarts the daemon. It is also withheld when acquisition stalls (see :class:`AcquisitionProgress`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Self

import structlog

from edge_daq.scheduling import LinkScheduler
from edge_daq.stats import PipelineStats

log = structlog.get_logger("edge_daq.service")

STATUS_INTERVAL = 15.0
"""Seconds between STATUS= updates when systemd has no watchdog configured for the unit."""

STALL_AFTER = 120.0
"""Seconds a link may lag behind its schedule before the watchdog is withheld.

Generous on purpose: a poll may legitimately take several timeouts in a row, and a restart loses what is
only in memory. The point is to catch a task that waits forever, not a slow bus.
"""


class Notifier:
    """Sends sd_notify messages; every method returns whether the message was sent.

    A send failure is logged once (until a send succeeds again) and never raised: losing a status update
    must not stop acquisition.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = _watchdog_usec(env)
        self._socket: socket.socket | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        """Whether a notification socket is configured (the process runs under systemd with Type=notify)."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half of WatchdogSec, as sd_watchdog_enabled(3) advises.

        None when systemd expects no pings, or when they are meant for another process (WATCHDOG_PID).
        """
        if self._address is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2e6

    def send(self, *lines: str) -> bool:
        if self._address is None:
            return False
        data = "\n".join(lines).encode()
        try:
            if self._socket is None:
                # Non-blocking: if systemd's queue is full, drop the message rather than stall the event loop.
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            # sendto, not connect: the address is resolved at every send, so a socket systemd re-created
            # (daemon-reexec) is found again.
            self._socket.sendto(data, self._address)
        except OSError as error:
            if not self._failing:
                log.warning("sd_notify_failed", socket=os.fsdecode(self._address), error=str(error))
                self._failing = True
            return False
        self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.send(*_status(text))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self, status: str | None = None) -> bool:
        """Announce a reload; send :meth:`ready` once it is done, whether it was applied or rejected."""
        # MONOTONIC_USEC lets systemd (Type=notify-reload, systemd >= 253) match the reload to the request.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *_status(status))

    def extend_timeout(self, usec: int) -> bool:
        """Ask for ``usec`` more microseconds in the current start, reload or stop operation."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(usec)}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _socket_address(value: str) -> bytes | None:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return os.fsencode(value)
    if value:
        # systemd >= 253 may also pass vsock: addresses (to VMs); a gateway never needs them.
        log.warning("sd_notify_unsupported_socket", socket=value)
    return None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    # WATCHDOG_PID names the process systemd watches; a child that inherited the environment must not ping.
    if pid and pid != str(os.getpid()):
        return None
    return usec if usec > 0 else None


def _status(text: str | None) -> tuple[str, ...]:
    # One message per line: a newline inside the text would start a bogus assignment.
    return () if text is None else ("STATUS=" + " ".join(text.splitlines()),)


async def watchdog_loop(
    notifier: Notifier,
    progress: Callable[[], bool],
    *,
    status: Callable[[], str] | None = None,
    status_interval: float = STATUS_INTERVAL,
) -> None:
    """Feed the watchdog at half its interval while ``progress()`` is true, with a fresh STATUS= line.

    Runs until cancelled; returns at once when there is nothing to send (not under systemd). The first
    ping goes out immediately, so a slow start-up does not eat into the first interval.
    """
    ping = notifier.watchdog_interval()
    if not notifier.enabled or (ping is None and status is None):
        return
    period = ping if ping is not None else status_interval
    withheld = False
    while True:
        lines: list[str] = []
        if ping is not None:
            if progress():
                lines.append("WATCHDOG=1")
                if withheld:
                    log.info("watchdog_resumed")
                    withheld = False
            elif not withheld:
                log.error("watchdog_withheld", restart_within_seconds=round(ping * 2, 1))
                withheld = True
        if status is not None:
            text = status()
            lines.extend(_status(f"stalled, watchdog withheld: {text}" if withheld else text))
        if lines:
            notifier.send(*lines)
        await asyncio.sleep(period)


class AcquisitionProgress:
    """A ``progress`` for :func:`watchdog_loop`: false once a link scheduler lags ``stall_after`` behind its schedule.

    Each instrument's ``next_due`` is the due time of the cycle in progress or of the next one. A scheduler
    that polls, backs off or skips cycles keeps it near the present; one stuck in an await that never ends
    leaves it behind. The event loop turning is implied: this runs on it. Outputs are not watched: a
    destination that is down is a health problem (/healthz), and a restart would not bring it back.
    """

    def __init__(
        self,
        schedulers: Callable[[], Iterable[LinkScheduler]],
        *,
        stall_after: float = STALL_AFTER,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._schedulers = schedulers
        self.stall_after = stall_after
        self._clock = clock
        self.reason = ""
        """Why the last call returned false; empty while acquisition progresses."""
        self._stalled_link: str | None = None

    def __call__(self) -> bool:
        # next_due is on the event loop's clock.
        now = self._clock() if self._clock is not None else asyncio.get_running_loop().time()
        for scheduler in self._schedulers():
            # 0.0: built but not started yet (during a reload), not late.
            dues = [scheduled.next_due for scheduled in scheduler.instruments if scheduled.next_due > 0.0]
            if dues and (lag := now - min(dues)) > self.stall_after:
                link = scheduler.link.describe
                if link != self._stalled_link:  # once per stall, not at every check
                    log.error("acquisition_stalled", link=link, lag_seconds=round(lag))
                    self._stalled_link = link
                self.reason = f"link {link} is {lag:.0f} s behind its schedule"
                return False
        if self._stalled_link is not None:
            log.info("acquisition_resumed", link=self._stalled_link)
            self._stalled_link = None
        self.reason = ""
        return True


class StatusLine:
    """The one-line STATUS= summary: ``instruments 3/4 up, 12.5 records/s, backlog 0``.

    The rate is over the time since the previous call (since construction for the first one). The backlog
    is the largest of the outputs' backlogs: the records not yet delivered everywhere.
    """

    def __init__(
        self,
        stats: PipelineStats,
        *,
        backlog: Callable[[str], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stats = stats
        self._backlog = backlog
        self._clock = clock
        self._last_records = self._records()
        self._last_time = clock()

    def _records(self) -> int:
        return sum(instrument.records for instrument in self._stats.instruments)

    def __call__(self) -> str:
        now, records = self._clock(), self._records()
        elapsed = now - self._last_time
        # Removing instruments at a reload lowers the sum: never show a negative rate.
        rate = max(0, records - self._last_records) / elapsed if elapsed > 0 else 0.0
        self._last_records, self._last_time = records, now

        instruments = self._stats.instruments
        up = sum(1 for instrument in instruments if instrument.up)
        parts = [f"instruments {up}/{len(instruments)} up", f"{rate:.1f} records/s"]
        if self._backlog is not None:
            backlog = max((self._backlog(output.output) for output in self._stats.outputs), default=0)
            parts.append(f"backlog {backlog}")
        failing = [output.output for output in self._stats.outputs if output.failing_since is not None]
        if failing:
            parts.append("failing: " + " ".join(failing))
        return ", ".join(parts)
