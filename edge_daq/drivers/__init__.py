"""The driver registry: one line per ``driver:`` value a rig file may use.

Both halves are imported lazily. The config model is light (pydantic only), so ``edge-daq check`` can
validate every instrument without importing pyserial or a driver's protocol code; the plugin pulls those in
and is imported only when the daemon starts the instrument.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_daq.drivers.base import DriverPlugin, InstrumentConfig


@dataclass(frozen=True, slots=True)
class _Entry:
    config_model: str  # "module:attribute" of the InstrumentConfig subclass
    plugin: str  # "module:attribute" of the DriverPlugin instance


_REGISTRY: dict[str, _Entry] = {
    "modbus-tcp": _Entry("edge_daq.drivers.modbus.config:ModbusTcpConfig", "edge_daq.drivers.modbus.tcp:PLUGIN"),
    "modbus-rtu": _Entry("edge_daq.drivers.modbus.config:ModbusRtuConfig", "edge_daq.drivers.modbus.rtu:PLUGIN"),
    "modbus-rtu-over-tcp": _Entry(
        "edge_daq.drivers.modbus.config:ModbusRtuOverTcpConfig", "edge_daq.drivers.modbus.rtu:OVER_TCP_PLUGIN"
    ),
    "scpi-serial": _Entry(
        "edge_daq.drivers.scpi.config:ScpiSerialConfig", "edge_daq.drivers.scpi.driver:SERIAL_PLUGIN"
    ),
    "scpi-tcp": _Entry("edge_daq.drivers.scpi.config:ScpiTcpConfig", "edge_daq.drivers.scpi.driver:TCP_PLUGIN"),
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
