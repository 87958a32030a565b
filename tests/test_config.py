"""Configuration loading: positions of every problem, profiles, cross-file checks and ``edge-daq check``."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import AfterValidator, ValidationError

from edge_daq import drivers
from edge_daq.cli.check import run_check
from edge_daq.config import loader
from edge_daq.config.loader import (
    PlacedInstrument,
    check_files,
    check_serial_ports,
    load_config,
    validation_issues,
)
from edge_daq.config.units import parse_duration, parse_size
from edge_daq.config.yaml_loader import LocatedDict, parse_yaml
from edge_daq.drivers.base import InstrumentConfig, StrictModel
from edge_daq.drivers.modbus.config import ModbusTcpConfig
from edge_daq.errors import ConfigError

CHAMBER_PROFILE = """\
profile: test-chamber
driver: modbus-tcp
byte_order: CDAB
timeout: 500ms
points:
  - {name: temp_pv, table: holding, address: 100, type: float32}
  - {name: temp_sp, table: holding, address: 102, type: float32}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def issues_of(*paths: Path) -> list[str]:
    return [str(issue) for issue in check_files(list(paths))]


def gateway_with_rigs(tmp_path: Path, *rigs: str, profiles: str = CHAMBER_PROFILE) -> Path:
    """A gateway file with rig files rigs.d/rig1.yaml, rig2.yaml, ... and one extra profile folder."""
    write(tmp_path / "profiles" / "chamber.yaml", profiles)
    for number, rig in enumerate(rigs, start=1):
        write(tmp_path / "rigs.d" / f"rig{number}.yaml", rig)
    return write(tmp_path / "edge-daq.yaml", "gateway: gw-test\nrigs: rigs.d/\nprofiles: [profiles/]\n")


@pytest.fixture(autouse=True)
def no_shipped_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests use their own profiles only: the shipped ones are another part's contract.
    monkeypatch.setattr(loader, "shipped_profiles_folder", lambda: tmp_path / "shipped")


# --- values -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("250ms", 0.25), ("2s", 2.0), ("1m", 60.0), ("12h", 43200.0), (3, 3.0), ("1.5", 1.5)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"), [("512KiB", 512 << 10), ("64MiB", 64 << 20), ("2GiB", 2 << 30), (4096, 4096)]
)
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


def test_a_bad_duration_is_reported_at_its_value(tmp_path: Path) -> None:
    rig = write(
        tmp_path / "rig.yaml",
        """\
        rig: r1
        instruments:
          - {name: a, driver: modbus-tcp, host: h, interval: 2 seconds, points: [{name: p, address: 1}]}
        """,
    )
    assert issues_of(rig) == [
        f"{rig}:3:54: expected a duration such as 250ms, 2s, 1m or 12h, got '2 seconds'",
    ]


# --- YAML reading -------------------------------------------------------------------------------------


def test_environment_variables_are_substituted_and_dollar_dollar_escapes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_DAQ_TEST_HOST", "10.0.4.17")
    data, issues = parse_yaml("host: ${EDGE_DAQ_TEST_HOST}\nnote: 'tcp://${EDGE_DAQ_TEST_HOST}:502 $${KEEP}'\n", "f")
    assert issues == []
    assert data == {"host": "10.0.4.17", "note": "tcp://10.0.4.17:502 ${KEEP}"}


def test_a_missing_environment_variable_is_reported_once_at_its_scalar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGE_DAQ_TEST_PORT", raising=False)
    rig = write(
        tmp_path / "rig.yaml",
        """\
        rig: r1
        instruments:
          - name: a
            driver: modbus-tcp
            host: h
            port: ${EDGE_DAQ_TEST_PORT}
            points: [{name: p, address: 1}]
        """,
    )
    # Not also "expected an integer" at the same place: the reader's issue says it all.
    assert issues_of(rig) == [f"{rig}:6:11: environment variable EDGE_DAQ_TEST_PORT is not set"]


def test_every_node_knows_its_file_line_and_column() -> None:
    data, _ = parse_yaml("rig: r1\ninstruments:\n  - name: a\n    points: [{name: p}]\n", "rig.yaml")
    assert isinstance(data, LocatedDict)
    assert str(data.key_mark("instruments")) == "rig.yaml:2:1"
    instrument = data["instruments"][0]
    assert str(data["instruments"].item_mark(0)) == "rig.yaml:3:5"
    assert str(instrument.value_mark("points")) == "rig.yaml:4:13"
    assert str(instrument["points"][0].value_mark("name")) == "rig.yaml:4:21"


