"""Simulated instruments: real Modbus TCP servers driven by live models, for CI, demos and tests.

The simulators are independent of the daemon (they never import ``edge_daq``) and the daemon never
imports them. Start one in-process::

    async with serve("watlow-f4", port=0, seed=1, time_scale=60, setpoint=85.0) as server:
        ...  # poll 127.0.0.1:server.port, unit 1

or from the command line (``edge-daq simulate`` delegates to :func:`simulators.cli.main`)::

    edge-daq simulate watlow-f4 --tcp 127.0.0.1:5020 --seed 1 --time-scale 60
"""

from __future__ import annotations

import argparse
import random
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from simulators import burnin_board, watlow_f4
from simulators.modbus_server import Faults, ModbusDevice, ModbusTcpServer, ModelClock, UnknownUnitPolicy

__all__ = ["SIMULATORS", "Faults", "ModbusTcpServer", "SimulatorSpec", "create_server", "serve"]


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
    )
}


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


@asynccontextmanager
async def serve(
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
    """Run a ``kind`` simulator for the duration of the ``async with`` block (see :func:`create_server`).

    ``port=0`` picks a free port: read it from the yielded server's ``.port``.
    """
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
