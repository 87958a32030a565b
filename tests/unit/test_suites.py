"""The two suites keep their shape: every test file in unit/ or integration/, and unit tests start no servers."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SUITES = ("unit", "integration")

# What only an integration test may use: the real servers, the daemon subprocess, scripted or third-party
# servers on ports, and the simulators served on ports (their device models alone are fine in a unit test).
SERVER_MODULES = {"tests.servers", "tests.daemon_process", "tests.fake_influx", "tests.hostile_servers"}
SERVER_MODULES |= {"pymodbus.server", "asyncua"}
SERVING_NAMES = {"serve", "create_line_server", "create_rtu_server", "ModbusTcpServer", "LineServer"}
SERVER_FIXTURES = {
    "influxdb_v1",
    "victoria_metrics",
    "mosquitto",
    "mosquitto_auth",
    "mosquitto_tls",
    "mosquitto_private",
    "tls_files",
}


def test_every_test_file_is_in_one_of_the_two_suites() -> None:
    misplaced = [
        str(path.relative_to(TESTS))
        for path in TESTS.rglob("test_*.py")
        if path.relative_to(TESTS).parts[0] not in SUITES and "fixtures" not in path.relative_to(TESTS).parts
    ]
    assert misplaced == [], "move these to tests/unit (no servers) or tests/integration (servers, daemons)"


def test_each_suite_is_a_package_so_test_modules_never_clash_by_name() -> None:
    assert (TESTS / "__init__.py").is_file()
    for suite in SUITES:
        assert (TESTS / suite / "__init__.py").is_file(), suite


def server_uses(path: Path) -> list[str]:
    uses = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            uses += [alias.name for alias in node.names if alias.name in SERVER_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module in SERVER_MODULES or node.module.split(".")[0] in SERVER_MODULES:
                uses.append(node.module)
            elif node.module.split(".")[0] == "simulators":
                uses += [f"{node.module}.{alias.name}" for alias in node.names if alias.name in SERVING_NAMES]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            uses += [f"fixture {arg.arg}" for arg in node.args.args if arg.arg in SERVER_FIXTURES]
    return [f"{path.name}: {use}" for use in uses]


def test_unit_tests_start_no_servers() -> None:
    uses = [use for path in sorted((TESTS / "unit").glob("test_*.py")) for use in server_uses(path)]
    assert uses == [], "a test that starts a server belongs in tests/integration"


def test_the_check_sees_a_server_helper(tmp_path: Path) -> None:
    # The check above must be able to fail: a file in the shape of an integration test trips it.
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        "from tests.servers import free_port\n"
        "from simulators import serve\n"
        "async def test_x(influxdb_v1: object) -> None: ...\n",
        encoding="utf-8",
    )
    assert server_uses(sample) == [
        "test_sample.py: tests.servers",
        "test_sample.py: simulators.serve",
        "test_sample.py: fixture influxdb_v1",
    ]