def test_a_yaml_syntax_error_is_reported_at_the_problem(tmp_path: Path) -> None:
    rig = write(tmp_path / "rig.yaml", "rig: r1\ntags:\n  test: HTOL\n lot: 7\n")
    assert issues_of(rig) == [f"{rig}:4:2: YAML syntax: expected <block end>, but found '<block mapping start>'"]


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    rig = write(tmp_path / "rig.yaml", "rig: r1\ntags:\n  test: HTOL\n  test: THB\n")
    assert issues_of(rig) == [f"{rig}:4:3: duplicate key 'test' (first given on line 3)"]


def test_yaml_merge_keys_may_override_without_being_duplicates() -> None:
    data, issues = parse_yaml("base: &b {a: 1, b: 2}\nthis:\n  <<: *b\n  b: 3\n", "f")
    assert issues == []
    assert data["this"] == {"a": 1, "b": 3}


# --- validation errors --------------------------------------------------------------------------------


def test_an_unknown_key_is_reported_at_the_key_with_a_suggestion(tmp_path: Path) -> None:
    rig = write(
        tmp_path / "rig.yaml",
        """\
        rig: r1
        instruments:
          - name: a
            driver: modbus-tcp
            host: h
            points:
              - name: p
                adress: 100
        """,
    )
    assert issues_of(rig) == [
        f"{rig}:7:9: missing key 'address'",
        f"{rig}:8:9: unknown key 'adress' (did you mean 'address'?)",
    ]


def test_an_unknown_driver_is_reported_at_its_value_with_the_known_ones(tmp_path: Path) -> None:
    rig = write(tmp_path / "rig.yaml", "rig: r1\ninstruments:\n  - name: a\n    driver: modbus-tpc\n")
    known = ", ".join(drivers.driver_names())
    assert issues_of(rig) == [
        f"{rig}:4:13: unknown driver 'modbus-tpc' (did you mean 'modbus-tcp'?); known drivers: {known}"
    ]


def test_bad_values_and_rig_keys_are_all_reported(tmp_path: Path) -> None:
    rig = write(
        tmp_path / "rig.yaml",
        """\
        rig: htol 07
        tags: {lot: 2611}
        instruments:
          - {name: a, driver: modbus-tcp, host: h, points: [{name: p, table: holdng, address: 1}]}
          - {name: b, driver: modbus-tcp, host: h, port: 70000, points: []}
        """,
    )
    assert issues_of(rig) == [
        f"{rig}:1:6: expected a name of letters, digits, '_', '.' and '-', not starting with '.' or '-', got 'htol 07'",
        f"{rig}:2:13: expected a string (put the value in quotes), got 2611",
        f"{rig}:4:70: expected 'holding', 'input', 'coil' or 'discrete' (did you mean 'holding'?), got 'holdng'",
        f"{rig}:5:50: must be less than or equal to 65535, got 70000",
        f"{rig}:5:65: expected at least 1 item",
    ]


def test_gateway_file_errors(tmp_path: Path) -> None:
    gateway = write(
        tmp_path / "edge-daq.yaml",
        """\
        gateway: gw-test
        rigs: [rigs.d/missing.yaml]
        buffer: {spool_max_bytes: lots}
        outputs:
          file: {dir: /tmp/archive}
          mqtt: {host: broker, qos: 2}
        http:
          listen: localhost
        log: {level: verbose}
        """,
    )
    assert issues_of(gateway) == [
        f"{gateway}:2:8: no such file or folder: {tmp_path}/rigs.d/missing.yaml",
        f"{gateway}:3:27: expected a size such as 512KiB, 64MiB or 2GiB, got 'lots'",
        f"{gateway}:6:29: expected 0 or 1, got 2",
        f"{gateway}:8:11: expected host:port such as 127.0.0.1:9108 or [::1]:9108, got 'localhost'",
        f"{gateway}:9:14: expected 'debug', 'info', 'warning' or 'error', got 'verbose'",
    ]


def test_a_secret_value_never_appears_in_a_message(tmp_path: Path) -> None:
    v2 = write(
        tmp_path / "gw-v2.yaml",
        """\
        gateway: gw-test
        outputs:
          influxdb:
            org: lab
            bucket: b
            token: 73577357
        """,
    )
    v1 = write(
        tmp_path / "gw-v1.yaml",
        "gateway: gw-test\noutputs:\n  influxdb: {api: v1, database: d, password: [73577357]}\n",
    )
    assert issues_of(v1, v2) == [
        f"{v1}:3:46: expected a string",
        f"{v2}:6:12: expected a string (put the value in quotes)",
    ]


