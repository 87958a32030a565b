"""The OPC UA driver's config model (light: no asyncua); value conversions are tested with asyncua in
tests/integration/test_opcua.py."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from edge_daq.drivers import config_model, driver_names
from edge_daq.drivers.opcua.config import OpcUaConfig, OpcUaPoint
from edge_daq.drivers.opcua.driver import describe_endpoint


def make(**keys: Any) -> OpcUaConfig:
    base: dict[str, Any] = {
        "name": "chamber",
        "driver": "opcua",
        "endpoint": "opc.tcp://10.0.4.40:4840",
        "points": [{"name": "t", "node": "ns=2;s=Chamber.Temperature"}],
    }
    return OpcUaConfig.model_validate(base | keys)


def test_registered_and_light() -> None:
    assert "opcua" in driver_names()
    assert config_model("opcua") is OpcUaConfig
    script = (
        "import sys; from edge_daq import drivers; drivers.config_model('opcua');"
        "assert 'asyncua' not in sys.modules, 'asyncua imported'; assert 'cryptography' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


@pytest.mark.parametrize(
    "node",
    ["ns=2;s=Chamber.Temperature", "i=2258", "ns=3;i=1007", "nsu=urn:acme:chamber;s=Loop1.PV", "ns=1;s=a;b=c",
     "ns=2;g=72962B91-FA75-4AE6-8D28-B404DC7DAF63", "ns=2;b=M/RbKBsRVkePCePcx24oRA=="],
)  # fmt: skip
def test_node_ids_in_the_text_form(node: str) -> None:
    assert OpcUaPoint(name="p", node=node).node == node


@pytest.mark.parametrize(
    ("node", "message"),
    [("Chamber.Temperature", "not an OPC UA node id"), ("ns=70000;i=1", "0 to 65535"),
     ("ns=2;i=99999999999", "0 to 4294967295"), ("ns=2;x=1", "not an OPC UA node id"), ("ns=2;s=", "not an OPC UA")],
)  # fmt: skip
def test_bad_node_ids(node: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OpcUaPoint(name="p", node=node)


def test_browse_paths() -> None:
    for path in ["/Objects/2:Chamber/2:Temperature", "/0:Objects/2:Chamber.2:PV", "<0:HasComponent>2:X", "/2:a&/b"]:
        assert OpcUaPoint(name="p", path=path).path == path
    for path in ["Objects/Chamber", "/2:Chamber//", "/2:a<b"]:
        with pytest.raises(ValidationError, match="not an OPC UA browse path at character"):
            OpcUaPoint(name="p", path=path)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"points": [{"name": "p"}]}, "exactly one of node"),
        ({"points": [{"name": "p", "node": "i=1", "path": "/Objects"}]}, "exactly one of node"),
        ({"points": [{"name": "p", "node": "i=1", "type": "bool", "scale": 2}]}, "do not apply to bool"),
        ({"points": [{"name": "p", "node": "i=1", "max_length": 3}]}, "max_length applies to str"),
        ({"points": [{"name": "p", "node": "i=1"}, {"name": "p", "node": "i=2"}]}, "two points are named"),
        ({"endpoint": "tcp://h:4840"}, "an opc.tcp:// URL"),
        ({"endpoint": "opc.tcp://user:pw@h:4840"}, "not in the endpoint"),
        ({"endpoint": "opc.tcp://h:99999"}, "port"),
        ({"sampling_interval": "100ms"}, "apply to mode: subscribe"),
        ({"security_mode": "Sign"}, "need a security_policy"),
        ({"security_policy": "Basic256Sha256"}, "needs certificate and private_key"),
        ({"password": "x"}, "a password needs a username"),
        ({"username": "u", "password": "x", "password_file": "/run/pw"}, "not both"),
        ({"security_policy": "Basic128Rsa15"}, "None"),
    ],
)
def test_refused_configs(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make(**keys)


def test_defaults_and_subscription_intervals() -> None:
    config = make()
    assert (config.mode, config.effective_security_mode) == ("poll", "None")
    secure = make(security_policy="Basic256Sha256", certificate="/c.der", private_key="/k.pem", username="daq")
    assert secure.effective_security_mode == "SignAndEncrypt"
    assert describe_endpoint(secure) == "opc.tcp://10.0.4.40:4840 (Basic256Sha256/SignAndEncrypt, user daq)"
    assert describe_endpoint(config) == "opc.tcp://10.0.4.40:4840"
    sub = make(mode="subscribe", interval="2s")
    assert (sub.effective_publishing_interval, sub.effective_sampling_interval, sub.effective_queue_size) == (2, 2, 1)
    fast = make(mode="subscribe", interval="1s", publishing_interval="500ms", sampling_interval="100ms")
    assert fast.effective_queue_size == 5
    assert make(mode="subscribe", sampling_interval=0).effective_queue_size == 10
    assert make(mode="subscribe", queue_size=3).effective_queue_size == 3
