"""No import cycle among the modules of ``edge_daq`` (static: read with ``ast``, nothing is imported).

Every ``import`` counts, at module level and inside functions alike (a deferred import only hides a cycle
until the function runs), except those under ``if TYPE_CHECKING:``, which never run. Importing
``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first, so a module depends on those packages too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import edge_daq

PACKAGE = Path(edge_daq.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.names: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join([*base, node.module] if node.module else base)
        else:
            target = node.module or ""
        self.names.add(target)
        # `from package import module` imports that module.
        self.names.update(f"{target}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        edges: set[str] = set()
        for name in visitor.names:
            parts = name.split(".")
            for end in range(1, len(parts) + 1):  # the packages on the way run first
                prefix = ".".join(parts[:end])
                if prefix in paths and prefix != module and not module.startswith(f"{prefix}."):
                    edges.add(prefix)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_one_cycle(graph, set(component)) for component in components]


def _one_cycle(graph: dict[str, set[str]], members: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, for the message."""
    start = min(members)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & members):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError("a strongly connected component without a cycle")


def test_no_import_cycle() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_walk_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_walk_reads_deferred_and_relative_imports() -> None:
    source = """
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    import x.hidden
def f():
    from . import sibling
"""
    visitor = _Imports("pkg.mod", is_package=False)
    visitor.visit(ast.parse(source))
    assert "pkg.sibling" in visitor.names
    assert "x.hidden" not in visitor.names


def test_known_modules_are_in_the_graph() -> None:
    graph = import_graph()
    assert "edge_daq.config.loader" in graph["edge_daq.cli.check"] or any(
        "edge_daq.config" in target for target in graph["edge_daq.cli.check"]
    )
    assert "edge_daq.drivers" in graph["edge_daq.config.models"]


PLUGIN_PACKAGES = ("edge_daq.drivers.modbus", "edge_daq.drivers.scpi")


def test_config_depends_on_the_registries_not_on_a_driver() -> None:
    graph = import_graph()
    wrong = [
        f"{module} imports {target}"
        for module, targets in graph.items()
        if module.startswith("edge_daq.config")
        for target in targets
        if target.startswith(PLUGIN_PACKAGES)
    ]
    assert not wrong, "\n".join(wrong)


CONFIG_MAY_IMPORT = {
    "edge_daq",
    "edge_daq.errors",
    "edge_daq.record",
    # the plugin families' registries and the config models of their interfaces
    "edge_daq.drivers",
    "edge_daq.drivers.base",
    "edge_daq.sinks",
    "edge_daq.sinks.registry",
    "edge_daq.sinks.base",
    # the rig file's reliability sections (test, stress, failures, DUTs, channels) and their expansion
    "edge_daq.reliability",
    "edge_daq.reliability.config",
    "edge_daq.reliability.expand",
    "edge_daq.reliability.acceleration",  # a rig file's acceleration: models (they import config.types only)
    # writes to instruments: the rig file's actions, http.writes and the actions' checks (config types only)
    "edge_daq.writes",
    "edge_daq.writes.action_config",
    "edge_daq.writes.http_config",
    "edge_daq.writes.checks",
    # computed points of a rig file: the names their expressions read, checked at load
    "edge_daq.processing",
    "edge_daq.processing.checks",
}


def test_config_depends_only_on_registries_interfaces_and_its_own_bottom_layer() -> None:
    """Layering: the configuration layer knows the plugin families through their registries and interfaces;
    those interfaces know only the bottom of the configuration layer, never its models or loader back."""
    graph = import_graph()
    config_modules = [
        module for module in graph if module == "edge_daq.config" or module.startswith("edge_daq.config.")
    ]
    outside = {
        f"{module} imports {target}"
        for module in config_modules
        for target in graph[module]
        if not target.startswith("edge_daq.config") and target not in CONFIG_MAY_IMPORT
    }
    assert not outside, "\n".join(sorted(outside))
    back = {
        f"{module} imports {target}"
        for module in CONFIG_MAY_IMPORT
        for target in graph.get(module, set())
        if target in {"edge_daq.config.models", "edge_daq.config.loader"}
    }
    assert not back, "\n".join(sorted(back))


def test_the_bottom_config_module_imports_no_plugin_and_no_loader() -> None:
    graph = import_graph()
    assert graph["edge_daq.config.types"] <= {"edge_daq.config", "edge_daq.config.units", "edge_daq.config.values"}
    for module in ("edge_daq.drivers.modbus.config", "edge_daq.drivers.scpi.config", "edge_daq.reliability.expand"):
        assert not graph[module] & {"edge_daq.config.loader", "edge_daq.config.models"}, module


@pytest.mark.parametrize(
    "order",
    [
        ("edge_daq.drivers.base", "edge_daq.config.loader"),
        ("edge_daq.config.loader", "edge_daq.drivers.base"),
        ("edge_daq.reliability.expand", "edge_daq.config.loader"),
        ("edge_daq.drivers.modbus.checks", "edge_daq.config"),
    ],
)
def test_modules_import_in_any_order(order: tuple[str, str]) -> None:
    code = f"import {order[0]}, {order[1]}"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_plugin_config_model_does_not_load_the_loader() -> None:
    code = (
        "import sys, edge_daq.drivers.modbus.config, edge_daq.config.types\n"
        "assert 'edge_daq.config.loader' not in sys.modules and 'edge_daq.config.models' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
