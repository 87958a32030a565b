"""Configuration loading: positions of every problem, profiles, cross-file checks and ``edge-daq check``."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import AfterValidator, ValidationError

from edge_daq import drivers
from edge_daq.cli.check import run_check
from edge_daq.config import loader
from edge_daq.config.loader import (
    check_files,
    check_serial_ports,
    load_config,
    validation_issues,
)
from edge_daq.config.units import parse_duration, parse_size
from edge_daq.config.yaml_loader import LocatedDict, parse_yaml
from edge_daq.drivers.base import InstrumentConfig, PlacedInstrument, StrictModel
from edge_daq.drivers.modbus import checks as modbus_checks
from edge_daq.drivers.modbus.config import ModbusTcpConfig
from edge_daq.errors import ConfigError, ConfigIssue

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
    assert issues_of(rig) == [
        f"{rig}:4:2: YAML syntax: wrong indentation: this line starts in column 2, the keys above it in column 1 "
        "or 3: keys of one mapping start in the same column, each level indented by the same step (two spaces)"
    ]


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


# --- the gate: values that would crash or hang `run` are refused by the loader -------------------------

RIG_WITH = (
    "rig: r1\ninstruments:\n"
    "  - {{name: a, driver: modbus-tcp, host: h, {key}: {value}, points: [{{name: p, address: 1}}]}}\n"
)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("interval", "0", "an interval must be from 1ms to 1d, got 0ms"),
        ("interval", "0.0001", "an interval must be from 1ms to 1d, got 0.1ms"),
        ("interval", ".nan", "a duration must be a number, not NaN"),
        ("interval", ".inf", "a duration must be finite and at most 100 years, got inf"),
        ("interval", str(2**64), f"a duration must be finite and at most 100 years, got {2**64}"),
        ("interval", "2d", "an interval must be from 1ms to 1d, got 172800s"),
        ("interval", "-1", "a duration cannot be negative"),
        ("timeout", ".nan", "a duration must be a number, not NaN"),
        ("timeout", ".inf", "a duration must be finite and at most 100 years, got inf"),
        ("timeout", "0", "a timeout must be from 1ms to 1h, got 0ms"),
        ("timeout", "2h", "a timeout must be from 1ms to 1h, got 7200s"),
    ],
)
def test_an_unschedulable_interval_or_timeout_is_refused_by_check_and_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: str, message: str
) -> None:
    from edge_daq.cli.run import run_daemon

    write(tmp_path / "rigs.d" / "r1.yaml", RIG_WITH.format(key=key, value=value))
    gateway = write(tmp_path / "edge-daq.yaml", "gateway: gw-test\n")
    column = 44 + len(key) + 2
    expected = f"{tmp_path / 'rigs.d' / 'r1.yaml'}:3:{column}: {message}"
    out = io.StringIO()
    assert run_check([gateway], out) == 1
    assert out.getvalue().splitlines()[0] == expected
    assert run_daemon(gateway) == 2  # refused before anything starts
    assert capsys.readouterr().err.splitlines()[0] == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (r'"/var/lib/\0archive"', "a path cannot contain a NUL character"),
        (f"/var/{'n' * 256}/archive", "a file or folder name must be at most 255 bytes, one here has 256"),
        ("/a" * 2048, "a path must be shorter than 4096 bytes, this one has 4096"),
    ],
)
def test_a_path_the_os_would_refuse_is_refused_by_check_and_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    from edge_daq.cli.run import run_daemon

    gateway = write(tmp_path / "edge-daq.yaml", f"gateway: gw-test\noutputs:\n  file:\n    dir: {value}\n")
    out = io.StringIO()
    assert run_check([gateway], out) == 1
    assert out.getvalue().splitlines() == [f"{gateway}:4:10: {message}", "1 file checked, 1 problem"]
    assert run_daemon(gateway) == 2
    assert capsys.readouterr().err.splitlines()[0] == f"{gateway}:4:10: {message}"


def test_every_path_key_is_checked(tmp_path: Path) -> None:
    long = "x" * 300
    gateway = write(
        tmp_path / "edge-daq.yaml",
        f"""\
        gateway: gw-test
        rigs: [rigs.d/{long}.yaml]
        profiles: "pro\\0files"
        state_dir: /var/{long}
        buffer: {{spool_dir: "/var/\\0spool"}}
        outputs:
          influxdb: {{api: v1, database: d, password_file: "/run/\\0hunter2"}}
          mqtt: {{password_file: /run/{long}, tls: {{ca_file: "\\0", cert_file: /{long}, key_file: /{long}}}}}
        """,
    )
    rig = write(
        tmp_path / "rig.yaml",
        """\
        rig: r1
        duts_csv: "duts\\0.csv"
        instruments:
          - {name: a, driver: modbus-rtu, port: "/dev/tty\\0USB0", points: [{name: p, address: 1}]}
        """,
    )
    issues = issues_of(gateway, rig)
    assert [issue.split(": ", 1)[0].rsplit(":", 2)[1:] for issue in issues] == [
        ["2", "8"],
        ["3", "11"],
        ["4", "12"],
        ["5", "21"],
        ["7", "51"],
        ["8", "25"],
        ["8", str(347 - 300 + len(long))],
        ["8", str(364 - 300 + len(long))],
        ["8", str(677 - 600 + 2 * len(long))],
        ["2", "11"],
        ["4", "41"],
    ]
    assert all("NUL character" in issue or "at most 255 bytes" in issue for issue in issues), issues
    assert not any("hunter2" in issue for issue in issues)


def test_a_host_the_resolver_would_refuse_is_refused(tmp_path: Path) -> None:
    rig = write(
        tmp_path / "rig.yaml",
        f"""\
        rig: r1
        instruments:
          - {{name: a, driver: modbus-tcp, host: {"h" * 64}.lab, points: [{{name: p, address: 1}}]}}
          - {{name: b, driver: modbus-tcp, host: "a..b", points: [{{name: p, address: 1}}]}}
          - {{name: c, driver: modbus-tcp, host: "\\0", points: [{{name: p, address: 1}}]}}
          - {{name: d, driver: modbus-tcp, host: "::1", points: [{{name: p, address: 1}}]}}
        """,
    )
    part = "not a valid host name: each dot-separated part must have 1 to 63 characters"
    gateway = write(tmp_path / "edge-daq.yaml", "gateway: gw-test\nhttp: {listen: '[::1]:9108'}\n")
    assert issues_of(gateway) == []
    gateway.write_text("gateway: gw-test\nhttp: {listen: 'a..b:9108'}\n")
    assert issues_of(gateway) == [f"{gateway}:2:16: {part}"]
    assert issues_of(rig) == [
        f"{rig}:3:41: {part}",
        f"{rig}:4:41: {part}",
        f"{rig}:5:41: a host name cannot contain spaces or control characters",
    ]


def test_numbers_are_finite_and_sizes_bounded(tmp_path: Path) -> None:
    gateway = write(
        tmp_path / "edge-daq.yaml",
        f"gateway: gw-test\nbuffer: {{spool_max_bytes: {'9' * 400}TiB}}\noutputs:\n  file: {{rotate_bytes: 2PiB}}\n",
    )
    rig = write(
        tmp_path / "rig.yaml",
        "rig: r1\ninstruments:\n"
        "  - {name: a, driver: modbus-tcp, host: h, points: [{name: p, address: 1, scale: .nan}]}\n",
    )
    assert issues_of(gateway, rig) == [
        f"{gateway}:2:27: a size must be at most 1PiB, got '{'9' * 36}...'",
        f"{gateway}:4:24: expected a size such as 512KiB, 64MiB or 2GiB, got '2PiB'",
        f"{rig}:3:82: must be a finite number, got nan",
    ]
    assert parse_size(1 << 50) == 1 << 50
    with pytest.raises(ValueError, match="at most 1PiB"):
        parse_size((1 << 50) + 1)


# --- the gate: files that crashed the YAML reader --------------------------------------------------------


@pytest.mark.parametrize(
    ("character", "code"), [("\x1b", "001B"), ("\x7f", "007F"), ("\x00", "0000"), ("\x9b", "009B")]
)
def test_a_control_character_is_reported_at_its_position(tmp_path: Path, character: str, code: str) -> None:
    rig = write(tmp_path / "rig.yaml", f"rig: r1\ntags: {{lot: L{character}7}}\n")
    assert issues_of(rig) == [
        f"{rig}:2:14: control character U+{code} is not allowed in a YAML file "
        "(inside double quotes, an escape such as \\t or \\x1b writes one)"
    ]


def test_control_characters_are_reported_once_per_line_for_the_first_lines(tmp_path: Path) -> None:
    rig = write(tmp_path / "rig.yaml", "rig: r1\r\n" + "x: \x1b\x1b\n" * 30)
    issues = issues_of(rig)
    assert len(issues) == 11
    assert issues[0].startswith(f"{rig}:2:4: control character U+001B")
    assert issues[9].startswith(f"{rig}:11:4: ")
    assert issues[10] == f"{rig}:12:4: more control characters follow (not listed)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rig: r1\ntags: {lot: " + "9" * 4301 + "}\n", "2:13: a number of more than 100 digits"),
        ("rig: r1\ntags: {lot: 0x" + "f" * 5000 + "}\n", "2:13: a number of more than 100 digits"),
        ("rig: r1\ntags: {lot: 2026-02-31}\n", "2:13: not a valid date or time (put a text in quotes)"),
        ('rig: r1\ntags: {lot: "L\\ud800"}\n', "2:13: a string cannot hold a lone surrogate escape"),
        ("rig: r1\ntags: " + "[" * 1000 + "]" * 1000 + "\n", "2:70: lists and mappings are nested more than 64"),
        ("rig: r1\ntags:\n" + "".join(f"{' ' * i}- \n" for i in range(70)), "66:64: lists and mappings are nested"),
        (
            "rig: r1\nx0: &a0 [x]\n" + "".join(f"x{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 100)),
            "65:12: this alias nests lists and mappings more than 64 levels deep",
        ),
        (
            "rig: r1\nx0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)),
            "7:45: aliases repeat more than 1,000,000 nodes in this file",
        ),
    ],
)
def test_a_file_beyond_the_bounds_is_refused_at_its_position(tmp_path: Path, text: str, message: str) -> None:
    rig = write(tmp_path / "rig.yaml", "")
    rig.write_text(text, encoding="utf-8", errors="surrogatepass")
    issues = issues_of(rig)
    assert issues[0].startswith(f"{rig}:{message}"), issues
    # The same with the merge key that sends the file through the node loader instead of the event builder.
    rig.write_text("base: &base {}\nother: {<<: *base}\n" + text, encoding="utf-8", errors="surrogatepass")
    line, rest = message.split(":", 1)
    assert any(issue.startswith(f"{rig}:{int(line) + 2}:{rest}") for issue in issues_of(rig)), issues_of(rig)


def test_a_file_that_is_not_a_regular_file_or_too_large_is_not_read(tmp_path: Path) -> None:
    import os

    from edge_daq.config import yaml_loader

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening it to read would wait for a writer forever
    large = tmp_path / "large.yaml"
    large.write_bytes(b"#" * (yaml_loader.MAX_FILE_BYTES + 1))
    assert issues_of(fifo, large) == [
        f"{fifo}:1:1: not a regular file (a device, a pipe or a socket)",
        f"{large}:1:1: the file is larger than 64 MiB: too large for configuration",
    ]


def test_a_dut_file_that_is_not_a_regular_file_is_not_read(tmp_path: Path) -> None:
    rig = write(tmp_path / "rig.yaml", "rig: r1\nduts_csv: /dev/zero\ninstruments: []\n")
    assert issues_of(rig) == [f"{rig}:2:11: DUT file /dev/zero is not a regular file"]
    (tmp_path / "duts.csv").write_bytes(b"socket,serial\n1,\xff\n")
    rig.write_text("rig: r1\nduts_csv: duts.csv\ninstruments: []\n")
    duts = tmp_path / "duts.csv"
    assert issues_of(rig) == [f"{rig}:2:11: DUT file {duts} is not a text file (it is not valid UTF-8)"]
    (tmp_path / "duts.csv").write_text("socket,serial\n1," + "x" * 200_000 + "\n")  # over csv's field limit
    assert issues_of(rig)[0].startswith(f"{rig}:2:11: cannot read DUT file {tmp_path / 'duts.csv'}: field larger")


def test_invalid_utf8_is_reported_where_it_starts(tmp_path: Path) -> None:
    rig = tmp_path / "rig.yaml"
    rig.write_bytes("rig: r1\ntags: {lot: Lé\xff}\n".encode("latin-1"))
    assert issues_of(rig) == [f"{rig}:2:14: not valid UTF-8 text from here on"]


def test_a_path_that_is_too_long_once_joined_is_an_error_not_a_crash(tmp_path: Path) -> None:
    parts = "/".join(["d" * 250] * 17)  # every name is fine, the whole is over PATH_MAX once joined
    gateway = write(tmp_path / "edge-daq.yaml", f"gateway: gw-test\nrigs: [{parts[:4000]}]\n")
    issues = issues_of(gateway)
    assert len(issues) == 1
    assert issues[0].startswith(f"{gateway}:2:8: ")
    assert "File name too long" in issues[0] or "no such file or folder" in issues[0]


# --- the gate: secrets and internal errors -----------------------------------------------------------


def test_a_secret_in_a_url_or_a_secret_file_key_is_never_quoted(tmp_path: Path) -> None:
    gateway = write(
        tmp_path / "edge-daq.yaml",
        """\
        gateway: gw-test
        outputs:
          influxdb: {url: hunter2-token, org: o, bucket: b, token_file: ["hunter3"]}
          mqtt: {password_file: 12345678}
        """,
    )
    out = io.StringIO()
    assert run_check([gateway], out) == 1
    printed = out.getvalue()
    for secret in ("hunter2", "hunter3", "12345678"):
        assert secret not in printed, printed
    assert printed.splitlines()[0] == f"{gateway}:3:19: must match pattern '^https?://'"


def test_an_unexpected_exception_is_a_positioned_internal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> list[object]:
        raise RuntimeError("hunter2 leaked in an exception message")

    monkeypatch.setattr(modbus_checks, "check_gateway", broken)
    gateway = gateway_with_rigs(tmp_path, "rig: r1\ninstruments: [{name: c, profile: test-chamber, host: h}]\n")
    # The hook runs for the drivers a rig uses.
    lone_rig = write(
        tmp_path / "lone.yaml",
        "rig: r2\ninstruments: [{name: c, driver: modbus-tcp, host: h, points: [{name: x, address: 1}]}]\n",
    )
    out = io.StringIO()
    assert run_check([gateway, lone_rig], out) == 1
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"{gateway}:1:1: internal error: RuntimeError at edge_daq/config/loader.py:")
    assert lines[1].startswith(f"{lone_rig}:1:1: internal error: RuntimeError at edge_daq/config/loader.py:")
    assert "hunter2" not in out.getvalue()
    assert "Traceback" not in out.getvalue()
    with pytest.raises(ConfigError) as raised:
        load_config(gateway)
    assert [issue.message.split(" at ")[0] for issue in raised.value.issues] == ["internal error: RuntimeError"]


def test_check_piped_into_head_prints_no_traceback(tmp_path: Path) -> None:
    rig = write(tmp_path / "rig.yaml", "rig: r1\n" + "".join(f"key{index}: 1\n" for index in range(20_000)))
    with subprocess.Popen(
        [sys.executable, "-m", "edge_daq", "check", str(rig)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as check:
        assert check.stdout is not None
        assert check.stderr is not None
        assert check.stdout.readline().decode() == f"{rig}:2:1: unknown key 'key0'\n"
        check.stdout.close()  # as `| head -1` does
        assert check.stderr.read() == b""
        assert check.wait(timeout=30) == 1


def test_the_reliability_control_socket_must_fit_a_unix_socket_path(tmp_path: Path) -> None:
    rig = "rig: r1\ntest: {id: t1}\ninstruments: [{name: c, profile: test-chamber, host: h}]\n"
    gateway = gateway_with_rigs(tmp_path, rig)
    long_state = tmp_path / ("s" * 120)
    gateway.write_text(f"gateway: gw-test\nprofiles: [profiles/]\nstate_dir: {long_state}\n")
    [issue] = issues_of(gateway)
    assert issue.startswith(f"{gateway}:3:12: the reliability control socket {long_state}/control.sock would have")
    with pytest.raises(ConfigError):
        load_config(gateway)
    # Without reliability keys there is no control socket, and the same folder is fine.
    write(tmp_path / "rigs.d" / "rig1.yaml", "rig: r1\ninstruments: [{name: c, profile: test-chamber, host: h}]\n")
    assert issues_of(gateway) == []


def test_a_rig_name_must_fit_a_folder_name(tmp_path: Path) -> None:
    rig = write(tmp_path / "rig.yaml", f"rig: {'r' * 256}\n")
    assert issues_of(rig) == [f"{rig}:1:6: a rig name must be at most 255 bytes"]


def test_the_registry_spells_each_driver_name_once() -> None:
    # The models take `driver` as the registry gives it: no Literal repeating the name.
    for name in drivers.driver_names():
        assert drivers.config_model(name).model_fields["driver"].annotation is str
    assert drivers.gateway_check("modbus-tcp") is drivers.gateway_check("modbus-rtu") is modbus_checks.check_gateway
    assert drivers.gateway_check("scpi-tcp") is None
    # Nor do the plugins carry a name or a model of their own: the registry line is the only one.
    for name in drivers.driver_names():
        assert not hasattr(drivers.plugin(name), "name")
        assert not hasattr(drivers.plugin(name), "config_model")


def test_the_loader_calls_each_drivers_gateway_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def check(instruments: Sequence[PlacedInstrument]) -> list[ConfigIssue]:
        seen.append([placed.config.name for placed in instruments])
        return [instruments[0].source.mark.issue("from the hook")]

    monkeypatch.setattr(modbus_checks, "check_gateway", check)
    gateway = gateway_with_rigs(
        tmp_path,
        "rig: r1\ninstruments: [{name: a, profile: test-chamber, host: h}]\n",
        "rig: r2\ninstruments: [{name: b, driver: modbus-rtu, port: /dev/ttyUSB0, points: [{name: x, address: 1}]}]\n",
    )
    assert [issue.split(": ", 1)[1] for issue in issues_of(gateway)] == ["from the hook"]
    assert seen == [["a", "b"]]  # one call for the drivers that share the hook, with every rig's instruments
