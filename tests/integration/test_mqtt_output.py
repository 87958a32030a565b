"""The MQTT output against a real Mosquitto 2.0: payloads, retained status, last will, auth, TLS and outages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from edge_daq.buffer.ring import RingBuffer
from edge_daq.config.models import GatewayConfig
from edge_daq.daemon import build_output, output_configs
from edge_daq.delivery import OutputRunner
from edge_daq.errors import FatalSinkError, RetriableSinkError
from edge_daq.record import FieldValue, Record, Series
from edge_daq.sinks.base import WriteResult
from edge_daq.sinks.mqtt import MqttOutput, MqttOutputConfig
from edge_daq.stats import OutputStats
from tests.servers import MOSQUITTO_USERS, MosquittoServer, TlsFiles, free_port, wait_for_port

GATEWAY = "gw-test"
T0 = 1_763_000_000_123_456_789  # nanosecond digits that a float or ms round trip would lose
EDGE_DAQ = [sys.executable, "-m", "edge_daq"]


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test alone: the brokers are shared, and keep retained messages."""
    return f"t-{uuid.uuid4().hex[:10]}"


def config(port: int, prefix: str, **overrides: Any) -> MqttOutputConfig:
    return MqttOutputConfig.model_validate({"port": port, "topic_prefix": prefix, "timeout": "3s", **overrides})


def chamber_series(rig: str = "htol-07", instrument: str = "chamber") -> Series:
    return Series("chamber", {"gateway": GATEWAY, "rig": rig, "instrument": instrument, "lot": "L2611-03"})


def record(series: Series, time_ns: int, **fields: FieldValue) -> Record:
    return Record(series=series, fields=dict(fields), time_ns=time_ns)


@dataclass
class Inbox:
    """What a test subscriber received, in order."""

    messages: list[aiomqtt.Message] = field(default_factory=list)

    async def read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.messages.append(message)

    def on(self, topic: str) -> list[aiomqtt.Message]:
        return [message for message in self.messages if message.topic.value == topic]

    async def wait_for(self, topic: str, count: int = 1, within: float = 10.0) -> list[aiomqtt.Message]:
        async with asyncio.timeout(within):
            while len(self.on(topic)) < count:
                await asyncio.sleep(0.01)
        return self.on(topic)


@asynccontextmanager
async def subscribed(port: int, topic: str, **options: Any) -> AsyncIterator[Inbox]:
    """An aiomqtt subscriber (QoS 1) collecting messages in the background while the block runs."""
    inbox = Inbox()
    async with aiomqtt.Client("127.0.0.1", port, **options) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.TaskGroup() as group:
            reader = group.create_task(inbox.read(client), name="test subscriber")
            yield inbox
            reader.cancel()


def payload(message: aiomqtt.Message) -> Any:
    assert isinstance(message.payload, bytes)
    return json.loads(message.payload)


# --- configuration -------------------------------------------------------------------------------------------


