"""Shared fixtures: real servers started once per test session on free loopback ports, stopped at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import InfluxDBv1Server, VictoriaMetricsServer, missing_binary


@pytest.fixture(scope="session")
def influxdb_v1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDBv1Server]:
    """A running InfluxDB 1.6 (``/write``, InfluxQL): ``.url``, ``await .query(...)``, ``await .select(...)``.

    Tests share it: each writes to a database of its own. A test that stops it must start it again.
    """
    # Fail, never skip: a missing server must not turn the integration tests silently green.
    if problem := missing_binary(InfluxDBv1Server.name, InfluxDBv1Server.debian_package):
        pytest.fail(problem, pytrace=False)
    with InfluxDBv1Server(tmp_path_factory.mktemp("influxdb-v1")) as server:
        yield server


@pytest.fixture(scope="session")
def victoria_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetricsServer]:
    """A running VictoriaMetrics (``/api/v2/write``): ``.url``, ``await .export(match, min_samples=...)``."""
    if problem := missing_binary(VictoriaMetricsServer.name, VictoriaMetricsServer.debian_package):
        pytest.fail(problem, pytrace=False)
    with VictoriaMetricsServer(tmp_path_factory.mktemp("victoria-metrics")) as server:
        yield server
