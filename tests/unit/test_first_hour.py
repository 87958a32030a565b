"""A new user's first hour, as the README tells it: installation steps, running from a checkout, help texts."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_daq.cli import main
from edge_daq.config.loader import check_files, load_config

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_block(after_heading: str) -> str:
    """The first ```sh block of the README section ``after_heading``."""
    section = README[README.index(f"## {after_heading}\n") :]
    match = re.search(r"^```sh\n(.*?)^```", section, re.S | re.M)
    assert match, after_heading
    return match[1]


def test_the_installation_steps_copy_everything_the_example_needs(tmp_path: Path) -> None:
    """Step 3 run as written (into a temporary /etc/edge-daq), then `edge-daq check` as the README says."""
    steps = readme_block("Installation on a gateway")
    lines = [line.split("#")[0].strip() for line in steps.splitlines()]
    configuration = [line for line in lines if line.startswith("install ") and "/etc/edge-daq" in line]
    configuration = [line for line in configuration if "credentials" not in line and "systemd" not in line]
    assert any("htol-07-duts.csv" in line for line in configuration)
    etc = tmp_path / "etc" / "edge-daq"
    etc.parent.mkdir()
    script = "set -e\n" + "\n".join(line.replace("/etc/edge-daq", str(etc)) for line in configuration)
    subprocess.run(["bash", "-c", script], cwd=ROOT, check=True, timeout=30)
    assert check_files([etc / "edge-daq.yaml"]) == []
    # The copied files still find their schemas where the steps put them.
    for path in (etc / "edge-daq.yaml", etc / "rigs.d" / "htol-07.yaml"):
        schema = re.match(r"# yaml-language-server: \$schema=(\S+)", path.read_text(encoding="utf-8"))
        assert schema, path
        assert (path.parent / schema[1]).is_file(), path


def test_the_checkout_recipe_writes_only_under_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = readme_block("Running from a checkout")
    assert ".venv/bin/edge-daq run -c config/local.yaml" in recipe
    assert "simulate watlow-f4 --tcp 127.0.0.1:15020" in recipe
    assert "simulate burnin-board --tcp 127.0.0.1:15021" in recipe
    rig = (ROOT / "config" / "rigs.d" / "htol-07.yaml").read_text(encoding="utf-8")
    assert "port: 15020" in rig
    assert "port: 15021" in rig
    # Copied elsewhere, as a checkout anywhere would be, and started from there.
    shutil.copytree(ROOT / "config", tmp_path / "config", ignore=shutil.ignore_patterns("examples"))
    monkeypatch.chdir(tmp_path)
    assert check_files([Path("config/local.yaml")]) == []
    gateway = load_config(Path("config/local.yaml")).gateway
    spool = gateway.buffer.spool_dir
    archive = gateway.outputs.get("file")
    assert spool is not None
    assert archive is not None
    written = [spool, gateway.state_path, archive.dir]  # type: ignore[attr-defined]
    for path in written:
        assert not path.is_absolute()
        assert path.absolute().is_relative_to(tmp_path / "edge-daq-local"), path


def test_simulate_help_names_every_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for protocol in ("Modbus TCP", "Modbus RTU", "SCPI", "serial"):
        assert protocol in text
    with pytest.raises(SystemExit):
        main(["--help"])
    summary = " ".join(capsys.readouterr().out.split())
    assert "Modbus TCP/RTU, SCPI over TCP or serial" in summary
