"""YAML loading that remembers where every key, value and list item came from.

Configuration errors must point at the line a technician has to edit, so the loader records a
:class:`Mark` (file, line, column, 1-based) for each node while it builds plain dicts and lists. It also
rejects duplicate keys (PyYAML silently keeps the last one) and substitutes ``${NAME}`` from the
environment in string scalars. Problems are collected as :class:`~edge_daq.errors.ConfigIssue`, never
raised, so one pass reports all of them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from edge_daq.errors import ConfigIssue

_MERGE_TAG = "tag:yaml.org,2002:merge"
# `$${` is a literal `${`; otherwise `${` opens a variable reference that must be closed.
_REFERENCE = re.compile(r"\$\$\{|\$\{(?P<name>[^}]*)(?P<close>\}?)")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class Mark:
    """Where a YAML node starts: the file as the user named it, 1-based line and column."""

    path: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"

    def issue(self, message: str) -> ConfigIssue:
        return ConfigIssue(self.path, self.line, self.column, message)


class LocatedDict(dict[Any, Any]):
    """A YAML mapping that knows where it, each of its keys and each of its values are."""

    def __init__(self, mark: Mark) -> None:
        super().__init__()
        self.mark = mark
        self.key_marks: dict[Any, Mark] = {}
        self.value_marks: dict[Any, Mark] = {}

    def key_mark(self, key: Any) -> Mark:
        return self.key_marks.get(key, self.mark)

    def value_mark(self, key: Any) -> Mark:
        return self.value_marks.get(key, self.mark)

    def take(self, source: LocatedDict, key: Any) -> None:
        """Copy one entry of another mapping, with its positions (which may be in another file)."""
        self[key] = source[key]
        self.key_marks[key] = source.key_mark(key)
        self.value_marks[key] = source.value_mark(key)


class LocatedList(list[Any]):
    """A YAML sequence that knows where it and each of its items are."""

    def __init__(self, mark: Mark) -> None:
        super().__init__()
        self.mark = mark
        self.item_marks: list[Mark] = []

    def item_mark(self, index: int) -> Mark:
        return self.item_marks[index] if 0 <= index < len(self.item_marks) else self.mark


@dataclass(slots=True, eq=False)
class YamlDocument:
    """One file read: its data (``None`` when empty or unreadable) and what went wrong while reading it."""

    path: Path
    data: Any
    issues: list[ConfigIssue] = field(default_factory=list)

    @property
    def start(self) -> Mark:
        return Mark(str(self.path), 1, 1)


class _Located(SafeConstructor):
    """Constructors building :class:`LocatedDict`/:class:`LocatedList` and collecting issues on the way."""

    path: str
    issues: list[ConfigIssue]

    def mark_of(self, node: Node) -> Mark:
        return Mark(self.path, node.start_mark.line + 1, node.start_mark.column + 1)

    def construct_located_mapping(self, node: MappingNode) -> LocatedDict:
        self._report_duplicate_keys(node)
        self.flatten_mapping(node)  # resolves `<<:` merge keys; later pairs override earlier ones
        mapping = LocatedDict(self.mark_of(node))
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                self.issues.append(self.mark_of(key_node).issue("a key must be a plain value, not a list or mapping"))
                continue
            mapping[key] = self.construct_object(value_node, deep=True)
            mapping.key_marks[key] = self.mark_of(key_node)
            mapping.value_marks[key] = self.mark_of(value_node)
        return mapping

    def construct_located_sequence(self, node: SequenceNode) -> LocatedList:
        sequence = LocatedList(self.mark_of(node))
        for item_node in node.value:
            sequence.append(self.construct_object(item_node, deep=True))
            sequence.item_marks.append(self.mark_of(item_node))
        return sequence

    def construct_substituted_str(self, node: ScalarNode) -> str:
        return self._substitute_environment(self.construct_scalar(node), node)

    def _report_duplicate_keys(self, node: MappingNode) -> None:
        first_lines: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                continue
            key = self.construct_object(key_node)
            mark = self.mark_of(key_node)
            if key in first_lines:
                self.issues.append(mark.issue(f"duplicate key {key!r} (first given on line {first_lines[key]})"))
            else:
                first_lines[key] = mark.line

    def _substitute_environment(self, text: str, node: ScalarNode) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match["name"]
            if name is None:
                return "${"
            if not match["close"]:
                self.issues.append(
                    self.mark_of(node).issue("'${' is not closed by '}' (write '$${' for a literal '${')")
                )
            elif not _VARIABLE_NAME.fullmatch(name):
                self.issues.append(self.mark_of(node).issue(f"'${{{name}}}' is not a valid environment variable name"))
            elif name not in os.environ:
                self.issues.append(self.mark_of(node).issue(f"environment variable {name} is not set"))
            else:
                return os.environ[name]
            return match[0]

        return _REFERENCE.sub(replace, text)


class LocatedLoader(_Located, yaml.SafeLoader):
    """The pure-Python loader: its syntax error messages are the ones reported to the user."""

    def __init__(self, text: str, path: str) -> None:
        yaml.SafeLoader.__init__(self, text)
        self.path = path
        self.issues = []


# Fast path (bench/startup.py: the pure-Python parser took most of `edge-daq check` on a 1000-instrument config):
# libyaml's parser, when PyYAML was built with it. It composes the same nodes with the same start marks, so the
# constructors see no difference; only its syntax error messages differ, so a file it rejects is parsed again
# by the pure-Python loader for the message.
_CSafeLoader: type[yaml.SafeLoader] | None = getattr(yaml, "CSafeLoader", None)


class _FastLocatedLoader(_Located, _CSafeLoader or yaml.SafeLoader):  # type: ignore[misc]
    def __init__(self, text: str, path: str) -> None:
        (_CSafeLoader or yaml.SafeLoader).__init__(self, text)
        self.path = path
        self.issues = []


_CONSTRUCTORS = (
    ("tag:yaml.org,2002:map", _Located.construct_located_mapping),
    ("tag:yaml.org,2002:seq", _Located.construct_located_sequence),
    ("tag:yaml.org,2002:str", _Located.construct_substituted_str),
)
for _loader in (LocatedLoader, _FastLocatedLoader):
    for _tag, _constructor in _CONSTRUCTORS:
        # The stubs want the constructor's first argument typed as a loader class; the mixin is one in practice.
        _loader.add_constructor(_tag, _constructor)  # type: ignore[type-var]


def parse_yaml(text: str, path: str) -> tuple[Any, list[ConfigIssue]]:
    """The data of one YAML document and the issues found; data is ``None`` after a syntax error."""
    if _CSafeLoader is not None:
        fast = _FastLocatedLoader(text, path)
        try:
            return fast.get_single_data(), fast.issues
        except yaml.YAMLError:
            pass  # parsed again below, for the pure-Python parser's wording of the problem
        finally:
            fast.dispose()
    loader = LocatedLoader(text, path)
    try:
        return loader.get_single_data(), loader.issues
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        # PyYAML's context is either "while scanning ..." (noise for a technician) or the first half of the sentence.
        problem = error.problem or "invalid YAML"
        if error.context and not error.context.startswith("while"):
            problem = f"{error.context}, {problem}"
        return None, [*loader.issues, ConfigIssue(path, line, column, f"YAML syntax: {problem}")]
    except yaml.YAMLError as error:
        return None, [*loader.issues, ConfigIssue(path, 1, 1, f"YAML syntax: {error}")]
    finally:
        loader.dispose()


def read_yaml(path: Path) -> YamlDocument:
    """Read and parse one file; an unreadable, non-text or empty file becomes an issue, never an exception."""
    document = YamlDocument(path, None)
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        document.issues.append(document.start.issue("this is a folder, not a YAML file"))
        return document
    except UnicodeDecodeError:
        document.issues.append(document.start.issue("not a text file (it is not valid UTF-8)"))
        return document
    except OSError as error:
        document.issues.append(document.start.issue(f"cannot read the file: {error.strerror or error}"))
        return document
    document.data, document.issues = parse_yaml(text, str(path))
    if document.data is None and not document.issues:
        document.issues.append(document.start.issue("the file is empty"))
    return document
