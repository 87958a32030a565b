"""``edge-daq check`` on the mistakes technicians make: the root cause first, once, and no follow-on lines.

Each test takes the shipped example gateway (config/edge-daq.yaml with rigs.d/htol-07.yaml and its 32-row
DUT CSV, checked against the shipped profiles), makes one mistake in a copy and runs the real command.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from edge_daq.cli.check import run_check

CONFIG = Path(__file__).resolve().parents[2] / "config"


@pytest.fixture
def gateway(tmp_path: Path) -> Path:
    shutil.copy(CONFIG / "edge-daq.yaml", tmp_path / "edge-daq.yaml")
    shutil.copytree(CONFIG / "rigs.d", tmp_path / "rigs.d")
    return tmp_path / "edge-daq.yaml"


def rig_file(gateway: Path) -> Path:
    return gateway.parent / "rigs.d" / "htol-07.yaml"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new), encoding="utf-8")


def check(*paths: Path) -> list[str]:
    out = io.StringIO()
    status = run_check(list(paths), out)
    lines = out.getvalue().splitlines()
    assert status == (1 if len(lines) > 1 else 0)
    return lines[:-1]  # without the summary


def test_the_shipped_example_is_clean(gateway: Path) -> None:
    assert check(gateway) == []


def test_a_wrong_profile_name_is_one_line_naming_it(gateway: Path) -> None:
    # The board's channels come from its profile: without it, the 32 DUTs of the CSV, the stress term on
    # board1 and the five per-DUT failure rules all looked wrong (39 lines, the cause after 32 CSV lines).
    edit(rig_file(gateway), "profile: burnin-board ", "profile: burnin-bord ")
    lines = check(gateway)
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"{rig_file(gateway)}:35:14: unknown profile 'burnin-bord' (did you mean 'burnin-board'?)"
    )


def test_a_typo_in_interval_is_reported_once_not_as_a_missing_instrument(gateway: Path) -> None:
    # The stress terms refer to chamber three times: they used to say "no instrument 'chamber' in this rig".
    edit(rig_file(gateway), "interval: 2s", "interval: 2sec")
    assert check(gateway) == [
        f"{rig_file(gateway)}:23:15: expected a duration such as 250ms, 2s, 1m or 12h, got '2sec'"
    ]


def test_a_point_reference_to_an_instrument_that_loaded_is_still_checked(gateway: Path) -> None:
    edit(rig_file(gateway), "{point: chamber.door_open,", "{point: chamber.door_opn,")
    (line,) = check(gateway)
    assert line.endswith("instrument 'chamber' has no point 'door_opn' (did you mean 'door_open'?)")


def test_a_tab(gateway: Path) -> None:
    edit(rig_file(gateway), "    unit: 1\n    interval: 2s", "    unit: 1\n\tinterval: 2s")
    assert check(gateway) == [
        f"{rig_file(gateway)}:23:1: YAML syntax: a tab character: YAML allows only spaces for indentation and "
        "after ':' (replace the tab with spaces)"
    ]


def test_key_colon_value_without_the_space(gateway: Path) -> None:
    edit(rig_file(gateway), "    interval: 2s", "    interval:2s")
    assert check(gateway) == [
        f"{rig_file(gateway)}:23:13: YAML syntax: no space after ':' in 'interval:2s': write 'interval: 2s' "
        "(a key is followed by ': ')"
    ]


def test_key_colon_value_as_the_only_entry_of_a_mapping(tmp_path: Path) -> None:
    rig = tmp_path / "rig.yaml"
    rig.write_text("rig: r1\ntags:\n  test:HTOL\n", encoding="utf-8")
    assert check(rig) == [
        f"{rig}:3:3: expected a mapping (key: value lines) (a space is missing after ':'; write 'key: value'), "
        "got 'test:HTOL'"
    ]


def test_a_bad_indent_less_than_its_siblings(gateway: Path) -> None:
    edit(rig_file(gateway), "    interval: 2s", "   interval: 2s")
    assert check(gateway) == [
        f"{rig_file(gateway)}:23:4: YAML syntax: wrong indentation: this line starts in column 4, the keys above "
        "it in column 1, 3 or 5: keys of one mapping start in the same column, each level indented by the same "
        "step (two spaces)"
    ]


def test_a_bad_indent_more_than_its_siblings(gateway: Path) -> None:
    edit(rig_file(gateway), "    interval: 2s", "      interval: 2s")
    assert check(gateway) == [
        f"{rig_file(gateway)}:23:7: YAML syntax: this line is indented more than line 22 above it, which already "
        "has its value: keys of one mapping start in the same column, each level indented by the same step "
        "(two spaces)"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rig: r1\ntags: {a: 1\n", "2:7: YAML syntax: this '{' is not closed: a '}' is missing, or a ','"),
        ("rig: r1\ntags: [a, b\n", "2:7: YAML syntax: this '[' is not closed: a ']' is missing, or a ','"),
        ('rig: r1\ntags:\n  test: "HTOL\n', "3:9: YAML syntax: this quoted value is never closed"),
        ("rig: r1\nsite: a: b\n", "2:8: YAML syntax: a second ': ' on one line: put a value that contains"),
        ("rig: r1\ntags:\n  just text\n  lot: L1\n", "3:3: YAML syntax: this line is neither 'key: value' nor"),
    ],
)
def test_other_syntax_errors_in_plain_words(tmp_path: Path, text: str, expected: str) -> None:
    rig = tmp_path / "rig.yaml"
    rig.write_text(text, encoding="utf-8")
    (line,) = check(rig)
    assert line.startswith(f"{rig}:{expected}"), line
    assert "<block" not in line, line
    assert "token" not in line, line


def test_a_url_value_is_not_taken_for_a_missing_space(tmp_path: Path) -> None:
    from edge_daq.config.yaml_errors import missing_space_after_colon

    assert missing_space_after_colon("test:HTOL")
    assert not missing_space_after_colon("http://influx:8086")
    assert not missing_space_after_colon("10:30")
    assert not missing_space_after_colon("a: b")


def test_a_typo_on_the_instrument_with_the_channels_hides_no_rule_behind_it(gateway: Path) -> None:
    # board1 carries the per-DUT fields the failure rules name and the DUTs of the CSV.
    edit(rig_file(gateway), "    interval: 1s", "    interval: 1x")
    assert check(gateway) == [f"{rig_file(gateway)}:39:15: expected a duration such as 250ms, 2s, 1m or 12h, got '1x'"]


def test_a_misspelt_interval_key(gateway: Path) -> None:
    edit(rig_file(gateway), "    interval: 2s", "    intervall: 2s")
    assert check(gateway) == [f"{rig_file(gateway)}:23:5: unknown key 'intervall' (did you mean 'interval'?)"]
