"""JSON Schemas of the config files: fresh, referenced by every shipped file, and checked by an independent validator.

The validator is ``check-jsonschema`` (python-jsonschema underneath), run as its own command on the files as a
technician's editor or a CI job would: what it accepts and refuses is compared with edge-daq's own loader.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_daq import drivers
from edge_daq.cli import main, schema_cmd
from edge_daq.config import schema
from edge_daq.config.loader import check_files
from edge_daq.sinks import registry as outputs_registry
from edge_daq.sinks.file import FileOutputConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
SCHEMAS = CONFIG / "schemas"
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)\n")
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")


def shipped_yaml() -> list[Path]:
    return sorted(CONFIG.rglob("*.yaml"))


def kind_of(data: object) -> schema.SchemaKind:
    assert isinstance(data, dict)
    return next(kind for kind in schema.KINDS if kind in data)


def validate(kind: schema.SchemaKind, paths: list[Path]) -> list[dict[str, Any]]:
    """check-jsonschema's errors for ``paths`` against the shipped schema of ``kind`` (empty: all valid)."""
    command = [str(CHECK_JSONSCHEMA), "-o", "json", "--schemafile", str(SCHEMAS / schema.file_name(kind))]
    result = subprocess.run([*command, *map(str, paths)], capture_output=True, text=True, timeout=60, check=False)
    report = json.loads(result.stdout)
    assert not report.get("parse_errors"), report["parse_errors"]
    assert (result.returncode == 0) == (report["status"] == "ok"), result.stderr
    errors: list[dict[str, Any]] = report.get("errors", [])
    return errors


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", schema.KINDS)
def test_the_shipped_schemas_are_those_the_models_give(kind: schema.SchemaKind) -> None:
    shipped = (SCHEMAS / schema.file_name(kind)).read_text(encoding="utf-8")
    assert shipped == schema.render(kind), (
        f"config/schemas/{schema.file_name(kind)} is stale: run `edge-daq schema --write-dir config/schemas`"
    )


def test_the_schemas_are_valid_draft_7() -> None:
    paths = [str(SCHEMAS / schema.file_name(kind)) for kind in schema.KINDS]
    result = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--check-metaschema", *paths], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for kind in schema.KINDS:
        text = schema.render(kind)
        assert json.loads(text)["$schema"] == "http://json-schema.org/draft-07/schema#"
        # Keywords of later drafts, which draft-07 validators and editors silently ignore.
        for keyword in ("prefixItems", "unevaluatedProperties", "dependentRequired", "dependentSchemas"):
            assert f'"{keyword}"' not in text


def test_the_cli_prints_and_writes_the_schemas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert schema_cmd.KINDS == schema.KINDS
    assert main(["schema", "rig"]) == 0
    assert json.loads(capsys.readouterr().out) == schema.schema("rig")
    assert main(["schema", "--write-dir", str(tmp_path / "out")]) == 0
    for kind in schema.KINDS:
        assert (tmp_path / "out" / schema.file_name(kind)).read_text(encoding="utf-8") == schema.render(kind)
    assert main(["schema"]) == 2
    assert "give a kind" in capsys.readouterr().err


def test_every_shipped_file_names_its_schema_on_its_first_line() -> None:
    """The relative path works in a checkout (config/) and installed (the wheel carries config/ whole)."""
    files = shipped_yaml()
    assert len(files) >= 14
    for path in files:
        text = path.read_text(encoding="utf-8")
        match = MODELINE.match(text)
        assert match, f"{path.relative_to(ROOT)}: no '# yaml-language-server: $schema=...' first line"
        target = (path.parent / match[1]).resolve()
        assert target == SCHEMAS / schema.file_name(kind_of(yaml.safe_load(text))), path
        assert target.is_relative_to(CONFIG)  # inside what the wheel ships as edge_daq/_shipped_config
    # The wheel carries config/ whole, so the same relative paths work in an installed package.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]["config"] == (
        "edge_daq/_shipped_config"
    )


def test_every_shipped_file_is_valid_under_its_schema() -> None:
    by_kind: dict[schema.SchemaKind, list[Path]] = {}
    for path in shipped_yaml():
        by_kind.setdefault(kind_of(yaml.safe_load(path.read_text(encoding="utf-8"))), []).append(path)
    assert set(by_kind) == set(schema.KINDS)
    for kind, paths in by_kind.items():
        assert validate(kind, paths) == [], kind