# --- profiles -----------------------------------------------------------------------------------------


def test_a_profile_supplies_every_key_the_instrument_does_not_give(tmp_path: Path) -> None:
    gateway = gateway_with_rigs(
        tmp_path,
        """\
        rig: r1
        instruments:
          - {name: chamber, profile: test-chamber, host: 10.0.4.17, timeout: 2s}
          - name: other
            profile: test-chamber
            host: 10.0.4.18
            points: [{name: only, address: 7}]
        """,
    )
    config = load_config(gateway)
    chamber, other = config.rigs[0].instruments
    assert isinstance(chamber, ModbusTcpConfig)
    assert isinstance(other, ModbusTcpConfig)
    assert (chamber.host, chamber.byte_order, chamber.timeout) == ("10.0.4.17", "CDAB", 2.0)
    assert [point.name for point in chamber.points] == ["temp_pv", "temp_sp"]
    assert [point.name for point in other.points] == ["only"]  # the instrument's points replace the profile's


def test_a_later_profile_folder_overrides_an_earlier_one(tmp_path: Path) -> None:
    write(tmp_path / "shipped" / "chamber.yaml", CHAMBER_PROFILE)
    gateway = gateway_with_rigs(
        tmp_path,
        "rig: r1\ninstruments: [{name: c, profile: test-chamber, host: h}]\n",
        profiles=CHAMBER_PROFILE.replace("CDAB", "DCBA"),
    )
    instrument = load_config(gateway).rigs[0].instruments[0]
    assert isinstance(instrument, ModbusTcpConfig)
    assert instrument.byte_order == "DCBA"


def test_an_unknown_profile_is_reported_at_its_value(tmp_path: Path) -> None:
    gateway = gateway_with_rigs(tmp_path, "rig: r1\ninstruments:\n  - {name: c, profile: test-chamberr, host: h}\n")
    rig = tmp_path / "rigs.d" / "rig1.yaml"
    # Nothing about the keys the profile would have supplied (driver, points): that would be noise.
    assert issues_of(gateway) == [
        f"{rig}:3:24: unknown profile 'test-chamberr' (did you mean 'test-chamber'?); known profiles: test-chamber"
    ]


def test_an_error_inside_a_profile_is_reported_in_the_profile_file(tmp_path: Path) -> None:
    gateway = gateway_with_rigs(
        tmp_path,
        "rig: r1\ninstruments:\n  - {name: c, profile: test-chamber, host: h}\n",
        profiles=CHAMBER_PROFILE.replace("type: float32}\n", "type: float23}\n", 1),
    )
    profile = tmp_path / "profiles" / "chamber.yaml"
    assert issues_of(gateway) == [
        f"{profile}:6:57: expected 'int16', 'uint16', 'int32', 'uint32', 'int64', 'uint64', 'float32', 'float64', "
        "'bool' or 'string' (did you mean 'float32'?), got 'float23'"
    ]


def test_a_profile_file_can_be_checked_on_its_own(tmp_path: Path) -> None:
    profile = write(tmp_path / "p.yaml", "profile: p\nname: x\ndriver: modbus-tcp\npoints: [{name: a, adress: 1}]\n")
    assert issues_of(profile) == [
        f"{profile}:2:1: a profile cannot set name: each instrument names itself",
        f"{profile}:4:20: unknown key 'adress' (did you mean 'address'?)",
    ]


def test_a_lone_rig_file_uses_the_shipped_profiles(tmp_path: Path) -> None:
    write(tmp_path / "shipped" / "chamber.yaml", CHAMBER_PROFILE)
    rig = write(tmp_path / "rig.yaml", "rig: r1\ninstruments: [{name: c, profile: test-chamber, host: h}]\n")
    assert issues_of(rig) == []


# --- checks across files ------------------------------------------------------------------------------


def test_duplicate_rig_names_are_reported_in_both_places(tmp_path: Path) -> None:
    gateway = gateway_with_rigs(tmp_path, "# first\nrig: htol-07\n", "rig: htol-07\n")
    first, second = tmp_path / "rigs.d" / "rig1.yaml", tmp_path / "rigs.d" / "rig2.yaml"
    assert issues_of(gateway) == [
        f"{first}:2:6: rig 'htol-07' is also defined at {second}:1:6",
        f"{second}:1:6: rig 'htol-07' is also defined at {first}:2:6",
    ]


