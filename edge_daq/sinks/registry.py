"""The output registry: one line per ``type:`` an ``outputs:`` entry may name.

An entry names the output's config model and its constructor, as ``"module:attribute"`` strings imported on
first use (or the objects themselves, for a plugin registered at run time with :func:`register`). The config
union of ``outputs:`` (``edge_daq.config.models.OutputsConfig``) and the daemon's construction of outputs both
go through here, so a new output type is its module plus one line below.

A constructor is called as ``make_output(name, config, context)`` and returns an
:class:`~edge_daq.sinks.base.Output` whose ``name`` is the instance name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_daq.sinks.base import Output, OutputConfig


@dataclass(frozen=True, slots=True)
class OutputContext:
    """What a constructor may use besides its own config."""

    gateway: str  # the gateway's name (MQTT topics and client id)


OutputFactory = Callable[[str, Any, OutputContext], "Output"]


@dataclass(frozen=True, slots=True)
class _Entry:
    config_model: str | type[OutputConfig]  # "module:attribute" of the OutputConfig subclass, or the class
    factory: str | OutputFactory  # "module:attribute" of make_output, or the callable


_REGISTRY: dict[str, _Entry] = {
    "influxdb": _Entry("edge_daq.sinks.influxdb:InfluxDBOutputConfig", "edge_daq.sinks.influxdb:make_output"),
    "mqtt": _Entry("edge_daq.sinks.mqtt:MqttOutputConfig", "edge_daq.sinks.mqtt:make_output"),
    "file": _Entry("edge_daq.sinks.file:FileOutputConfig", "edge_daq.sinks.file:make_output"),
}


def _resolve(target: str | Any) -> Any:
    if not isinstance(target, str):
        return target
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def register(type_name: str, config_model: str | type[OutputConfig], factory: str | OutputFactory) -> None:
    """Add an output type (a plugin, or a test's throwaway type); a name already taken is an error."""
    if type_name in _REGISTRY:
        raise ValueError(f"output type {type_name!r} is already registered")
    _REGISTRY[type_name] = _Entry(config_model, factory)


def unregister(type_name: str) -> None:
    _REGISTRY.pop(type_name, None)


def type_names() -> list[str]:
    """Every ``type:`` value, sorted."""
    return sorted(_REGISTRY)


def config_model(type_name: str) -> type[OutputConfig]:
    try:
        entry = _REGISTRY[type_name]
    except KeyError:
        raise KeyError(f"unknown output type {type_name!r}; known types: {', '.join(type_names())}") from None
    model: type[OutputConfig] = _resolve(entry.config_model)
    return model


def type_of(config: OutputConfig) -> str:
    """The registered type whose config model ``config`` is an instance of."""
    for name in type_names():
        if type(config) is config_model(name):
            return name
    raise KeyError(f"no output type has the config model {type(config).__name__}")


def build(name: str, config: OutputConfig, context: OutputContext) -> Output:
    """The output instance ``name`` of the type of ``config``."""
    factory: OutputFactory = _resolve(_REGISTRY[type_of(config)].factory)
    output = factory(name, config, context)
    output.name = name
    return output
