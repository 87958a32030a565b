"""The OPC UA driver against the OPC UA chamber simulator (asyncua's server) on real loopback ports.

One simulator serves most tests (an asyncua server takes a second or two to start): security None,
Basic256Sha256 Sign and SignAndEncrypt, a user with a password and anonymous sessions, and a load thermocouple
whose node is always BadSensorFailure. Restart and credential tests run servers of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import structlog
from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from edge_daq.drivers.opcua.config import OpcUaConfig
from edge_daq.drivers.opcua.driver import PLUGIN, OpcUaInstrument, OpcUaLink
from edge_daq.errors import DriverConnectionError
from edge_daq.record import Record
from edge_daq.scheduling import STATUS_MEASUREMENT, LinkScheduler, RecordBuilder, ScheduledInstrument
from simulators import serve_opcua
from simulators.opcua_chamber import OpcUaChamberServer, node_id
from tests.servers import free_port

pytestmark = pytest.mark.asyncio(loop_scope="module")

USER, PASSWORD = "daq", "pw-OPCUA-7f3e9b"
CLIENT_URI = "urn:edge-daq:test-client"


@dataclass(frozen=True)
class Certificates:
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    password_file: Path
    wrong_password_file: Path


def _self_signed(folder: Path, name: str, uri: str, usage: x509.ObjectIdentifier, *, pem: bool) -> tuple[Path, Path]:
    key = cert_gen.generate_private_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")]
    cert = cert_gen.generate_self_signed_app_certificate(key, uri, {}, names, extended=[usage], days=2)
    cert_path = folder / f"{name}-cert.{'pem' if pem else 'der'}"
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM if pem else Encoding.DER))
    key_path = folder / f"{name}-key.pem"
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return cert_path, key_path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("opcua-pki")
    server_cert, server_key = _self_signed(
        folder, "server", "urn:edge-daq:simulators:opcua-chamber:server", ExtendedKeyUsageOID.SERVER_AUTH, pem=False
    )
    client_cert, client_key = _self_signed(folder, "client", CLIENT_URI, ExtendedKeyUsageOID.CLIENT_AUTH, pem=True)
    password_file = folder / "password"
    password_file.write_text(PASSWORD + "\n")
    wrong = folder / "wrong-password"
    wrong.write_text("not-the-PASSWORD-1234\n")
    return Certificates(server_cert, server_key, client_cert, client_key, password_file, wrong)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chamber(certificates: Certificates) -> AsyncIterator[OpcUaChamberServer]:
    async with serve_opcua(
        seed=3,
        time_scale=60,
        update_interval=0.05,
        security=["None", "Basic256Sha256:Sign", "Basic256Sha256:SignAndEncrypt"],
        certificate=certificates.server_cert,
        private_key=certificates.server_key,
        users={USER: PASSWORD},
        allow_anonymous=True,
        bad_nodes=["LoadTemperature"],
        setpoint=85.0,
    ) as server:
        yield server


POINTS: list[dict[str, Any]] = [
    {"name": "temp_pv", "node": node_id("Temperature"), "unit": "degC"},
    {"name": "temp_load", "node": "nsu=urn:edge-daq:simulators:opcua-chamber;s=Chamber.LoadTemperature"},
    {"name": "temp_sp", "path": "/Objects/2:Chamber/2:Setpoint"},
    {"name": "power_scaled", "node": node_id("OutputPower"), "scale": 10.0, "offset": 1.0},
    {"name": "door_open", "path": "/Objects/2:Chamber/2:DoorOpen", "type": "bool"},
    {"name": "model", "node": node_id("Model"), "type": "str"},
    {"name": "serial", "node": node_id("SerialNumber"), "type": "int", "tags": {"part": "controller"}},
]


def config(server: OpcUaChamberServer, **keys: Any) -> OpcUaConfig:
    base = {"name": "chamber", "driver": "opcua", "endpoint": server.endpoint, "interval": 0.2, "timeout": 1.0}
    return OpcUaConfig.model_validate(base | {"points": POINTS} | keys)


def secure(certificates: Certificates, mode: str) -> dict[str, Any]:
    return {
        "security_policy": "Basic256Sha256",
        "security_mode": mode,
        "certificate": str(certificates.client_cert),
        "private_key": str(certificates.client_key),
        "server_certificate": str(certificates.server_cert),
        "username": USER,
        "password_file": str(certificates.password_file),
    }


@contextlib.asynccontextmanager
async def opened(cfg: OpcUaConfig) -> AsyncIterator[tuple[OpcUaLink, OpcUaInstrument]]:
    link = PLUGIN.open_link([cfg])
    await link.open()
    try:
        yield link, PLUGIN.make_instrument(cfg)
    finally:
        await link.close()


def served(server: OpcUaChamberServer, node: str) -> set[Any]:
    return {value for _, value in server.served(node)}


@pytest.mark.parametrize("security", ["None", "Sign", "SignAndEncrypt"])
async def test_one_read_gives_every_value_and_the_bad_node_is_left_out(
    chamber: OpcUaChamberServer, certificates: Certificates, security: str
) -> None:
    keys = {} if security == "None" else secure(certificates, security)
    async with opened(config(chamber, **keys)) as (link, instrument):
        result = await instrument.poll(link)
        assert link.describe == chamber.endpoint + (f" (Basic256Sha256/{security}, user daq)" if keys else "")
    fields = result.fields
    assert fields["temp_pv"] in served(chamber, "Temperature")
    assert fields["temp_sp"] == 85.0
    assert fields["power_scaled"] in {10.0 * power + 1.0 for power in served(chamber, "OutputPower")}
    assert fields["door_open"] is False
    assert fields["model"] == "Watlow F4 (OPC UA)"
    assert fields["serial"] == chamber.device.serial_number
    assert type(fields["serial"]) is int
    assert "temp_load" not in fields
    assert result.failed == ["temp_load"]
    assert [str(error) for error in result.errors] == ["temp_load: BadSensorFailure (0x808C0000)"]


async def test_unknown_nodes_and_wrong_types_fail_alone(chamber: OpcUaChamberServer) -> None:
    points = [
        {"name": "temp_pv", "node": node_id("Temperature")},
        {"name": "gone", "path": "/Objects/2:Chamber/2:Humidity"},
        {"name": "no_such_id", "node": node_id("Humidity")},
        {"name": "no_namespace", "node": "nsu=urn:nobody;s=Chamber.Temperature"},
        {"name": "door_as_number", "node": node_id("DoorOpen")},
        {"name": "temp_as_int", "node": node_id("Temperature"), "type": "int"},
    ]
    async with opened(config(chamber, points=points)) as (link, instrument):
        result = await instrument.poll(link)
    assert set(result.fields) == {"temp_pv"}
    assert sorted(result.failed) == ["door_as_number", "gone", "no_namespace", "no_such_id", "temp_as_int"]
    text = " | ".join(str(error) for error in result.errors)
    assert "gone: path /Objects/2:Chamber/2:Humidity not found (BadNoMatch" in text
    assert "no_such_id: BadNodeIdUnknown" in text
    assert "has no namespace 'urn:nobody'" in text
    assert "Boolean, not a number" in text
    assert "Double, not an integer" in text


def scheduled(cfg: OpcUaConfig) -> tuple[ScheduledInstrument, Any]:
    from edge_daq.stats import InstrumentStats

    stats = InstrumentStats(rig="r", instrument=cfg.name, link=cfg.endpoint)
    member = ScheduledInstrument(
        instrument=PLUGIN.make_instrument(cfg),  # type: ignore[arg-type]
        builder=RecordBuilder(cfg, {"rig": "r"}),
        stats=stats,
    )
    return member, stats


async def run_until(scheduler: LinkScheduler, condition: Callable[[], bool], within: float = 15.0) -> None:
    task = asyncio.create_task(scheduler.run(), name="opcua test link")
    try:
        async with asyncio.timeout(within):
            while not condition():
                await asyncio.sleep(0.02)
    finally:
        scheduler.request_stop()
        await asyncio.wait_for(task, 5)


async def test_subscribed_changes_are_records_at_the_source_timestamps(
    chamber: OpcUaChamberServer, certificates: Certificates
) -> None:
    cfg = config(
        chamber, name="events", mode="subscribe", interval=0.2, publishing_interval=0.1, sampling_interval=0.05,
        **secure(certificates, "SignAndEncrypt"),
    )  # fmt: skip
    member, stats = scheduled(cfg)
    link = PLUGIN.open_link([cfg])
    records: list[Record] = []
    scheduler = LinkScheduler(link=link, instruments=[member], emit=records.append)

    def temperatures() -> list[Record]:
        return [record for record in records if record.series.measurement == "events" and "temp_pv" in record.fields]

    await run_until(scheduler, lambda: len(temperatures()) >= 12)
    history = dict(chamber.served("Temperature"))
    changes = temperatures()
    # Every change is a record at the server's source timestamp, with the value served at that time: several
    # records per poll (the simulator updates every 50 ms, the driver hands them on every 200 ms).
    for record in changes:
        assert history[record.time_ns] == record.fields["temp_pv"]
    times = [record.time_ns for record in changes]
    assert times == sorted(set(times))
    assert stats.polls * 2 <= len(changes) + 4
    # The first notification of each item carries its current value: the constant nodes are in the data once.
    assert any(record.fields.get("temp_sp") == 85.0 for record in records)
    assert any(record.fields.get("serial") == chamber.device.serial_number for record in records)
    # The per-point tag: the serial number is a record of its own series.
    serial = next(record for record in records if "serial" in record.fields)
    assert serial.series.tags["part"] == "controller"
    # The Bad node stays failed in every status record, with its status code.
    statuses = [record for record in records if record.series.measurement == STATUS_MEASUREMENT]
    assert statuses
    assert all(status.fields["failed_points"] == 1 for status in statuses)
    assert all("BadSensorFailure" in str(status.fields["error"]) for status in statuses)
    assert stats.failures == 0


async def test_bad_credentials_are_one_clear_error_without_the_secret(
    chamber: OpcUaChamberServer, certificates: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    keys = secure(certificates, "Sign") | {"password_file": str(certificates.wrong_password_file)}
    cfg = config(chamber, name="locked", interval=0.05, **keys)
    with pytest.raises(DriverConnectionError) as raised:
        await PLUGIN.open_link([cfg]).open()
    message = str(raised.value)
    assert "the server refused user 'daq' (BadUserAccessDenied" in message
    assert "check username and password_file" in message
    assert "not-the-PASSWORD" not in message
    assert PASSWORD not in message

    # Through the scheduler: one error logged for the whole outage, however many attempts, and no secret.
    caplog.set_level("DEBUG")
    member, stats = scheduled(cfg)
    scheduler = LinkScheduler(link=PLUGIN.open_link([cfg]), instruments=[member], emit=lambda record: None)
    refused_before = chamber.user_manager.refused
    with structlog.testing.capture_logs() as logs:
        await run_until(scheduler, lambda: chamber.user_manager.refused >= refused_before + 2)
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert [entry["event"] for entry in errors] == ["instrument_failed"]
    assert "BadUserAccessDenied" in errors[0]["error"]
    everything = repr(logs) + caplog.text + stats.last_error
    assert "not-the-PASSWORD" not in everything
    assert PASSWORD not in everything


async def test_a_server_restart_reconnects_and_subscribes_again(certificates: Certificates) -> None:
    port = free_port()
    users = {USER: PASSWORD}
    server = OpcUaChamberServer(port=port, seed=4, time_scale=60, update_interval=0.05, users=users)
    await server.start()
    # This server refuses anonymous sessions and has no secure endpoint: both are clear errors.
    with pytest.raises(DriverConnectionError, match=r"refused an anonymous session .*wants a username"):
        await PLUGIN.open_link([config(server)]).open()
    no_endpoint = config(server, **secure(certificates, "SignAndEncrypt") | {"server_certificate": None})
    with pytest.raises(DriverConnectionError, match="offers no endpoint with security Basic256Sha256"):
        await PLUGIN.open_link([no_endpoint]).open()

    user = {"username": USER, "password_file": str(certificates.password_file)}
    polled = config(server, name="polled", interval=0.1, timeout=0.5, **user)
    subscribed = config(
        server, name="subscribed", mode="subscribe", interval=0.1, timeout=0.5, publishing_interval=0.05,
        points=[{"name": "temp_pv", "node": node_id("Temperature")}], **user,
    )  # fmt: skip
    link = PLUGIN.open_link([polled, subscribed])
    (poll_member, poll_stats), (sub_member, sub_stats) = scheduled(polled), scheduled(subscribed)
    records: list[Record] = []
    scheduler = LinkScheduler(link=link, instruments=[poll_member, sub_member], emit=records.append)

    def count(name: str) -> int:
        return sum(1 for record in records if record.series.measurement == name)

    task = asyncio.create_task(scheduler.run(), name="opcua restart link")
    try:
        with structlog.testing.capture_logs() as logs:
            async with asyncio.timeout(30):
                while count("polled") < 3 or count("subscribed") < 3:
                    await asyncio.sleep(0.02)
                await server.close()
                while poll_stats.consecutive_failures < 1:
                    await asyncio.sleep(0.02)
                server = OpcUaChamberServer(port=port, seed=4, time_scale=60, update_interval=0.05, users=users)
                await server.start()
                polled_before, subscribed_before = count("polled"), count("subscribed")
                while count("polled") < polled_before + 3 or count("subscribed") < subscribed_before + 3:
                    await asyncio.sleep(0.02)
    finally:
        scheduler.request_stop()
        await asyncio.wait_for(task, 5)
        await server.close()
    # The new subscription's changes are the new server's.
    history = dict(server.served("Temperature"))
    after = [record for record in records if record.series.measurement == "subscribed"][subscribed_before:]
    assert all(history[record.time_ns] == record.fields["temp_pv"] for record in after)
    assert link.stats.reconnects >= 1
    # One error per instrument for the outage, then one recovery each; the retries were quiet.
    errors = [(entry["event"], entry["instrument"]) for entry in logs if entry["log_level"] == "error"]
    assert sorted(errors) == [("instrument_failed", "polled"), ("instrument_failed", "subscribed")]
    recovered = sorted(entry["instrument"] for entry in logs if entry["event"] == "instrument_recovered")
    assert recovered == ["polled", "subscribed"]
    assert "session" in poll_stats.last_error or poll_stats.last_error == ""
    assert sub_stats.consecutive_failures == 0