def test_duplicate_instrument_names_in_one_rig(tmp_path: Path) -> None:
    gateway = gateway_with_rigs(
        tmp_path,
        """\
        rig: r1
        instruments:
          - {name: chamber, profile: test-chamber, host: a}
          - {name: chamber, profile: test-chamber, host: b}
        """,
    )
    rig = tmp_path / "rigs.d" / "rig1.yaml"
    assert issues_of(gateway) == [f"{rig}:4:12: instrument 'chamber' is already defined on line 3 of this rig"]


class FakeSerialConfig(InstrumentConfig):
    """A serial instrument as the serial drivers will have it: a device path and its settings."""

    driver: Literal["fake-serial"] = "fake-serial"
    port: str
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1


def placed_serial(text: str) -> PlacedInstrument:
    source, issues = parse_yaml(textwrap.dedent(text), "rig.yaml")
    assert issues == []
    return PlacedInstrument(FakeSerialConfig.model_validate(source), source)


def test_instruments_on_one_serial_port_must_share_its_settings() -> None:
    first = placed_serial("name: vfd\nport: /dev/ttyUSB1\nbaudrate: 19200\nparity: E\n")
    same = placed_serial("name: vfd2\nport: /dev/ttyUSB1\nbaudrate: 19200\nparity: E\n")
    elsewhere = placed_serial("name: smu\nport: /dev/ttyUSB0\n")
    conflicting = placed_serial("name: meter\nport: /dev/ttyUSB1\n\nbaudrate: 9600\n")
    assert check_serial_ports([first, same, elsewhere]) == []
    assert [str(issue) for issue in check_serial_ports([first, conflicting])] == [
        "rig.yaml:4:11: baudrate 9600 differs from baudrate 19200 of instrument 'vfd' on the same port "
        "/dev/ttyUSB1 (rig.yaml:2:7): instruments on one serial port share its settings",
        # parity is not written: it defaults to N, and the port is the place to look.
        "rig.yaml:2:7: parity N differs from parity E of instrument 'vfd' on the same port "
        "/dev/ttyUSB1 (rig.yaml:2:7): instruments on one serial port share its settings",
    ]


def test_tcp_instruments_do_not_take_part_in_the_serial_check(tmp_path: Path) -> None:
    gateway = gateway_with_rigs(
        tmp_path,
        "rig: r1\ninstruments:\n  - {name: a, profile: test-chamber, host: h, port: 502}\n",
        "rig: r2\ninstruments:\n  - {name: b, profile: test-chamber, host: h2, port: 502, byte_order: ABCD}\n",
    )
    assert issues_of(gateway) == []


def test_overlapping_register_reads_that_disagree(tmp_path: Path) -> None:
    gateway = gateway_with_rigs(
        tmp_path,
        "rig: r1\ninstruments:\n  - {name: chamber, profile: test-chamber, host: 10.0.4.17}\n",
        """\
        rig: r2
        instruments:
          - name: watcher
            driver: modbus-tcp
            host: 10.0.4.17
            points:
              - {name: same_pv, address: 100, type: float32, byte_order: CDAB}
              - {name: low_word, address: 101, type: int16}
              - {name: flag, address: 102, type: bool, bit: 3}
          - {name: elsewhere, driver: modbus-tcp, host: 10.0.4.17, unit: 2, points: [{name: x, address: 101}]}
        """,
    )
    profile, rig2 = tmp_path / "profiles" / "chamber.yaml", tmp_path / "rigs.d" / "rig2.yaml"
    # Same register, same reading (same_pv) and single bits of a register (flag) agree; other units are
    # other devices.
    assert issues_of(gateway) == [
        f"{rig2}:8:35: point 'low_word' of instrument 'watcher' reads holding 101 as int16 ABCD, but point "
        f"'temp_pv' of instrument 'chamber' ({profile}:6:46) reads holding 100-101 as float32 CDAB: "
        "reads of the same registers must agree",
        f"{rig2}:8:35: point 'low_word' of instrument 'watcher' reads holding 101 as int16 ABCD, but point "
        f"'same_pv' of instrument 'watcher' ({rig2}:7:34) reads holding 100-101 as float32 CDAB: "
        "reads of the same registers must agree",
    ]


def test_a_missing_rigs_folder_is_an_error_and_an_empty_one_is_fine(tmp_path: Path) -> None:
    gateway = write(tmp_path / "edge-daq.yaml", "gateway: gw-test\nrigs: rigs.d/\n")
    assert issues_of(gateway) == [f"{gateway}:2:7: no such file or folder: {tmp_path}/rigs.d"]
    (tmp_path / "rigs.d").mkdir()
    assert issues_of(gateway) == []


# --- the loaded configuration -------------------------------------------------------------------------


