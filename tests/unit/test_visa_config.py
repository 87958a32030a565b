"""The ``visa`` driver's config: resource strings, the library key, links per resource or GPIB board, rig files
with the shipped VISA profiles (no pyvisa import: ``edge-daq check`` stays light)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_daq.config.loader import load_config
from edge_daq.drivers import config_model
from edge_daq.drivers.scpi.config import VisaConfig

POINTS = [{"query": ":READ?", "fields": ["v", "i"]}]


def visa(resource: str, **keys: object) -> VisaConfig:
    return VisaConfig.model_validate({"name": "smu", "driver": "visa", "resource": resource, "points": POINTS} | keys)


@pytest.mark.parametrize(
    ("resource", "board"),
    [
        ("TCPIP0::10.0.4.30::inst0::INSTR", None),
        ("TCPIP0::host::hislip0::INSTR", None),
        ("USB0::0x05E6::0x2450::04123456::INSTR", None),
        ("GPIB0::24::INSTR", 0),
        ("gpib2::5::INSTR", 2),
        ("GPIB::7::INSTR", 0),
        ("TCPIP0::host::5025::SOCKET", None),
    ],
)
def test_resource_strings(resource: str, board: int | None) -> None:
    config = visa(resource)
    assert config.gpib_board == board
    assert config.visa_library == "@py"


@pytest.mark.parametrize("resource", ["", "10.0.4.30", "GPIB0::24::INSTR\n", "TCPIP0::a b::INSTR", "::x"])
def test_bad_resource_strings_are_refused(resource: str) -> None:
    with pytest.raises(ValidationError, match="resource"):
        visa(resource)


def test_points_are_scpis() -> None:
    assert config_model("visa") is VisaConfig
    with pytest.raises(ValidationError, match="exactly one of name, fields"):
        visa("GPIB0::1::INSTR", points=[{"query": "X?"}])
    with pytest.raises(ValidationError, match="visa_library"):
        visa("GPIB0::1::INSTR", visa_library="@py\n")


def test_link_keys_put_a_gpib_board_on_one_link() -> None:
    from edge_daq.drivers.scpi.visa import PLUGIN

    keys = {PLUGIN.link_key(visa(resource)) for resource in ("GPIB0::24::INSTR", "GPIB0::25::INSTR", "GPIB::3::INSTR")}
    assert len(keys) == 1
    assert PLUGIN.link_key(visa("GPIB0::24::INSTR")) != PLUGIN.link_key(visa("GPIB0::24::INSTR", visa_library="@ivi"))
    assert PLUGIN.link_key(visa("TCPIP0::a::inst0::INSTR")) != PLUGIN.link_key(visa("TCPIP0::b::inst0::INSTR"))


def test_rig_files_with_the_shipped_visa_profiles_load(tmp_path: Path) -> None:
    (tmp_path / "rigs.d").mkdir()
    (tmp_path / "rigs.d" / "smu.yaml").write_text(
        textwrap.dedent("""\
            rig: htol-07
            instruments:
              - {name: smu1, profile: keithley-2450, resource: "USB0::0x05E6::0x2450::04123456::INSTR"}
              - {name: dmm1, profile: keysight-34465a, resource: "TCPIP0::10.0.4.31::hislip0::INSTR"}
        """)
    )
    gateway = tmp_path / "edge-daq.yaml"
    gateway.write_text("gateway: gw-test\nrigs: rigs.d/\n")
    instruments = load_config(gateway).rigs[0].instruments
    assert [type(config) for config in instruments] == [VisaConfig, VisaConfig]
    smu = instruments[0]
    assert isinstance(smu, VisaConfig)
    assert {name for point in smu.points for name in point.field_names} >= {"v", "i"}


def test_config_models_do_not_import_pyvisa() -> None:
    code = "import sys, edge_daq.drivers as d; d.config_model('visa'); print('pyvisa' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
