"""Many gateways, one database (the quick version of bench/gateways.py): real `edge-daq run` daemons with their
own spools write to one VictoriaMetrics with deduplication through the InfluxDB path prefix (``.../influx``);
one is SIGKILLed and restarted, the database is stopped for a while; every record polled is in the database,
counted per gateway, and none twice."""

from __future__ import annotations

import math
from pathlib import Path

from bench.gateways import KILL_AFTER, Settings, run_fleet, table

SETTINGS = Settings(gateways=4, instruments=5, points=4, interval=0.2, run=2.0, outage=4.0, max_backoff=1.0)


async def test_nothing_is_lost_per_gateway(tmp_path: Path) -> None:
    counts = await run_fleet(tmp_path, SETTINGS, log=lambda line: None)
    report = table(counts)
    print(report)  # the table, with -s
    assert [count.gateway for count in counts] == ["gw-00", "gw-01", "gw-02", "gw-03"]
    assert all(count.failed_in_outage for count in counts), report  # the outage was felt by every gateway
    # Each gateway polled through all three phases: at least a phase's worth of polls of every instrument.
    assert all(count.polled > SETTINGS.instruments * SETTINGS.run / SETTINGS.interval for count in counts), report
    killed, *others = counts
    assert killed.killed
    assert all(count.stored == count.polled for count in others), report  # nothing lost, nothing twice
    # The killed one: everything it had polled a moment before the SIGKILL, plus at most what it polled in
    # that moment (the spool's replay after the restart collapses onto the delivered copies).
    polls_in_the_moment = SETTINGS.instruments * math.ceil((KILL_AFTER + 2.0) / SETTINGS.interval)  # a slow CI
    assert killed.polled <= killed.stored <= killed.polled + polls_in_the_moment, report
