"""One-for-one supervision (Erlang/OTP's idea): a component that fails is restarted on its own, with backoff.

Every long-running task of the daemon (a link scheduler, an output runner, the spool, the reliability engine,
the HTTP endpoint, the watchdog) runs under :meth:`Supervisor.supervise`. An exception ends only that task's
current run: it is logged once per failure episode, counted, shown in /healthz, /status and /metrics, and the
component starts again after a backoff while everything else goes on. Only cancellation (a reload, shutdown)
and a normal return end a supervised task.

A component that keeps running for ``stable_after`` seconds after a restart has recovered: the episode ends,
the backoff starts again from its initial delay, and the next failure is logged again.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import structlog

from edge_daq.delivery import Backoff

log = structlog.get_logger("edge_daq.supervisor")

INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 30.0
STABLE_AFTER = 30.0
"""Seconds a restarted component must run to count as recovered."""
_ERROR_CHARS = 300

ComponentState = Literal["running", "restarting", "stopped"]


@dataclass(slots=True)
class Component:
    """The health of one supervised component, as /status and /metrics show it."""

    name: str
    kind: str
    state: ComponentState = "running"
    restarts: int = 0
    """Restarts after a failure, over the daemon's life (kept when a reload restarts the component)."""
    last_error: str = ""
    failing_since: float | None = None
    """Monotonic time of the first failure of the current episode; None while healthy."""
    started: float = field(default_factory=time.monotonic)


def describe(error: BaseException) -> str:
    """``Type: message (file.py:123 in function)`` of the innermost frame: enough to find the bug, one line."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    frames = traceback.extract_tb(error.__traceback__)
    if frames:
        last = frames[-1]
        text = f"{text[:_ERROR_CHARS]} ({last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name})"
    return text[: _ERROR_CHARS + 100]


class Supervisor:
    """Runs components and restarts those that fail; ``components`` is what health reporting reads."""

    def __init__(
        self,
        *,
        initial_backoff: float = INITIAL_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        stable_after: float = STABLE_AFTER,
    ) -> None:
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.stable_after = stable_after
        self._components: dict[str, Component] = {}

    def __iter__(self) -> Iterator[Component]:
        """The components running or restarting now (a stopped one is not shown)."""
        return iter([component for component in self._components.values() if component.state != "stopped"])

    def all_components(self) -> list[Component]:
        """Every component seen, stopped ones too (their restart counters must not go back in /metrics)."""
        return list(self._components.values())

    def component(self, name: str) -> Component | None:
        return self._components.get(name)

    async def supervise(self, name: str, run: Callable[[], Awaitable[None]], *, kind: str) -> None:
        """Run ``run()`` until it returns; whenever it raises, log, count and call it again after a backoff.

        ``run`` is called afresh for each restart, so it should build what it needs from what is known to be
        sound (a new connection, a source rewound to its committed cursor). Never raises but cancellation.
        """
        component = self._components.get(name)
        if component is None or component.kind != kind:
            component = self._components[name] = Component(name=name, kind=kind)
        component.state, component.started = "running", time.monotonic()
        backoff = Backoff(self.initial_backoff, self.max_backoff)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        bound = log.bind(component=name, kind=kind)
        try:
            while True:
                # Recovered once it has run long enough after a restart: the next failure is a new episode.
                recovered = loop.call_later(self.stable_after, self._recovered, component, backoff)
                try:
                    await run()
                    return
                except asyncio.CancelledError:
                    if task is None or task.cancelling():
                        raise
                    error: BaseException = RuntimeError("the component cancelled itself")  # a library's stray cancel
                except Exception as failure:
                    error = failure
                finally:
                    recovered.cancel()
                delay = backoff.next_delay()
                component.restarts += 1
                component.last_error = describe(error)
                component.state = "restarting"
                if component.failing_since is None:
                    component.failing_since = time.monotonic()
                    bound.error("component_failed", error=component.last_error, restart_in=round(delay, 2))
                await asyncio.sleep(delay)
                component.state, component.started = "running", time.monotonic()
        finally:
            component.state = "stopped"

    def _recovered(self, component: Component, backoff: Backoff) -> None:
        backoff.reset()
        if component.failing_since is not None:
            log.info(
                "component_recovered",
                component=component.name,
                kind=component.kind,
                outage_seconds=round(time.monotonic() - component.failing_since, 1),
                restarts=component.restarts,
            )
            component.failing_since = None
            component.last_error = ""
