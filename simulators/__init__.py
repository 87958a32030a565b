"""Simulated instruments: real Modbus, SCPI and OPC UA servers driven by live models, for CI, demos and tests.

The simulators are independent of the daemon (they never import ``edge_daq``) and the daemon never
imports them. Start one in-process::

    async with serve("watlow-f4", port=0, seed=1, time_scale=60, setpoint=85.0) as server:
        ...  # poll 127.0.0.1:server.port, unit 1

or from the command line (``edge-daq simulate`` delegates to :func:`simulators.cli.main`)::

    edge-daq simulate watlow-f4 --tcp 127.0.0.1:5020 --seed 1 --time-scale 60

The OPC UA chamber (``serve("opcua-chamber", ...)`` or :func:`serve_opcua`) imports asyncua only when it runs.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from simulators import (
    burnin_board,
    endurance_rig,
    espec_p300,
    event_detector,
    keithley_2400,
    keysight_daq970a,
    watlow_f4,
)
from simulators.line_server import LineDevice, LineServer
from simulators.modbus_server import Faults, ModbusDevice, ModbusTcpServer, ModelClock, UnknownUnitPolicy
from simulators.rtu_server import ModbusRtuServer, Parity

if TYPE_CHECKING:
    from simulators.opcua_chamber import OpcUaChamberServer

__all__ = [
    "BUS_SIMULATORS",
    "LINE_SIMULATORS",
    "OPCUA_SIMULATORS",
    "SIMULATORS",
    "BusSimulatorSpec",
    "Faults",
    "LineServer",
    "LineSimulatorSpec",
    "ModbusRtuServer",
    "ModbusTcpServer",
    "SimulatorSpec",
    "create_line_server",
    "create_rtu_server",
    "create_server",
    "serve",
    "serve_opcua",
    "serve_rtu",
]


@dataclass(frozen=True, slots=True)
class SimulatorSpec:
    """One kind of simulated instrument: how to build a unit's model and its command-line options."""

    kind: str
    description: str
    default_port: int
    create_device: Callable[..., ModbusDevice]
    """Called as ``create_device(unit=..., seed=..., clock=..., **model_options)``."""
    add_arguments: Callable[[argparse.ArgumentParser], None]
    options_from_args: Callable[[argparse.Namespace], dict[str, Any]]


SIMULATORS: dict[str, SimulatorSpec] = {
    spec.kind: spec
    for spec in (
        SimulatorSpec(
            kind="watlow-f4",
            description="Watlow F4 chamber controller: first-order thermal model, PV/SP/power registers",
            default_port=5020,
            create_device=watlow_f4.WatlowF4,
            add_arguments=watlow_f4.add_arguments,
            options_from_args=watlow_f4.options_from_args,
        ),
        SimulatorSpec(
            kind="burnin-board",
            description="burn-in board: per-socket supply voltage, drifting DUT current, over-current latch",
            default_port=5021,
            create_device=burnin_board.BurnInBoard,
            add_arguments=burnin_board.add_arguments,
            options_from_args=burnin_board.options_from_args,
        ),
        SimulatorSpec(
            kind="event-detector",
            description="event detector on a cycling chamber: latched per-channel event counts, seeded intermittents",
            default_port=5022,
            create_device=event_detector.EventDetector,
            add_arguments=event_detector.add_arguments,
            options_from_args=event_detector.options_from_args,
        ),
    )
}


@dataclass(frozen=True, slots=True)
class BusSimulatorSpec:
    """A whole bus of different slaves sharing one model (a rig), served over Modbus RTU."""

    kind: str
    description: str
    default_units: tuple[int, ...]
    create_devices: Callable[..., dict[int, ModbusDevice]]
    """Called as ``create_devices(units=..., seed=..., clock=..., **model_options)``."""
    add_arguments: Callable[[argparse.ArgumentParser], None]
    options_from_args: Callable[[argparse.Namespace], dict[str, Any]]


BUS_SIMULATORS: dict[str, BusSimulatorSpec] = {
    spec.kind: spec
    for spec in (
        BusSimulatorSpec(
            kind="endurance-rig",
            description="mechanical endurance rig on one RS-485 bus: VFD, load cell (float32 CDAB), vibration monitor",
            default_units=(1, 2, 3),
            create_devices=endurance_rig.create_devices,
            add_arguments=endurance_rig.add_arguments,
            options_from_args=endurance_rig.options_from_args,
        ),
    )
}
"""Kept apart from :data:`SIMULATORS` (one model per unit, served on Modbus TCP or RTU)."""