def documented_blocks() -> list[tuple[str, int, str]]:
    """The ```yaml blocks of the README and docs/configuration.md: (document, line, text)."""
    blocks = []
    for name in ("README.md", "docs/configuration.md"):
        text = (ROOT / name).read_text(encoding="utf-8")
        for match in re.finditer(r"^```ya?ml\n(.*?)^```", text, re.S | re.M):
            blocks.append((name, text[: match.start()].count("\n") + 2, match[1]))
    return blocks


def test_every_documented_config_is_valid_under_its_schema(tmp_path: Path) -> None:
    """Complete files as they are; excerpts (``outputs:``, ``buffer:``...) with the key that names the file."""
    keys = {kind: set(schema.schema(kind)["properties"]) for kind in schema.KINDS}
    by_kind: dict[schema.SchemaKind, list[Path]] = {}
    for number, (document, line, text) in enumerate(documented_blocks()):
        data = yaml.safe_load(text)
        if isinstance(data, list):  # a rig file's `instruments:` excerpt
            text = "rig: excerpt\ninstruments:\n" + text
            data = yaml.safe_load(text)
        assert isinstance(data, dict), f"{document}:{line}"
        named = [kind for kind in schema.KINDS if kind in data]
        if named:
            kind = named[0]
        else:
            kind = next(kind for kind in schema.KINDS if set(data) <= keys[kind])
            text = f"{kind}: excerpt\n{text}"
        path = write(tmp_path / f"{number:02d}-{Path(document).stem}-line{line}.yaml", text)
        by_kind.setdefault(kind, []).append(path)
    assert {"gateway", "rig"} <= set(by_kind)
    assert sum(len(paths) for paths in by_kind.values()) >= 10
    for kind, paths in by_kind.items():
        assert validate(kind, paths) == [], kind


HTOL = (CONFIG / "rigs.d" / "htol-07.yaml").read_text(encoding="utf-8")
GATEWAY = (CONFIG / "edge-daq.yaml").read_text(encoding="utf-8")
F4 = (CONFIG / "profiles" / "watlow-f4.yaml").read_text(encoding="utf-8")

# (kind, file text, what the validator must say): each is a mistake edge-daq's loader refuses too.
MISTAKES: list[tuple[schema.SchemaKind, str, str]] = [
    ("rig", HTOL.replace("    timeout: 500ms\n", "    timeot: 500ms\n", 1), "'timeot' was unexpected"),
    ("rig", HTOL.replace("address: 100, type: int16", "adress: 100, type: int16"), "'adress' was unexpected"),
    ("rig", HTOL.replace("interval: 2s", "interval: fast"), "'fast' is not valid under any"),
    ("rig", HTOL.replace("type: int16, scale: 0.1", "type: int61, scale: 0.1", 1), "'int61' is not one of"),
    ("rig", HTOL.replace("    port: 15020\n", "    port: fifteen\n"), "'fifteen' is not of type 'integer'"),
    ("rig", HTOL.replace("profile: watlow-f4 ", "driver: modbus-tpc"), "'modbus-tpc' is not one of"),
    ("rig", HTOL.replace("  - name: board1\n", "  - nmae: board1\n"), "'name' is a required property"),
    ("rig", HTOL.replace("failures:\n  confirm: 2", "failures:\n  confirm: two"), "{'confirm': 'two'"),
    ("gateway", GATEWAY.replace("rotate_bytes: 64MiB", "rotate_bytes: 64 MB/s"), "'64 MB/s' is not valid under any"),
    ("gateway", GATEWAY.replace("rotate_bytes: 64MiB", "rotate_byte: 64MiB"), "'rotate_byte' was unexpected"),
    ("gateway", GATEWAY.replace("  file:", "  archive:\n    type: fiel", 1), "'fiel' is not one of"),
    ("gateway", GATEWAY.replace("  level: info", "  level: loud"), "'loud' is not one of"),
    ("gateway", GATEWAY.replace("gateway: gw-lab2-01", "gateway: gw lab2"), "does not match"),
    ("profile", F4.replace("byte_order: ABCD", "byte_order: ABDC"), "'ABDC' is not one of"),
    ("profile", F4.replace("profile: watlow-f4\n", "profile: watlow-f4\nname: chamber\n"), "'name' was unexpected"),
]


