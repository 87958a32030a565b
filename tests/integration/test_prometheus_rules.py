"""The fleet's Prometheus files (config/prometheus/): promtool accepts them, the rules' unit tests pass, and
every edge-daq metric the rules name is one a real daemon exports."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from simulators import serve
from tests.daemon_process import DaemonProcess, write_config
from tests.servers import find_binary, free_port

PROMETHEUS = Path(__file__).parents[2] / "config" / "prometheus"
RULES = PROMETHEUS / "edge-daq.rules.yml"
IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def promtool(*arguments: str) -> str:
    result = subprocess.run(
        [find_binary("promtool", "prometheus"), *arguments],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_checks_the_rules_and_the_scrape_config() -> None:
    assert "SUCCESS: 6 rules found" in promtool("check", "rules", RULES.name)
    assert "is valid prometheus config file syntax" in promtool("check", "config", "prometheus.yml")


def test_promtool_runs_the_rules_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", "edge-daq.rules.test.yml")


def rule_metric_names() -> set[str]:
    """The ``edge_daq_*`` names in the rules' expressions (functions, labels and keywords are not)."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    expressions = [rule["expr"] for group in groups for rule in group["rules"]]
    return {name for expr in expressions for name in IDENTIFIER.findall(expr) if name.startswith("edge_daq_")}


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def metrics(daemon: DaemonProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = await daemon.get("/metrics")
    assert status == 200, text
    return scrape(text)


async def test_the_rules_name_metrics_a_running_daemon_exports(tmp_path: Path) -> None:
    names = rule_metric_names()
    assert len(names) >= 7, names  # the expressions were read: up, failing, lost, spool, stress...
    rig = (("rig", "sup"),)
    async with serve("watlow-f4", seed=1) as chamber:
        http_port = free_port()
        gateway = write_config(tmp_path, [chamber.port], http_port=http_port, spool=True)
        async with DaemonProcess(gateway, http_port) as daemon:
            first = await metrics(daemon)
            async with asyncio.timeout(15):  # the rig's test runs (write_config gives it one): stress accrues
                while (await metrics(daemon))[("edge_daq_stress_seconds", rig)] <= first[
                    ("edge_daq_stress_seconds", rig)
                ]:
                    await asyncio.sleep(0.2)
            pause = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edge_daq", "test", "pause", "sup", "-c", str(gateway),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            output, _ = await pause.communicate()
            assert pause.returncode == 0, output
            paused = await metrics(daemon)
    exported = {name for name, _ in first}
    assert names <= exported, sorted(names - exported)
    assert first[("edge_daq_spool_max_bytes", ())] == 2 << 30  # the default spool_max_bytes
    assert first[("edge_daq_stress_expected", rig)] == 1.0
    assert paused[("edge_daq_stress_expected", rig)] == 0.0  # a paused test is expected not to accrue
