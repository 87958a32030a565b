"""Shared fixtures: real servers started once per test session on free loopback ports, stopped at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import (
    MOSQUITTO_USERS,
    InfluxDBv1Server,
    MosquittoServer,
    TlsFiles,
    VictoriaMetricsServer,
    missing_binary,
)


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


def _require_mosquitto() -> None:
    if problem := missing_binary(MosquittoServer.name, MosquittoServer.debian_package):
        pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """A running Mosquitto accepting anonymous clients: ``.port``. Tests share it: each uses topics of its own."""
    _require_mosquitto()
    with MosquittoServer(tmp_path_factory.mktemp("mosquitto")) as server:
        yield server


@pytest.fixture(scope="session")
def mosquitto_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """A running Mosquitto that accepts only ``MOSQUITTO_USERS`` (user -> password)."""
    _require_mosquitto()
    with MosquittoServer(tmp_path_factory.mktemp("mosquitto-auth"), users=MOSQUITTO_USERS) as server:
        yield server


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throw-away CA (``.ca_cert``) and a server certificate for ``localhost`` (not for 127.0.0.1)."""
    return TlsFiles(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def mosquitto_tls(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[MosquittoServer]:
    """A running Mosquitto with a TLS-only listener whose certificate ``tls_files.ca_cert`` signed."""
    _require_mosquitto()
    with MosquittoServer(tmp_path_factory.mktemp("mosquitto-tls"), tls=tls_files) as server:
        yield server


@pytest.fixture
def mosquitto_private(tmp_path: Path) -> Iterator[MosquittoServer]:
    """A Mosquitto of this test alone, with persistence: for tests that stop and restart the broker."""
    _require_mosquitto()
    with MosquittoServer(tmp_path / "mosquitto", persistence=True) as server:
        yield server
