"""Configuration: the gateway file, rig files and instrument profiles (see the configuration contract).

The loader is imported on first use: ``edge_daq.drivers.base`` imports ``edge_daq.config.units``, which
runs this file, while the loader imports ``edge_daq.drivers.base``; importing it eagerly here would make
whichever of the two is imported first find the other half-initialised.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_daq.config.loader import CheckResult, LoadedConfig, check_config, check_files, load_config
    from edge_daq.config.models import GatewayConfig, RigConfig
    from edge_daq.config.units import Duration, Size

_EXPORTS = {
    "CheckResult": "edge_daq.config.loader",
    "LoadedConfig": "edge_daq.config.loader",
    "check_config": "edge_daq.config.loader",
    "check_files": "edge_daq.config.loader",
    "load_config": "edge_daq.config.loader",
    "GatewayConfig": "edge_daq.config.models",
    "RigConfig": "edge_daq.config.models",
    "Duration": "edge_daq.config.units",
    "Size": "edge_daq.config.units",
}
__all__ = [
    "CheckResult",
    "Duration",
    "GatewayConfig",
    "LoadedConfig",
    "RigConfig",
    "Size",
    "check_config",
    "check_files",
    "load_config",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