def test_known_mistakes_are_flagged_by_the_schema_as_by_the_loader(tmp_path: Path) -> None:
    by_kind: dict[schema.SchemaKind, list[tuple[Path, str]]] = {}
    for number, (kind, text, expected) in enumerate(MISTAKES):
        assert text not in (HTOL, GATEWAY, F4), f"mistake {number} changed nothing"
        folder = tmp_path / str(number)
        # Beside copies of the shipped files it needs, so that the loader sees only this one mistake.
        (folder / "rigs.d").mkdir(parents=True)
        (folder / "rigs.d" / "htol-07-duts.csv").write_bytes((CONFIG / "rigs.d" / "htol-07-duts.csv").read_bytes())
        name = {"gateway": "edge-daq.yaml", "rig": "rigs.d/htol-07.yaml", "profile": "profiles/watlow-f4.yaml"}[kind]
        path = write(folder / name, text)
        if kind == "profile":
            assert check_files([path]), f"the loader accepts mistake {number}"
        else:
            if kind == "rig":
                write(folder / "edge-daq.yaml", GATEWAY.replace("/var/lib/edge-daq", str(folder)))
            else:
                write(folder / "rigs.d" / "htol-07.yaml", HTOL)
            assert check_files([folder / "edge-daq.yaml"]), f"the loader accepts mistake {number}"
        by_kind.setdefault(kind, []).append((path, expected))
    for kind, cases in by_kind.items():
        errors = validate(kind, [path for path, _ in cases])
        for path, expected in cases:
            messages = [error["message"] for error in errors if error["filename"] == str(path)]
            assert any(expected in message for message in messages), (path, messages)


def test_what_the_loader_accepts_in_several_spellings_the_schema_accepts_too(tmp_path: Path) -> None:
    gateway = write(
        tmp_path / "edge-daq.yaml",
        """\
        gateway: gw-1
        rigs: rigs.d/                 # one path without brackets
        state_dir: state
        buffer: {spool_dir: spool, spool_max_bytes: 1073741824, spool_max_age: 7d, fsync_interval: 0.5,
                 spool_segment_bytes: 1MiB}
        outputs:
          influxdb:                   # a type name as the key, no type:
            url: http://127.0.0.1:8086
            bucket: b
            org: o
            token: t
            timeout: 5
            flush_interval: 250ms
          mqtt:                       # an empty entry: no output
          lab-archive: {type: file, dir: archive, rotate_bytes: 1048576}
          copy: {type: mqtt, host: 127.0.0.1, protocol: 5, include: {rig: rig-*}}
        """,
    )
    rig = write(
        tmp_path / "rigs.d" / "rig.yaml",
        """\
        rig: rig-1
        instruments:
          - {name: chamber, profile: watlow-f4, host: 127.0.0.1, interval: 1.5}
          - name: smu
            driver: scpi-tcp
            host: 127.0.0.1
            points: [{name: v, query: ":MEAS:VOLT?", type: float}]
          - name: board
            driver: modbus-tcp
            host: 127.0.0.1
            channels:                 # points from the channels alone
              count: 4
              points: [{name: i, table: input, address: 10, type: uint16}]
        duts:
          - {socket: 1, serial: U1, wafer: 7}
        """,
    )
    assert check_files([gateway]) == []
    assert validate("gateway", [gateway]) == []
    assert validate("rig", [rig]) == []


def test_every_registered_driver_and_output_type_is_in_the_schemas() -> None:
    rig = schema.schema("rig")
    assert rig["$defs"]["Instrument"]["properties"]["driver"]["enum"] == drivers.driver_names()
    for name in drivers.driver_names():
        model_schema = drivers.config_model(name).model_json_schema()
        driver_def = rig["$defs"][f"driver-{name}"]
        assert driver_def["properties"]["driver"] == {"const": name, "description": driver_def_description()}
        assert set(model_schema["properties"]) | {"channels"} == set(driver_def["properties"])
    gateway = schema.schema("gateway")
    assert gateway["$defs"]["Output"]["properties"]["type"]["enum"] == outputs_registry.type_names()


def driver_def_description() -> str:
    return f"the driver ({', '.join(drivers.driver_names())})"


class CopyOutputConfig(FileOutputConfig):
    """A throwaway output type's model."""


def test_an_output_type_registered_at_run_time_gets_its_entry() -> None:
    outputs_registry.register("file-copy", CopyOutputConfig, "edge_daq.sinks.file:make_output")
    try:
        gateway = schema.schema("gateway")
    finally:
        outputs_registry.unregister("file-copy")
    assert "output-file-copy" in gateway["$defs"]
    assert "file-copy" in gateway["$defs"]["OutputsConfig"]["properties"]


def test_a_kind_and_write_dir_together_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "gateway", "--write-dir", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
