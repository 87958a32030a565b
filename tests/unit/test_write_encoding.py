"""Writes to Modbus points: values encoded exactly as they are read, request PDUs per function code, the
``write:`` limits and their checks in ``edge-daq check``."""

from __future__ import annotations

import struct
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge_daq.config.loader import check_files
from edge_daq.drivers.modbus.codec import RegisterBlockDecoder
from edge_daq.drivers.modbus.config import ModbusPoint
from edge_daq.drivers.modbus.write import WriteValueError, coil_request, encode_registers, register_request
from edge_daq.record import FieldValue
from edge_daq.writes.limits import RateWindow, WriteLimits
from tests.modbus_wire import ORDERS, encode

NUMERIC = ["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]


def point(**keys: Any) -> ModbusPoint:
    return ModbusPoint.model_validate({"name": "p", "address": 0} | keys)


def decoded(p: ModbusPoint, data: bytes, order: str) -> FieldValue:
    fields: dict[str, FieldValue] = {}
    RegisterBlockDecoder.compile([(0, p)], start=0, byte_order=order).decode_into(data, fields, [])  # type: ignore[arg-type]
    return fields["p"]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("point_type", NUMERIC)
def test_a_written_value_is_the_registers_a_device_sends_for_it(point_type: str, order: str) -> None:
    value = 1250 if point_type.startswith("u") else -1250
    wire = encode_registers(point(type=point_type), value, byte_order=order)  # type: ignore[arg-type]
    # Independently of the codec: the layout Telegraf documents, letter by letter.
    assert list(struct.unpack(f">{len(wire) // 2}H", wire)) == encode(point_type, value, order)  # type: ignore[arg-type]
    assert decoded(point(type=point_type), wire, order) == value


@pytest.mark.parametrize("order", ORDERS)
def test_a_scaled_setpoint_reads_back_as_written(order: str) -> None:
    cases: list[tuple[dict[str, Any], float]] = [
        ({"type": "int16", "scale": 0.1}, -12.5),
        ({"type": "float32", "scale": 2.0, "offset": 1.0}, 7.5),
        ({"type": "uint32", "scale": 0.001}, 4.321),
    ]
    for keys, value in cases:
        p = point(**keys)
        assert decoded(p, encode_registers(p, value, byte_order=order), order) == pytest.approx(value)  # type: ignore[arg-type]


def test_float32_cdab_goes_low_word_first() -> None:
    assert encode_registers(point(type="float32"), 12.5, byte_order="CDAB") == bytes.fromhex("00004148")


def test_values_the_type_cannot_hold_are_refused() -> None:
    with pytest.raises(WriteValueError, match="does not fit int16"):
        encode_registers(point(type="int16", scale=0.1), 3300.0, byte_order="ABCD")
    with pytest.raises(WriteValueError):
        encode_registers(point(type="uint16"), -1, byte_order="ABCD")


def test_function_codes() -> None:
    assert coil_request(7, [True], multiple=False).pdu == bytes.fromhex("050007FF00")
    assert coil_request(7, [False], multiple=False).pdu == bytes.fromhex("0500070000")
    fc15 = coil_request(7, [True, False, True] * 3, multiple=True)
    assert fc15.pdu == bytes.fromhex("0F00070009026D01")  # bits 0..8 = 1 0 1 1 0 1 1 0 | 1
    assert fc15.expected_reply == bytes.fromhex("0F00070009")
    fc06 = register_request(300, bytes.fromhex("04E2"), multiple=False)
    assert (fc06.pdu, fc06.expected_reply) == (bytes.fromhex("06012C04E2"), bytes.fromhex("06012C04E2"))
    fc16 = register_request(300, bytes.fromhex("04E2"), multiple=True)
    assert fc16.pdu == bytes.fromhex("10012C00010204E2")
    assert fc16.expected_reply == bytes.fromhex("10012C0001")
    assert register_request(10, bytes(4), multiple=False).function == 16


def test_limits_step_and_rate() -> None:
    limits = WriteLimits(min=-70, max=180, step=0.5, max_rate=2)
    assert limits.refusal(125.0) is None
    assert "outside the write limits -70..180" in str(limits.refusal(181.0))
    assert "step 0.5" in str(limits.refusal(125.2))
    assert "not a finite number" in str(limits.refusal(float("nan")))
    window = RateWindow()
    for now in (0.0, 10.0):
        assert window.refusal(limits, now) is None
        window.record(now)
    assert "more than 2 writes per minute" in str(window.refusal(limits, 30.0))
    assert window.refusal(limits, 60.5) is None  # the first write left the sliding minute
    with pytest.raises(ValidationError, match=r"above write\.max"):
        WriteLimits(min=5, max=1)


def test_write_is_refused_where_modbus_cannot_write() -> None:
    with pytest.raises(ValidationError, match="input table is read-only"):
        point(table="input", write={"min": 0, "max": 1})
    with pytest.raises(ValidationError, match="string points cannot be written"):
        point(type="string", length=4, write={"min": 0, "max": 1})
    assert point(table="coil", type="bool", write={"min": 0, "max": 1}).write is not None


def test_check_refuses_a_write_limit_outside_the_type_range(tmp_path: Path) -> None:
    rig = tmp_path / "rig.yaml"
    rig.write_text(
        textwrap.dedent(
            """\
            rig: r1
            instruments:
              - name: chamber
                driver: modbus-tcp
                host: h
                points:
                  - {name: ok_sp, address: 300, type: int16, scale: 0.1, write: {min: -70, max: 180}}
                  - {name: temp_sp, address: 301, type: int16, scale: 0.1, write: {min: -70, max: 4000}}
                  - {name: enable, address: 302, type: uint16, write: {min: -1, max: 1}}
            """
        )
    )
    issues = [str(issue) for issue in check_files([rig])]
    assert len(issues) == 2, issues
    assert "write.max 4000 is outside the range of int16 after scale/offset (-3276.8..3276.7)" in issues[0]
    assert issues[0].startswith(f"{rig}:8:")
    assert "write.min -1 is outside the range of uint16 (0..65535)" in issues[1]
    assert issues[1].startswith(f"{rig}:9:")


def test_a_rig_without_write_loads_unchanged(tmp_path: Path) -> None:
    rig = tmp_path / "rig.yaml"
    rig.write_text(
        "rig: r1\ninstruments:\n  - {name: a, driver: modbus-tcp, host: h, points: [{name: p, address: 1}]}\n"
    )
    assert check_files([rig]) == []