def test_load_config_returns_everything_and_a_content_hash(tmp_path: Path) -> None:
    gateway = gateway_with_rigs(tmp_path, "rig: r1\ninstruments: [{name: c, profile: test-chamber, host: h}]\n")
    config = load_config(gateway)
    assert config.gateway.gateway == "gw-test"
    assert config.gateway.http.port == 9108
    assert [rig.rig for rig in config.rigs] == ["r1"]
    assert config.path == gateway
    assert set(config.files) == {gateway, tmp_path / "profiles" / "chamber.yaml", tmp_path / "rigs.d" / "rig1.yaml"}
    with (tmp_path / "rigs.d" / "rig1.yaml").open("a") as rig:
        rig.write("# a comment changes nothing\n")
    assert load_config(gateway).hash == config.hash
    write(tmp_path / "rigs.d" / "rig1.yaml", "rig: r1\ninstruments: [{name: c, profile: test-chamber, host: h2}]\n")
    assert load_config(gateway).hash != config.hash


def test_load_config_raises_with_every_issue_sorted(tmp_path: Path) -> None:
    gateway = gateway_with_rigs(tmp_path, "rig: r1\nbogus: 1\n", "rig: r2\ntags: {a: [1]}\n")
    write(tmp_path / "edge-daq.yaml", "log: {level: loud}\ngateway: gw-test\nprofiles: [profiles/]\n")
    with pytest.raises(ConfigError) as raised:
        load_config(gateway)
    assert [(Path(issue.path).name, issue.line) for issue in raised.value.issues] == [
        ("edge-daq.yaml", 1),
        ("rig1.yaml", 2),
        ("rig2.yaml", 2),
    ]


def test_check_does_not_import_the_driver_implementations() -> None:
    # Also imports edge_daq.drivers.base first, which reaches edge_daq.config while the loader needs base.
    script = (
        "import sys, edge_daq.drivers.base, edge_daq.config.loader;"
        "from edge_daq import drivers;"
        "assert drivers.config_model('modbus-tcp').__name__ == 'ModbusTcpConfig';"
        "assert 'pymodbus' not in sys.modules, 'pymodbus imported'"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


# --- edge-daq check -----------------------------------------------------------------------------------


def test_check_prints_issues_and_a_summary_and_fails(tmp_path: Path) -> None:
    rig = write(tmp_path / "rig.yaml", "rig: r1\ntagz: {}\n")
    empty = write(tmp_path / "empty.yaml", "")
    out = io.StringIO()
    assert run_check([rig, empty, tmp_path, tmp_path / "absent.yaml"], out) == 1
    assert out.getvalue().splitlines() == [
        f"{tmp_path}:1:1: this is a folder, not a YAML file",
        f"{tmp_path}/absent.yaml:1:1: cannot read the file: No such file or directory",
        f"{empty}:1:1: the file is empty",
        f"{rig}:2:1: unknown key 'tagz' (did you mean 'tags'?)",
        "4 files checked, 4 problems",
    ]


def test_check_of_a_file_that_is_not_configuration(tmp_path: Path) -> None:
    binary = tmp_path / "blob.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    listing = write(tmp_path / "list.yaml", "- a\n- b\n")
    out = io.StringIO()
    assert run_check([binary, listing], out) == 1
    assert out.getvalue().splitlines() == [
        f"{binary}:1:1: not a text file (it is not valid UTF-8)",
        f"{listing}:1:1: not an edge-daq config file: expected a gateway:, rig: or profile: key",
        "2 files checked, 2 problems",
    ]


def test_check_of_a_good_configuration_succeeds(tmp_path: Path) -> None:
    gateway = gateway_with_rigs(tmp_path, "rig: r1\ninstruments: [{name: c, profile: test-chamber, host: h}]\n")
    out = io.StringIO()
    # The rig file is part of the gateway: checked once, not as a second rig named r1.
    assert run_check([gateway, tmp_path / "rigs.d" / "rig1.yaml"], out) == 0
    assert out.getvalue() == "3 files checked, no problems\n"


def test_a_secret_echoed_by_a_validator_is_masked() -> None:
    def reject(value: str) -> str:
        raise ValueError(f"token {value!r} has the wrong format")

    class WithToken(StrictModel):
        token: Annotated[str, AfterValidator(reject)]

    data, _ = parse_yaml("token: hunter2\n", "gw.yaml")
    with pytest.raises(ValidationError) as raised:
        WithToken.model_validate(data)
    issues = validation_issues(raised.value.errors(), data, data.mark, root=WithToken)
    assert [str(issue) for issue in issues] == ["gw.yaml:1:8: token '***' has the wrong format"]