def create_server(
    kind: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int | None = None,
    units: Iterable[int] = (1,),
    faults: Faults | Iterable[str] = (),
    time_scale: float = 1.0,
    latency: float = 0.0,
    unknown_unit: UnknownUnitPolicy = "exception",
    **model_options: Any,
) -> ModbusTcpServer:
    """A not yet started server hosting one ``kind`` model per unit id.

    ``seed=None`` draws a seed (each model keeps it as ``.seed``); every unit's model is seeded from the
    seed and its unit id, and all share one model clock. ``faults`` is a :class:`Faults` or ``--fault``
    strings; ``model_options`` go to the model's constructor (for example ``setpoint=85.0`` for the
    Watlow F4, ``sockets=64`` for the burn-in board). Raise :class:`KeyError` for an unknown kind and
    :class:`ValueError`/:class:`TypeError` for bad options.
    """
    spec = SIMULATORS.get(kind)
    if spec is None:
        raise KeyError(f"unknown simulator {kind!r}; known: {', '.join(sorted(SIMULATORS))}")
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    if not isinstance(faults, Faults):
        faults = Faults.parse(faults)
    clock = ModelClock(time_scale)
    devices = {
        unit: spec.create_device(unit=unit, seed=seed, clock=clock, **model_options) for unit in sorted(set(units))
    }
    return ModbusTcpServer(devices, host=host, port=port, faults=faults, latency=latency, unknown_unit=unknown_unit)


OPCUA_SIMULATORS = {
    "opcua-chamber": "OPC UA chamber: the Watlow F4 thermal model on asyncua's server, security None/Basic256Sha256",
}
"""Served by :mod:`simulators.opcua_chamber` (imported only when one runs: it pulls in asyncua)."""


@asynccontextmanager
async def serve_opcua(
    kind: str = "opcua-chamber",
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int | None = None,
    time_scale: float = 1.0,
    **options: Any,
) -> AsyncIterator[OpcUaChamberServer]:
    """Run the OPC UA chamber for the duration of the ``async with`` block; read ``.port`` and ``.endpoint``.

    ``options`` go to :class:`~simulators.opcua_chamber.OpcUaChamberServer` (``security``, ``certificate``,
    ``private_key``, ``users``, ``bad_nodes``, ``update_interval``) and to the Watlow F4 model (``setpoint``...).
    """
    if kind not in OPCUA_SIMULATORS:
        raise KeyError(f"unknown OPC UA simulator {kind!r}; known: {', '.join(OPCUA_SIMULATORS)}")
    from simulators.opcua_chamber import OpcUaChamberServer

    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    async with OpcUaChamberServer(host=host, port=port, seed=seed, time_scale=time_scale, **options) as server:
        yield server


@overload
def serve(kind: Literal["opcua-chamber"], **options: Any) -> AbstractAsyncContextManager[OpcUaChamberServer]: ...


@overload
def serve(
    kind: str,
    *,
    host: str = ...,
    port: int = ...,
    seed: int | None = ...,
    units: Iterable[int] = ...,
    faults: Faults | Iterable[str] = ...,
    time_scale: float = ...,
    latency: float = ...,
    unknown_unit: UnknownUnitPolicy = ...,
    **model_options: Any,
) -> AbstractAsyncContextManager[ModbusTcpServer]: ...


def serve(kind: str, **options: Any) -> AbstractAsyncContextManager[Any]:
    """Run a ``kind`` simulator for the duration of the ``async with`` block (see :func:`create_server`; the
    OPC UA kinds: :func:`serve_opcua`). ``port=0`` picks a free port: read it from the yielded server's ``.port``.
    """
    if kind in OPCUA_SIMULATORS:
        return serve_opcua(kind, **options)
    return _serve_modbus(kind, **options)


@asynccontextmanager
async def _serve_modbus(
    kind: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int | None = None,
    units: Iterable[int] = (1,),
    faults: Faults | Iterable[str] = (),
    time_scale: float = 1.0,
    latency: float = 0.0,
    unknown_unit: UnknownUnitPolicy = "exception",
    **model_options: Any,
) -> AsyncIterator[ModbusTcpServer]:
    server = create_server(
        kind,
        host=host,
        port=port,
        seed=seed,
        units=units,
        faults=faults,
        time_scale=time_scale,
        latency=latency,
        unknown_unit=unknown_unit,
        **model_options,
    )
    async with server:
        yield server


