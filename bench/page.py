"""The status page's own cost: the fleet benchmark's daemon (bench/fleet.py: N Modbus TCP instruments x 30
points at 1 s into a real InfluxDB 1.6) with its HTTP endpoint and status page, measured side by side in
interleaved windows of three kinds:

- ``no page``: the page's feed (its ring reader) stopped, nobody polling: the daemon without the page;
- ``page, no browser``: the feed running, nobody polling;
- ``5 browsers``: the feed running and 5 clients polling as the page does (``/api/page`` every 1.5 s and
  ``/api/trends`` every 10 s), from a child process on the other core (the browsers are not the daemon's cost).

CPU time of this process (the daemon, pinned to one core) per window, summed per kind over every round; the
figure is the 5-browser CPU against the no-page CPU (target: under 2 % more). Rounds rotate the order, so a
drift of the shared machine's load spreads over all three kinds.

    .venv/bin/python -m bench.page                          # 1000 instruments, 4 rounds of 3 x 10 s
    .venv/bin/python -m bench.page --instruments 200 --rounds 2 --window 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench import fleet, pipeline
from bench.common import Figure, cpu_seconds, emit, free_port, pin, ratio, stop_processes
from edge_daq.config.loader import load_config
from edge_daq.daemon import Daemon
from edge_daq.service.lifecycle import http_endpoint

CLIENTS = 5
PAGE_EVERY, TRENDS_EVERY = 1.5, 10.0
KINDS = ("no page", "page, no browser", f"{CLIENTS} browsers")
TARGET = 1.02


async def browse(url: str, clients: int) -> None:
    """``clients`` pollers at the page's own rates until cancelled."""

    async def one(index: int) -> None:
        async with aiohttp.ClientSession() as session:
            await asyncio.sleep(index * PAGE_EVERY / clients)  # browsers opened at different moments
            next_trends = 0.0
            while True:
                async with session.get(url + "/api/page") as response:
                    await response.read()
                if time.monotonic() >= next_trends:
                    next_trends = time.monotonic() + TRENDS_EVERY
                    async with session.get(url + "/api/trends") as response:
                        await response.read()
                await asyncio.sleep(PAGE_EVERY)

    async with asyncio.TaskGroup() as group:
        for index in range(clients):
            group.create_task(one(index))


