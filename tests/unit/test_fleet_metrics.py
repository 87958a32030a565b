"""The metrics the fleet's alert rules (config/prometheus/edge-daq.rules.yml) need besides the pipeline's own:
the spool's cap beside its size, and each rig's stress clock."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edge_daq.buffer.ring import RingBuffer
from edge_daq.buffer.spool import Spool
from edge_daq.service.metrics import PipelineView, StressView, build_registry
from edge_daq.stats import PipelineStats, SpoolStats


def scrape(view: PipelineView) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(build_registry(view, process=False)).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_spool_cap_beside_its_size(tmp_path: Path) -> None:
    stats = SpoolStats()
    spool = Spool(tmp_path / "spool", RingBuffer(100), max_bytes=3 << 20, stats=stats)
    assert spool.stats is stats
    found = scrape(PipelineView(stats=PipelineStats(spool=stats)))
    assert found[("edge_daq_spool_max_bytes", ())] == 3 << 20
    assert 0 < found[("edge_daq_spool_bytes", ())] < 3 << 20  # the open segment's header


def test_stress_clock_per_rig() -> None:
    rigs = [
        StressView(rig="htol-07", expected=True, holding=False, stress_seconds=7200.5),
        StressView(rig="hast-02", expected=False, holding=True, stress_seconds=0.0),
    ]
    found = scrape(PipelineView(stats=PipelineStats(), stress=lambda: rigs))
    htol, hast = (("rig", "htol-07"),), (("rig", "hast-02"),)
    assert found[("edge_daq_stress_seconds", htol)] == 7200.5
    assert (found[("edge_daq_stress_expected", htol)], found[("edge_daq_stress_holding", htol)]) == (1.0, 0.0)
    assert (found[("edge_daq_stress_expected", hast)], found[("edge_daq_stress_holding", hast)]) == (0.0, 1.0)


def test_no_stress_families_without_a_reliability_view() -> None:
    assert not any(name.startswith("edge_daq_stress") for name, _ in scrape(PipelineView(stats=PipelineStats())))
