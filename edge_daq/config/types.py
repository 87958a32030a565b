"""The bottom layer of every config model: the base model, the name pattern and the value types.

Plugins (drivers, outputs, reliability) build their config models from this module alone, so that
``edge_daq.config`` can depend on the plugin registries without any plugin depending back on the loader.
It imports nothing of edge-daq but the value modules beside it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from edge_daq.config.units import Duration, Interval, Size, Timeout
from edge_daq.config.values import ConfigPath, DevicePath, HostName

__all__ = [
    "NAME_PATTERN",
    "ConfigPath",
    "DevicePath",
    "Duration",
    "HostName",
    "Interval",
    "Size",
    "StrictModel",
    "Timeout",
]

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, so a typo is never silently ignored.

    Numbers are finite: a NaN or an infinity in a scale, a limit or a rate would load and then poison every
    value computed from it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False, allow_inf_nan=False)