def create_rtu_server(
    kind: str,
    *,
    link: str | Path | None = None,
    tcp: tuple[str, int] | None = None,
    baudrate: int = 19200,
    parity: Parity = "E",
    stopbits: int = 1,
    seed: int | None = None,
    units: Iterable[int] | None = None,
    faults: Faults | Iterable[str] = (),
    time_scale: float = 1.0,
    latency: float = 0.0,
    unknown_unit: UnknownUnitPolicy = "silent",
    framing: Literal["rtu", "ascii"] = "rtu",
    **model_options: Any,
) -> ModbusRtuServer:
    """A not yet started Modbus RTU bus on a pseudo-terminal ``link`` and/or raw TCP (a device server).

    ``kind`` is one of :data:`SIMULATORS` (one model per unit) or :data:`BUS_SIMULATORS` (a rig);
    ``framing="ascii"`` serves Modbus ASCII (7 data bits) instead of RTU.
    """
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    if not isinstance(faults, Faults):
        faults = Faults.parse(faults)
    clock = ModelClock(time_scale)
    devices: dict[int, ModbusDevice]
    if kind in BUS_SIMULATORS:
        bus = BUS_SIMULATORS[kind]
        chosen = list(units) if units is not None else list(bus.default_units)
        devices = bus.create_devices(units=chosen, seed=seed, clock=clock, **model_options)
    elif kind in SIMULATORS:
        spec = SIMULATORS[kind]
        devices = {
            unit: spec.create_device(unit=unit, seed=seed, clock=clock, **model_options)
            for unit in sorted(set(units if units is not None else (1,)))
        }
    else:
        known = sorted({*SIMULATORS, *BUS_SIMULATORS})
        raise KeyError(f"unknown Modbus simulator {kind!r}; known: {', '.join(known)}")
    return ModbusRtuServer(
        devices, link=link, tcp=tcp, baudrate=baudrate, parity=parity, stopbits=stopbits, faults=faults,
        latency=latency, unknown_unit=unknown_unit, seed=seed, framing=framing,
    )  # fmt: skip


@asynccontextmanager
async def serve_rtu(kind: str, **options: Any) -> AsyncIterator[ModbusRtuServer]:
    """Run :func:`create_rtu_server` for the duration of the ``async with`` block."""
    server = create_rtu_server(kind, **options)
    async with server:
        yield server


@dataclass(frozen=True, slots=True)
class LineSimulatorSpec:
    """A SCPI or ASCII instrument, served line by line on TCP and/or a pseudo-terminal."""

    kind: str
    description: str
    default_port: int
    create_device: Callable[..., LineDevice]
    """Called as ``create_device(seed=..., clock=..., **model_options)``."""
    add_arguments: Callable[[argparse.ArgumentParser], None]
    options_from_args: Callable[[argparse.Namespace], dict[str, Any]]


LINE_SIMULATORS: dict[str, LineSimulatorSpec] = {
    spec.kind: spec
    for spec in (
        LineSimulatorSpec(
            kind="keithley-2400",
            description="Keithley 2400 SourceMeter (SCPI): source, compliance, :READ?, error queue, failing DUT",
            default_port=5025,
            create_device=keithley_2400.Keithley2400,
            add_arguments=keithley_2400.add_arguments,
            options_from_args=keithley_2400.options_from_args,
        ),
        LineSimulatorSpec(
            kind="keysight-daq970a",
            description="Keysight DAQ970A scanner (SCPI): scan list, READ? with channel numbers, thermocouples",
            default_port=5026,
            create_device=keysight_daq970a.KeysightDaq970a,
            add_arguments=keysight_daq970a.add_arguments,
            options_from_args=keysight_daq970a.options_from_args,
        ),
        LineSimulatorSpec(
            kind="espec-p300",
            description="Espec P300 chamber controller (ASCII, CRLF): TEMP?, HUMI?, MON?, MODE?",
            default_port=10001,
            create_device=espec_p300.EspecP300,
            add_arguments=espec_p300.add_arguments,
            options_from_args=espec_p300.options_from_args,
        ),
    )
}


def create_line_server(
    kind: str,
    *,
    tcp: tuple[str, int] | None = None,
    link: str | Path | None = None,
    baudrate: int = 9600,
    seed: int | None = None,
    faults: Faults | Iterable[str] = (),
    time_scale: float = 1.0,
    latency: float = 0.0,
    **model_options: Any,
) -> LineServer:
    """A not yet started SCPI/ASCII simulator on TCP and/or a pseudo-terminal ``link``."""
    spec = LINE_SIMULATORS.get(kind)
    if spec is None:
        raise KeyError(f"unknown SCPI/ASCII simulator {kind!r}; known: {', '.join(sorted(LINE_SIMULATORS))}")
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    if not isinstance(faults, Faults):
        faults = Faults.parse(faults)
    device = spec.create_device(seed=seed, clock=ModelClock(time_scale), **model_options)
    return LineServer(device, tcp=tcp, link=link, baudrate=baudrate, faults=faults, latency=latency, seed=seed)
