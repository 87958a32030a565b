"""The OPC UA driver's conversions of asyncua's values, status codes and timestamps (no server)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from asyncua import ua

from edge_daq.drivers.opcua.config import OpcUaPoint
from edge_daq.drivers.opcua.values import field_value, status_text, timestamp_ns


def test_values_keep_their_types() -> None:
    def point(**keys: Any) -> OpcUaPoint:
        return OpcUaPoint.model_validate({"name": "p", "node": "i=1"} | keys)

    double = ua.Variant(21.5, ua.VariantType.Double)
    assert field_value(point(), double) == 21.5
    assert field_value(point(scale=0.1, offset=-1), ua.Variant(250, ua.VariantType.Int16)) == pytest.approx(24.0)
    integer = field_value(point(type="int"), ua.Variant(2**40, ua.VariantType.Int64))
    assert integer == 2**40
    assert type(integer) is int
    assert field_value(point(type="float"), ua.Variant(7, ua.VariantType.UInt32)) == 7.0
    assert field_value(point(type="bool"), ua.Variant(True, ua.VariantType.Boolean)) is True
    text = ua.Variant(ua.LocalizedText("Run\x1b[2J"), ua.VariantType.LocalizedText)
    assert field_value(point(type="str"), text) == "Run[2J"
    for bad_point, variant, message in [
        (point(), ua.Variant(True, ua.VariantType.Boolean), "Boolean, not a number"),
        (point(type="int"), double, "Double, not an integer"),
        (point(type="bool"), ua.Variant(1, ua.VariantType.Int32), "not a Boolean"),
        (point(type="str"), double, "not a String"),
        (point(), ua.Variant([1.0, 2.0], ua.VariantType.Double), "an array"),
        (point(), ua.Variant(float("nan"), ua.VariantType.Double), "not a finite number"),
        (point(), ua.Variant(), "no value"),
        (point(type="int"), ua.Variant(2**64 - 1, ua.VariantType.UInt64), "64 bits"),
        (point(type="str", max_length=3), ua.Variant("abcd", ua.VariantType.String), "over max_length"),
    ]:
        with pytest.raises(ValueError, match=message):
            field_value(bad_point, variant)


def test_timestamps_and_status_codes() -> None:
    stamp = datetime(2026, 12, 2, 5, 16, 0, 511711, tzinfo=UTC)
    assert timestamp_ns(stamp) == 1796188560511711000
    assert timestamp_ns(stamp.replace(tzinfo=None)) == 1796188560511711000
    assert timestamp_ns(stamp, 250_000) == 1796188560511711250
    assert timestamp_ns(None) is None
    assert timestamp_ns(datetime(1601, 1, 1, tzinfo=UTC)) is None  # OPC UA's "no time"
    assert status_text(ua.StatusCode(ua.UInt32(ua.StatusCodes.BadSensorFailure))) == "BadSensorFailure (0x808C0000)"
    assert status_text(ua.StatusCode(ua.UInt32(0x80FF0000))).endswith("(0x80FF0000)")