async def measure(args: argparse.Namespace) -> dict[str, float]:
    pin(0, pipeline.PIPELINE_CORE)
    units = -(-args.instruments // args.endpoints)
    cpu = dict.fromkeys(KINDS, 0.0)
    seconds = dict.fromkeys(KINDS, 0.0)
    own = 0.0  # the page's own code (feed and documents), timed by itself, in the 5-browser windows
    own_feed = 0.0
    with tempfile.TemporaryDirectory(prefix="edge-daq-page-") as name, pipeline.pinned_influx(Path(name)) as influx:
        simulators, ports = fleet.start_simulators(args.endpoints, units)
        try:
            database = f"page_{args.instruments}"
            await influx.query(f"CREATE DATABASE {database}")
            gateway = fleet.write_config(Path(name) / database, influx.url, database, ports, args.instruments)
            daemon = Daemon(load_config(gateway), drain_timeout=30)
            endpoint, feed = http_endpoint(daemon, listen=f"127.0.0.1:{free_port()}", token=None)
            stop = asyncio.Event()
            async with endpoint, asyncio.TaskGroup() as group:
                run = group.create_task(daemon.run(stop))
                http = group.create_task(endpoint.serve_forever())
                await asyncio.sleep(args.warmup)
                feed_task: asyncio.Task[None] | None = None
                for round_index in range(args.rounds):
                    order = KINDS[round_index % 3 :] + KINDS[: round_index % 3]
                    for kind in order:
                        browsers: asyncio.subprocess.Process | None = None
                        if kind != KINDS[0] and feed_task is None:
                            feed_task = group.create_task(feed.run())
                        if kind == KINDS[0] and feed_task is not None:
                            feed_task.cancel()
                            await asyncio.wait([feed_task])
                            feed_task = None
                        if kind == KINDS[2]:
                            browsers = await asyncio.create_subprocess_exec(
                                sys.executable, "-m", "bench.page", "--browse", endpoint.url,
                                stdout=asyncio.subprocess.DEVNULL,
                            )  # fmt: skip
                            pin(browsers.pid, pipeline.SERVER_CORE)
                            await asyncio.sleep(args.window / 5)  # let every browser open before counting
                        await asyncio.sleep(1.0)  # a trend sample or a document built on entering: not counted
                        assert endpoint.page is not None
                        model = endpoint.page.model
                        own0, feed0 = feed.busy_seconds + model.build_seconds, feed.busy_seconds
                        cpu0, started = cpu_seconds(), time.perf_counter()
                        await asyncio.sleep(args.window)
                        cpu[kind] += cpu_seconds() - cpu0
                        if kind == KINDS[2]:
                            own += feed.busy_seconds + model.build_seconds - own0
                            own_feed += feed.busy_seconds - feed0
                        seconds[kind] += time.perf_counter() - started
                        if browsers is not None:
                            browsers.terminate()
                            await browsers.wait()
                        share = cpu[kind] / seconds[kind]
                        print(f"round {round_index + 1} {kind:>17}: {share:.1%} of a core so far", flush=True)
                if feed_task is not None:
                    feed_task.cancel()
                stop.set()
                await run
                http.cancel()
            built = endpoint.page.model.documents_built if endpoint.page is not None else 0
            print(f"page documents built: {built}", flush=True)
        finally:
            stop_processes(simulators)
    shares = {kind: cpu[kind] / seconds[kind] for kind in KINDS}
    shares["own"] = own / seconds[KINDS[2]]
    shares["own feed"] = own_feed / seconds[KINDS[2]]
    return shares


def report(shares: dict[str, float], args: argparse.Namespace) -> None:
    base, idle, busy = (shares[kind] for kind in KINDS)
    size = f"fleet {args.instruments} x 30"
    # The page's own code timed by itself: free of the window-to-window noise of a shared machine, but
    # without aiohttp's share of each request (the interleaved figure has it).
    own = shares["own"]
    print(
        f"page code in the {CLIENTS}-browser windows: {1e3 * own:.2f} ms per second "
        f"(feed {1e3 * shares['own feed']:.2f}, documents {1e3 * (own - shares['own feed']):.2f})",
        flush=True,
    )
    emit(
        Figure(
            benchmark="page",
            name=f"{size}: the page's own code (feed + documents) with {CLIENTS} browsers",
            value=round(100 * own, 3),
            unit="% of a core",
            baseline=f"daemon CPU in the same windows: {100 * busy:.2f}",
            baseline_value=round(100 * busy, 2),
            ratio=round(ratio(own, busy), 4),
            target=f"ratio < {TARGET - 1:.2f}",
            met=ratio(own, busy) < TARGET - 1,
            note="timed inside the daemon; excludes aiohttp's request handling",
        )
    )
    for name, value, baseline_name, baseline in (
        (f"{size}: daemon CPU with the page open in {CLIENTS} browsers", busy, "no page", base),
        (f"{size}: daemon CPU with the page's feed, no browser", idle, "no page", base),
    ):
        emit(
            Figure(
                benchmark="page",
                name=name,
                value=round(100 * value, 2),
                unit="% of a core",
                baseline=f"{baseline_name}, same daemon, interleaved windows: {100 * baseline:.2f}",
                baseline_value=round(100 * baseline, 2),
                ratio=round(ratio(value, baseline), 4),
                target=f"ratio < {TARGET}",
                met=ratio(value, baseline) < TARGET,
                note=f"{args.rounds} rounds of {args.window:g} s per kind",
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m bench.page")
    parser.add_argument("--instruments", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured per kind and round")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="20 instruments, 1 round of 1 s windows: the smoke test")
    parser.add_argument("--browse", help=argparse.SUPPRESS)  # a child: poll this URL as 5 browsers would
    args = parser.parse_args(argv)
    if args.browse:
        with contextlib.suppress(KeyboardInterrupt):
            import signal

            signal.signal(signal.SIGTERM, signal.default_int_handler)
            asyncio.run(browse(args.browse, CLIENTS))
        return 0
    if args.quick:
        args.instruments, args.endpoints, args.rounds, args.window, args.warmup = 20, 4, 1, 1.0, 1.0
    report(asyncio.run(measure(args)), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