def test_config_defaults_and_port_follows_tls() -> None:
    plain = MqttOutputConfig()
    assert (plain.host, plain.broker_port, plain.topic_prefix, plain.qos, plain.protocol) == (
        "127.0.0.1",
        1883,
        "edge-daq",
        1,
        "3.1.1",
    )
    assert MqttOutputConfig.model_validate({"tls": {}}).broker_port == 8883
    assert MqttOutputConfig.model_validate({"tls": {}, "port": 1884}).broker_port == 1884
    assert MqttOutputConfig.model_validate({"protocol": 5, "keepalive": "1m"}).protocol == "5"
    assert MqttOutputConfig.model_validate({"keepalive": "1m"}).keepalive == 60.0
    assert MqttOutput(plain, gateway="gw-lab2-01").client_id == "edge-daq-gw-lab2-01"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"qos": 2}, "Input should be 0 or 1"),
        ({"protocol": "3.1"}, "Input should be '3.1.1' or '5'"),
        ({"topic_prefix": "lab/#"}, "without wildcards"),
        ({"topic_prefix": "/lab"}, "leading or trailing /"),
        ({"password": "x"}, "a password needs a username"),
        ({"username": "u", "password": "x", "password_file": "/run/pw"}, "not both"),
        ({"keepalive": "0s"}, "keepalive must be between"),
        ({"tls": {"key_file": "/k.pem"}}, "key_file needs cert_file"),
        ({"hostname": "broker"}, "Extra inputs are not permitted"),
    ],
)
def test_config_rejects(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MqttOutputConfig.model_validate(settings)


def test_the_gateway_file_accepts_an_mqtt_output_and_the_daemon_builds_it() -> None:
    gateway = GatewayConfig.model_validate(
        {"gateway": "gw-lab2-01", "outputs": {"mqtt": {"host": "broker", "username": "gw", "password": "s3cr3t"}}}
    )
    assert isinstance(gateway.outputs.get("mqtt"), MqttOutputConfig)
    assert "s3cr3t" not in repr(gateway)
    [(name, output_config)] = output_configs(gateway).items()
    assert output_config is gateway.outputs.get("mqtt")
    output = build_output(name, output_config, gateway)
    assert isinstance(output, MqttOutput)
    assert output.name == "mqtt"
    assert output.status_topic == "edge-daq/gw-lab2-01/status"
    assert "s3cr3t" not in repr(output)


def test_topics_follow_the_rig_and_instrument_tags() -> None:
    output = MqttOutput(MqttOutputConfig(topic_prefix="lab2/daq"), gateway="gw1")
    assert output.record_topic({"rig": "htol-07", "instrument": "chamber"}, "chamber") == "lab2/daq/gw1/htol-07/chamber"
    assert output.record_topic({"gateway": "gw1"}, "edge_daq_health") == "lab2/daq/gw1/_gateway/edge_daq_health"
    assert output.record_topic({"rig": "a/b", "instrument": "c+#"}, "m") == "lab2/daq/gw1/a_b/c__"
    assert output.events_topic("htol-07") == "lab2/daq/gw1/htol-07/events"


def test_values_json_cannot_carry_are_left_out_and_other_numbers_become_floats() -> None:
    output = MqttOutput(MqttOutputConfig(), gateway=GATEWAY)
    fields: dict[str, Any] = {"a": math.inf, "b": Decimal("NaN"), "c": Decimal("1.5"), "s": "x", "n": -math.inf}
    topic, body = output.encode_record(Record(chamber_series(), fields, T0))
    assert topic == f"edge-daq/{GATEWAY}/htol-07/chamber"
    assert json.loads(body)["fields"] == {"c": 1.5, "s": "x"}


# --- payloads, status, events against the broker ---------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
@pytest.mark.parametrize("qos", [0, 1])
async def test_each_record_is_one_exact_json_message_on_its_instruments_topic(
    mosquitto: MosquittoServer, prefix: str, protocol: str, qos: int
) -> None:
    chamber, psu = chamber_series(), chamber_series(instrument="psu")
    gateway_level = Series("edge_daq_health", {"gateway": GATEWAY})
    records = [
        record(chamber, T0, temp=125.5, count=-(2**63), ok=True, model='F4 "T" °C\\', nan=math.nan),
        record(psu, T0 + 1, v=3.3),
        record(chamber, T0 + 2, temp=-1.5e-300, count=2**63 - 1, ok=False, model=""),
        record(gateway_level, T0 + 3, ring_records=12),
    ]
    async with (
        subscribed(mosquitto.port, f"{prefix}/#") as inbox,
        MqttOutput(config(mosquitto.port, prefix, qos=qos, protocol=protocol), gateway=GATEWAY) as output,
    ):
        assert await output.write(records) == WriteResult(written=4)
        received = await inbox.wait_for(f"{prefix}/{GATEWAY}/htol-07/chamber", 2)
        [from_psu] = await inbox.wait_for(f"{prefix}/{GATEWAY}/htol-07/psu")
        [gateway_message] = await inbox.wait_for(f"{prefix}/{GATEWAY}/_gateway/edge_daq_health")

    # Exact bytes: compact, UTF-8, tags sorted, fields in point order, NaN left out (JSON has none).
    assert (
        received[0].payload
        == (
            '{"measurement":"chamber","time":1763000000123456789,'
            '"tags":{"gateway":"gw-test","instrument":"chamber","lot":"L2611-03","rig":"htol-07"},'
            '"fields":{"temp":125.5,"count":-9223372036854775808,"ok":true,"model":"F4 \\"T\\" °C\\\\"}}'
        ).encode()
    )
    assert payload(received[1]) == {
        "measurement": "chamber",
        "time": T0 + 2,
        "tags": {"gateway": GATEWAY, "instrument": "chamber", "lot": "L2611-03", "rig": "htol-07"},
        "fields": {"temp": -1.5e-300, "count": 2**63 - 1, "ok": False, "model": ""},
    }
    assert payload(from_psu)["fields"] == {"v": 3.3}
    assert payload(gateway_message) == {
        "measurement": "edge_daq_health",
        "time": T0 + 3,
        "tags": {"gateway": GATEWAY},
        "fields": {"ring_records": 12},
    }
    assert all(message.qos == qos and not message.retain for message in received)


async def test_status_is_retained_online_on_connect_and_offline_after_a_clean_close(
    mosquitto: MosquittoServer, prefix: str
) -> None:
    status_topic = f"{prefix}/{GATEWAY}/status"
    output = MqttOutput(config(mosquitto.port, prefix), gateway=GATEWAY)
    # A subscriber that comes later still learns the state: it is retained.
    async with output, subscribed(mosquitto.port, status_topic) as late:
        [online] = await late.wait_for(status_topic)
    assert online.retain
    assert payload(online) == {
        "state": "online",
        "gateway": GATEWAY,
        "version": "0.1.0",
        "started": output.started.isoformat(timespec="seconds"),
    }
    async with subscribed(mosquitto.port, status_topic) as late:
        [offline] = await late.wait_for(status_topic)
    assert offline.retain
    document = payload(offline)
    assert (document["state"], document["reason"], document["gateway"]) == ("offline", "stopped", GATEWAY)
    assert "stopped" in document


async def test_retain_last_keeps_each_instruments_latest_record_for_late_subscribers(
    mosquitto: MosquittoServer, prefix: str
) -> None:
    chamber, psu = chamber_series(), chamber_series(instrument="psu")
    batch = [record(chamber if i % 2 else psu, T0 + i, n=i) for i in range(6)]
    async with (
        subscribed(mosquitto.port, f"{prefix}/{GATEWAY}/htol-07/+") as live,
        MqttOutput(config(mosquitto.port, prefix, retain_last=True), gateway=GATEWAY) as output,
    ):
        await output.write(batch)
        await output.write(batch[:2])  # the retained record is the last one written, as for live subscribers
        await live.wait_for(f"{prefix}/{GATEWAY}/htol-07/chamber", 4)
        async with subscribed(mosquitto.port, f"{prefix}/{GATEWAY}/htol-07/+") as late:
            chamber_latest = await late.wait_for(f"{prefix}/{GATEWAY}/htol-07/chamber")
            psu_latest = await late.wait_for(f"{prefix}/{GATEWAY}/htol-07/psu")
    # Live subscribers get every record once, never an extra retained copy.
    assert [payload(m)["fields"]["n"] for m in live.on(f"{prefix}/{GATEWAY}/htol-07/chamber")] == [1, 3, 5, 1]
    assert [(payload(m)["fields"]["n"], m.retain) for m in chamber_latest] == [(1, True)]
    assert [(payload(m)["fields"]["n"], m.retain) for m in psu_latest] == [(0, True)]


async def test_rig_events_go_to_the_rigs_events_topic(mosquitto: MosquittoServer, prefix: str) -> None:
    event = {"type": "dut_failed", "dut": "U17", "time": T0, "limit": {"field": "icc", "max": 0.25}, "ok": False}
    async with (
        subscribed(mosquitto.port, f"{prefix}/#") as inbox,
        MqttOutput(config(mosquitto.port, prefix), gateway=GATEWAY) as output,
    ):
        await output.publish_event("htol-07", event)
        [message] = await inbox.wait_for(f"{prefix}/{GATEWAY}/htol-07/events")
    assert payload(message) == event
    assert message.qos == 1
    assert not message.retain


# --- bad input: credentials, TLS, unreachable broker ---------------------------------------------------------


async def test_refused_credentials_are_a_fatal_error_that_never_shows_the_password(
    mosquitto_auth: MosquittoServer, prefix: str, tmp_path: Path
) -> None:
    [(user, password)] = MOSQUITTO_USERS.items()
    wrong = "wrong-SECRET-c0ffee"
    with pytest.raises(FatalSinkError) as refused:
        await MqttOutput(config(mosquitto_auth.port, prefix, username=user, password=wrong), gateway=GATEWAY).open()
    message = str(refused.value)
    assert f"refused the credentials of user '{user}'" in message
    assert "Not authorized" in message
    assert wrong not in message
    assert password not in message

    with pytest.raises(FatalSinkError, match="refused the credentials of anonymous clients"):
        await MqttOutput(config(mosquitto_auth.port, prefix), gateway=GATEWAY).open()

    password_file = tmp_path / "mqtt-password"
    password_file.write_text(password + "\n")  # a trailing newline, as editors leave it
    settings = config(mosquitto_auth.port, prefix, username=user, password_file=str(password_file))
    async with subscribed(mosquitto_auth.port, f"{prefix}/#", username=user, password=password) as inbox:
        async with MqttOutput(settings, gateway=GATEWAY) as output:
            await output.write([record(chamber_series(), T0, v=1.0)])
        await inbox.wait_for(f"{prefix}/{GATEWAY}/htol-07/chamber")


async def test_tls_works_with_the_ca_and_fails_clearly_without_it(
    mosquitto_tls: MosquittoServer, tls_files: TlsFiles, prefix: str
) -> None:
    ca_file = str(tls_files.ca_cert)
    trusted = config(mosquitto_tls.port, prefix, host="localhost", tls={"ca_file": ca_file})
    async with MqttOutput(trusted, gateway=GATEWAY) as output:
        assert await output.write([record(chamber_series(), T0, v=1.0)]) == WriteResult(written=1)

    # Without ca_file the system CAs are used, and they do not know our test CA.
    untrusted = config(mosquitto_tls.port, prefix, host="localhost", tls={})
    with pytest.raises(FatalSinkError, match=r"^TLS handshake failed: .*certificate") as refused:
        await MqttOutput(untrusted, gateway=GATEWAY).open()
    assert f"localhost:{mosquitto_tls.port}" in str(refused.value)

    # The certificate names localhost, not 127.0.0.1: refused, unless insecure skips the host name check
    # (and only that: the certificate is still verified against the CA).
    by_address = config(mosquitto_tls.port, prefix, tls={"ca_file": ca_file})
    with pytest.raises(FatalSinkError, match=r"^TLS handshake failed: IP address mismatch"):
        await MqttOutput(by_address, gateway=GATEWAY).open()
    insecure = config(mosquitto_tls.port, prefix, tls={"ca_file": ca_file, "insecure": True})
    async with MqttOutput(insecure, gateway=GATEWAY) as output:
        assert await output.write([record(chamber_series(), T0, v=1.0)]) == WriteResult(written=1)
    with pytest.raises(FatalSinkError, match=r"^TLS handshake failed: .*certificate"):
        await MqttOutput(config(mosquitto_tls.port, prefix, tls={"insecure": True}), gateway=GATEWAY).open()

    with pytest.raises(RetriableSinkError, match=r"if this port expects TLS, configure tls"):
        await MqttOutput(config(mosquitto_tls.port, prefix, timeout="1s"), gateway=GATEWAY).open()

    missing = config(mosquitto_tls.port, prefix, tls={"ca_file": str(tls_files.ca_cert.with_name("nope.pem"))})
    with pytest.raises(FatalSinkError, match="cannot load the MQTT TLS files"):
        await MqttOutput(missing, gateway=GATEWAY).open()


async def test_an_unreachable_broker_is_logged_once_and_retried_until_it_appears(tmp_path: Path, prefix: str) -> None:
    server = MosquittoServer(tmp_path / "mosquitto")
    server.port = free_port()  # nothing listens there yet
    output = MqttOutput(config(server.port, prefix, max_backoff="500ms"), gateway=GATEWAY)
    ring = RingBuffer(1000)
    stats = OutputStats(output.name)
    runner = OutputRunner(output, ring.reader(output.name), output.config, stats)
    ring.extend(record(chamber_series(), T0 + i, n=i) for i in range(10))
    with capture_logs() as logs:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(runner.run(), name="mqtt runner")
            async with asyncio.timeout(10):
                while stats.retries < 3:
                    await asyncio.sleep(0.05)
            assert "is unreachable" in stats.last_error
            await asyncio.to_thread(server.start)
            try:
                async with subscribed(server.port, f"{prefix}/#") as inbox:
                    ring.extend(record(chamber_series(), T0 + 10 + i, n=10 + i) for i in range(10))
                    await inbox.wait_for(f"{prefix}/{GATEWAY}/htol-07/chamber", 10)
                    runner.begin_drain()
                    await task
            finally:
                await asyncio.to_thread(server.stop)
    assert stats.delivered == 20
    failures = [entry for entry in logs if entry["event"] == "output_failed"]
    assert len(failures) == 1, logs  # once per outage, not once per attempt
    assert [entry["event"] for entry in logs].count("output_recovered") == 1


# --- delivery across outages ---------------------------------------------------------------------------------


async def test_a_broker_restart_during_ingest_loses_nothing_at_qos_1(
    mosquitto_private: MosquittoServer, prefix: str
) -> None:
    """Records keep coming while the broker goes away and comes back; every one arrives at least once.

    The subscriber has a persistent session (clean_session off, QoS 1) on a broker with persistence, so what the
    broker acknowledged before it stopped is still delivered to it after the restart.
    """
    broker = mosquitto_private
    topic = f"{prefix}/{GATEWAY}/htol-07/chamber"
    total = 1500
    received: Counter[int] = Counter()  # by record time: a duplicate is a record received again

    async def subscribe_persistently(subscribed_once: asyncio.Event) -> None:
        while True:
            client = aiomqtt.Client("127.0.0.1", broker.port, identifier=f"{prefix}-sub", clean_session=False)
            try:
                async with client:
                    await client.subscribe(topic, qos=1)
                    subscribed_once.set()
                    async for message in client.messages:
                        received[payload(message)["time"]] += 1
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    output = MqttOutput(
        config(broker.port, prefix, batch_size=50, flush_interval="20ms", max_backoff="1s"), gateway=GATEWAY
    )
    ring = RingBuffer(100_000)
    stats = OutputStats(output.name)
    runner = OutputRunner(output, ring.reader(output.name), output.config, stats)
    series = chamber_series()
    async with asyncio.TaskGroup() as group:
        subscribed_once = asyncio.Event()
        subscriber = group.create_task(subscribe_persistently(subscribed_once), name="persistent subscriber")
        await subscribed_once.wait()
        delivery = group.create_task(runner.run(), name="mqtt runner")
        for index in range(total):
            ring.append(record(series, T0 + index, n=index))
            if index == total // 3:
                await asyncio.to_thread(broker.stop)
            if index == total // 2:
                await asyncio.to_thread(broker.start)  # same port, same persistence file
            await asyncio.sleep(0.002)
        runner.begin_drain()
        await delivery
        async with asyncio.timeout(20):
            while len(received) < total:
                await asyncio.sleep(0.05)
        subscriber.cancel()
    expected = {T0 + index for index in range(total)}
    duplicates = sum(count - 1 for count in received.values())
    print(f"\nMosquitto restart: {total} records, {len(expected - set(received))} lost, {duplicates} duplicates")
    assert set(received) == expected
    assert stats.delivered == total  # counted once, when acknowledged: a batch sent again is not counted twice
    assert stats.retries >= 1


async def test_a_hung_broker_fails_the_batch_after_timeout_and_the_next_write_reconnects(
    mosquitto_private: MosquittoServer, prefix: str
) -> None:
    broker = mosquitto_private
    async with MqttOutput(config(broker.port, prefix, timeout="1s"), gateway=GATEWAY) as output:
        broker.send_signal(signal.SIGSTOP)  # connections stay open, nothing is acknowledged any more
        try:
            started = time.monotonic()
            with pytest.raises(RetriableSinkError, match="acknowledged nothing for 1 s"):
                await output.write([record(chamber_series(), T0 + i, n=i) for i in range(100)])
            assert time.monotonic() - started < 5
        finally:
            broker.send_signal(signal.SIGCONT)
        async with subscribed(broker.port, f"{prefix}/#") as inbox:
            assert await output.write([record(chamber_series(), T0, n=0)]) == WriteResult(written=1)
            await inbox.wait_for(f"{prefix}/{GATEWAY}/htol-07/chamber")


async def test_a_connection_lost_between_batches_is_replaced_by_the_next_write(
    mosquitto_private: MosquittoServer, prefix: str
) -> None:
    broker = mosquitto_private
    async with MqttOutput(config(broker.port, prefix), gateway=GATEWAY) as output:
        await output.write([record(chamber_series(), T0, n=0)])
        await asyncio.to_thread(broker.stop)
        with pytest.raises(RetriableSinkError, match="unreachable"):
            await output.write([record(chamber_series(), T0 + 1, n=1)])
        await asyncio.to_thread(broker.start)
        async with subscribed(broker.port, f"{prefix}/#") as inbox:
            assert await output.write([record(chamber_series(), T0 + 2, n=2)]) == WriteResult(written=1)
            [message] = await inbox.wait_for(f"{prefix}/{GATEWAY}/htol-07/chamber")
            # Reconnecting publishes the online status again (the broker forgot it: no persistence file yet).
            await inbox.wait_for(f"{prefix}/{GATEWAY}/status")
    assert payload(message)["fields"] == {"n": 2}


# --- failover between hosts ----------------------------------------------------------------------------------


def test_hosts_take_host_port_pairs_and_exclude_host() -> None:
    settings = MqttOutputConfig.model_validate({"hosts": ["nats-1:1883", "nats-2", "[::1]:1884", "::1"], "port": 2883})
    assert settings.brokers == [("nats-1", 1883), ("nats-2", 2883), ("::1", 1884), ("::1", 2883)]
    assert MqttOutputConfig.model_validate({"host": "b", "tls": {}}).brokers == [("b", 8883)]
    with pytest.raises(ValidationError, match="host or hosts, not both"):
        MqttOutputConfig.model_validate({"host": "a", "hosts": ["b"]})
    with pytest.raises(ValidationError, match="expected host:port"):
        MqttOutputConfig.model_validate({"hosts": ["a:x"]})
    with pytest.raises(ValidationError, match="between 1 and 65535"):
        MqttOutputConfig.model_validate({"hosts": ["a:70000"]})


async def test_hosts_connect_to_the_first_that_accepts_and_fail_over_on_disconnect(
    mosquitto_private: MosquittoServer, mosquitto: MosquittoServer, prefix: str
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    first, second = f"127.0.0.1:{mosquitto_private.port}", f"127.0.0.1:{mosquitto.port}"
    settings = MqttOutputConfig.model_validate(
        {"hosts": [dead, first, second], "topic_prefix": prefix, "timeout": "3s"}
    )
    output = MqttOutput(settings, gateway=GATEWAY)
    topic = f"{prefix}/{GATEWAY}/htol-07/chamber"
    with capture_logs() as logs:
        async with subscribed(mosquitto_private.port, f"{prefix}/#") as on_first:
            await output.open()
            assert output.broker == first
            assert await output.write([record(chamber_series(), T0, n=0)]) == WriteResult(written=1)
            await on_first.wait_for(topic)
        await asyncio.to_thread(mosquitto_private.stop)  # the connection drops: the next write fails over
        async with subscribed(mosquitto.port, f"{prefix}/#") as on_second:
            with contextlib.suppress(RetriableSinkError):  # the batch under way when the broker went, if noticed
                await output.write([record(chamber_series(), T0 + 1, n=1)])
            assert await output.write([record(chamber_series(), T0 + 2, n=2)]) == WriteResult(written=1)
            assert output.broker == second
            received = await on_second.wait_for(topic)
        await output.close()
    assert payload(received[-1])["fields"] == {"n": 2}
    unreachable = [entry["broker"] for entry in logs if entry["event"] == "mqtt_broker_unreachable"]
    # The dead one logged once, however many connections tried it; the one just lost was not tried before the
    # next (a powered-off broker would cost a whole timeout per reconnection).
    assert unreachable == [dead]


async def test_resend_window_publishes_what_was_acknowledged_last_again_on_the_next_broker(
    mosquitto_private: MosquittoServer, mosquitto: MosquittoServer, prefix: str
) -> None:
    first, second = f"127.0.0.1:{mosquitto_private.port}", f"127.0.0.1:{mosquitto.port}"
    settings = MqttOutputConfig.model_validate(
        {"hosts": [first, second], "topic_prefix": prefix, "timeout": "3s", "resend_window": "500ms"}
    )
    topic = f"{prefix}/{GATEWAY}/htol-07/chamber"
    series = chamber_series()
    async with MqttOutput(settings, gateway=GATEWAY) as output:
        assert await output.write([record(series, T0, n=0)]) == WriteResult(written=1)
        await asyncio.sleep(0.8)  # out of the window by the time of the last acknowledgement
        assert await output.write([record(series, T0 + 1, n=1), record(series, T0 + 2, n=2)]) == WriteResult(2)
        assert await output.write([record(series, T0 + 3, n=3)]) == WriteResult(written=1)
        await asyncio.to_thread(mosquitto_private.stop)
        async with subscribed(mosquitto.port, f"{prefix}/#") as on_second:
            resent = 0
            for _ in range(3):  # the write under way when the broker went fails if the loss is noticed then
                try:
                    result = await output.write([record(series, T0 + 4, n=4)])
                except RetriableSinkError:
                    continue
                resent += result.resent
                break
            messages = await on_second.wait_for(topic, count=4)
            # Nothing more once resent: the next batch is just itself.
            assert await output.write([record(series, T0 + 5, n=5)]) == WriteResult(written=1)
            messages = await on_second.wait_for(topic, count=5)
    assert output.broker == second
    assert resent == 3
    assert [payload(message)["fields"]["n"] for message in messages] == [1, 2, 3, 4, 5]


def test_resend_window_is_off_by_default_and_at_most_a_minute() -> None:
    assert MqttOutputConfig.model_validate({}).resend_window == 0
    assert MqttOutputConfig.model_validate({"resend_window": "5s"}).resend_window == 5
    with pytest.raises(ValidationError, match="less than or equal to 60"):
        MqttOutputConfig.model_validate({"resend_window": "2m"})


# --- the daemon as a process ---------------------------------------------------------------------------------


async def test_the_daemon_streams_records_and_a_sigkill_leaves_the_gateway_offline(
    mosquitto: MosquittoServer, prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    simulator = subprocess.Popen(  # noqa: ASYNC220 - starting a process does not block
        [*EDGE_DAQ, "simulate", "watlow-f4", "--tcp", f"127.0.0.1:{port}", "--seed", "3"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    daemon: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.to_thread(wait_for_port, port)
        (tmp_path / "rigs.d").mkdir()
        (tmp_path / "rigs.d" / "oven.yaml").write_text(
            "rig: oven\ninstruments:\n"
            f"  - {{name: chamber, profile: watlow-f4, host: 127.0.0.1, port: {port}, interval: 100ms}}\n"
        )
        gateway = tmp_path / "edge-daq.yaml"
        gateway.write_text(
            "gateway: gw-will\noutputs:\n  mqtt:\n"
            f"    port: {mosquitto.port}\n    topic_prefix: {prefix}\n    flush_interval: 100ms\n    keepalive: 5s\n"
        )
        status_topic, data_topic = f"{prefix}/gw-will/status", f"{prefix}/gw-will/oven/chamber"
        async with subscribed(mosquitto.port, f"{prefix}/#") as inbox:
            daemon = subprocess.Popen(  # noqa: ASYNC220
                [*EDGE_DAQ, "run", "-c", str(gateway)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            [online] = await inbox.wait_for(status_topic, within=20)
            data = await inbox.wait_for(data_topic, 3, within=20)
            daemon.kill()  # SIGKILL: no clean close, only the last will can tell
            await asyncio.to_thread(daemon.wait, 10)
            statuses = await inbox.wait_for(status_topic, 2)
        async with subscribed(mosquitto.port, status_topic) as late:
            [retained] = await late.wait_for(status_topic)
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
        simulator.send_signal(signal.SIGTERM)
        simulator.wait(10)
    assert payload(online)["state"] == "online"
    first = payload(data[0])
    assert first["measurement"] == "chamber"
    assert first["tags"]["rig"] == "oven"
    assert first["tags"]["gateway"] == "gw-will"
    assert first["fields"]["model_code"] == 5270
    assert isinstance(first["time"], int)
    assert payload(statuses[-1]) | {"started": None} == {
        "state": "offline",
        "reason": "connection lost",
        "gateway": "gw-will",
        "version": "0.1.0",
        "started": None,
    }
    assert retained.retain
    assert payload(retained)["state"] == "offline"
