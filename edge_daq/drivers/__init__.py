"""The driver registry: one line per ``driver:`` value a rig file may use, the only place that spells it.

Each line names the driver's config model, the driver itself and, optionally, its checks across the whole
gateway (``check_gateway(instruments) -> list[ConfigIssue]``, given every instrument of the drivers that
share that hook), which the loader calls after validating every rig. All are imported lazily. The config
model and the checks are light (pydantic only), so ``edge-daq check`` can
validate every instrument without importing pyserial or a driver's protocol code; the plugin pulls those in
and is imported only when the daemon starts the instrument.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_daq.drivers.base import DriverPlugin, InstrumentConfig, PlacedInstrument
    from edge_daq.errors import ConfigIssue

GatewayCheck = Callable[["Sequence[PlacedInstrument]"], "list[ConfigIssue]"]
"""A driver's checks across a gateway: its instruments (of every rig) in, positioned issues out."""


@dataclass(frozen=True, slots=True)
class _Entry:
    config_model: str  # "module:attribute" of the InstrumentConfig subclass
    plugin: str  # "module:attribute" of the DriverPlugin instance
    checks: str | None = None  # "module:attribute" of a GatewayCheck, or None


_MODBUS_CHECKS = "edge_daq.drivers.modbus.checks:check_gateway"

_REGISTRY: dict[str, _Entry] = {
    "modbus-tcp": _Entry(
        "edge_daq.drivers.modbus.config:ModbusTcpConfig", "edge_daq.drivers.modbus.tcp:PLUGIN", _MODBUS_CHECKS
    ),
    "modbus-rtu": _Entry(
        "edge_daq.drivers.modbus.config:ModbusRtuConfig", "edge_daq.drivers.modbus.rtu:PLUGIN", _MODBUS_CHECKS
    ),
    "modbus-rtu-over-tcp": _Entry(
        "edge_daq.drivers.modbus.config:ModbusRtuOverTcpConfig",
        "edge_daq.drivers.modbus.rtu:OVER_TCP_PLUGIN",
        _MODBUS_CHECKS,
    ),
    "modbus-ascii": _Entry(
        "edge_daq.drivers.modbus.config:ModbusAsciiConfig", "edge_daq.drivers.modbus.ascii:PLUGIN", _MODBUS_CHECKS
    ),
    "opcua": _Entry("edge_daq.drivers.opcua.config:OpcUaConfig", "edge_daq.drivers.opcua.driver:PLUGIN"),
    "scpi-serial": _Entry(
        "edge_daq.drivers.scpi.config:ScpiSerialConfig", "edge_daq.drivers.scpi.driver:SERIAL_PLUGIN"
    ),
    "scpi-tcp": _Entry("edge_daq.drivers.scpi.config:ScpiTcpConfig", "edge_daq.drivers.scpi.driver:TCP_PLUGIN"),
    "visa": _Entry("edge_daq.drivers.scpi.config:VisaConfig", "edge_daq.drivers.scpi.visa:PLUGIN"),
}


def _import(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown driver {name!r}; known drivers: {', '.join(driver_names())}") from None


def driver_names() -> list[str]:
    """Every ``driver:`` value, sorted."""
    return sorted(_REGISTRY)


def config_model(name: str) -> type[InstrumentConfig]:
    """The instrument config model of a driver, without importing the driver's implementation."""
    model: type[InstrumentConfig] = _import(_entry(name).config_model)
    return model


def plugin(name: str) -> DriverPlugin[Any, Any]:
    """The driver itself; imports its protocol library."""
    driver: DriverPlugin[Any, Any] = _import(_entry(name).plugin)
    return driver


def gateway_check(name: str) -> GatewayCheck | None:
    """A driver's checks across the gateway, or None; drivers that share a hook return the same function."""
    target = _REGISTRY[name].checks if name in _REGISTRY else None
    if target is None:
        return None
    check: GatewayCheck = _import(target)
    return check
