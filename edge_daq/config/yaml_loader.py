"""YAML loading that remembers where every key, value and list item came from.

Configuration errors must point at the line a technician has to edit, so the loader records where each
node starts (file, 1-based line and column: a :class:`Mark`, kept packed until asked for) while it builds
dicts and lists. It also
rejects duplicate keys (PyYAML silently keeps the last one) and substitutes ``${NAME}`` from the
environment in string scalars. Problems are collected as :class:`~edge_daq.errors.ConfigIssue`, never
raised, so one pass reports all of them.

Every file is bounded before anything recursive or quadratic sees it (a configuration must never crash or hang
the daemon that reloads it): at most :data:`MAX_FILE_BYTES`, printable text only (a control character is
reported at its position, not as PyYAML's position-less ``ReaderError``), lists and mappings nested at most
:data:`MAX_DEPTH` deep (composing, constructing, validating and hashing recurse), aliases that add at most
:data:`MAX_ALIAS_NODES` nodes (a "billion laughs" file), integers of at most :data:`MAX_INTEGER_DIGITS` digits
(Python refuses to print one of more than 4300), and dates that exist.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from edge_daq.config.yaml_errors import explain
from edge_daq.errors import ConfigIssue

MAX_FILE_BYTES = 64 << 20
"""The largest configuration file read (a 1000-instrument rig file is about 2 MB)."""
MAX_DEPTH = 64
"""Lists and mappings nested deeper than this are refused (real files nest fewer than ten)."""
MAX_ALIAS_NODES = 1_000_000
"""The most nodes that aliases (``*name``) may add to a document by repeating what they refer to."""
MAX_INTEGER_DIGITS = 100
"""The longest integer (a longer number that is really a text, such as a serial number, goes in quotes)."""

_MERGE_TAG = "tag:yaml.org,2002:merge"
# What PyYAML's reader accepts (yaml.reader.Reader.NON_PRINTABLE); anything else is reported at its position.
_NON_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Line breaks as PyYAML counts them, for positions found outside the parser.
_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")
_MAX_CONTROL_ISSUES = 10
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


# Positions are kept packed in ints and become Mark objects only when asked for (bench/fleet.py: a Mark object
# and two dict entries per node made the located data of the fleet's 1000-instrument rig file 65 MB, and the
# load's peak stayed behind as resident memory). A position is ``line << 16 | column``. A mapping entry packs
# its value's position above the lines from its key to its value (8 bits) and its key's column (16 bits):
# under 2**60, so a small int, for files of up to a million lines. What does not fit (a column past 65535, a
# value more than 255 lines below its key) turns that container's positions into Mark objects.
_COLUMN_BITS = 16
_COLUMN_MASK = (1 << _COLUMN_BITS) - 1
_KEY_BITS = 24
_LINES_MASK = 0xFF


def _position(line: int, column: int) -> int | None:
    return line << _COLUMN_BITS | column if 0 <= column <= _COLUMN_MASK else None


def _entry(key_line: int, key_column: int, value_line: int, value_column: int) -> int | None:
    below = value_line - key_line
    if not (0 <= below <= _LINES_MASK and 0 <= key_column <= _COLUMN_MASK and 0 <= value_column <= _COLUMN_MASK):
        return None
    return ((value_line << _COLUMN_BITS | value_column) << _KEY_BITS) | below << _COLUMN_BITS | key_column


def _key_of(path: str, entry: int) -> Mark:
    line = (entry >> (_KEY_BITS + _COLUMN_BITS)) - (entry >> _COLUMN_BITS & _LINES_MASK)
    return Mark(path, line, entry & _COLUMN_MASK)


def _value_of(path: str, entry: int) -> Mark:
    return Mark(path, entry >> (_KEY_BITS + _COLUMN_BITS), entry >> _KEY_BITS & _COLUMN_MASK)


def _mark_of(path: str, position: int) -> Mark:
    return Mark(path, position >> _COLUMN_BITS, position & _COLUMN_MASK)


def _start(mark: Mark) -> int | Mark:
    """Where a container starts, packed if it can be."""
    at = _position(mark.line, mark.column)
    return mark if at is None else at


def _start_mark(path: str, at: int | Mark) -> Mark:
    return at if isinstance(at, Mark) else _mark_of(path, at)


class LocatedDict(dict[Any, Any]):
    """A YAML mapping that knows where it, each of its keys and each of its values are.

    The positions of its entries are packed ints in the file of ``mark`` until something needs them as
    :class:`Mark` objects (``key_marks``/``value_marks``, or an entry taken from another file); from then on
    the two dicts of Marks are the positions.
    """

    __slots__ = ("_at", "_marks", "_path", "_spots")

    def __init__(self, mark: Mark) -> None:
        super().__init__()
        self._path = mark.path
        self._at = _start(mark)
        self._spots: dict[Any, int] | None = {}
        self._marks: tuple[dict[Any, Mark], dict[Any, Mark]] | None = None

    @property
    def mark(self) -> Mark:
        return _start_mark(self._path, self._at)

    @property
    def key_marks(self) -> dict[Any, Mark]:
        return self._unpacked()[0]

    @property
    def value_marks(self) -> dict[Any, Mark]:
        return self._unpacked()[1]

    def _unpacked(self) -> tuple[dict[Any, Mark], dict[Any, Mark]]:
        if self._marks is None:
            path, spots = self._path, self._spots or {}
            self._marks = (
                {key: _key_of(path, entry) for key, entry in spots.items()},
                {key: _value_of(path, entry) for key, entry in spots.items()},
            )
            self._spots = None
        return self._marks

    def place(self, key: Any, value: Any, key_mark: Mark, value_mark: Mark) -> None:
        """Set an entry with the positions of its key and value."""
        self[key] = value
        spots = self._spots
        if spots is not None and key_mark.path == self._path and value_mark.path == self._path:
            entry = _entry(key_mark.line, key_mark.column, value_mark.line, value_mark.column)
            if entry is not None:
                spots[key] = entry
                return
        key_marks, value_marks = self._unpacked()
        key_marks[key] = key_mark
        value_marks[key] = value_mark

    def key_mark(self, key: Any) -> Mark:
        spots = self._spots
        if spots is None:
            return self.key_marks.get(key, self.mark)
        entry = spots.get(key)
        return self.mark if entry is None else _key_of(self._path, entry)

    def value_mark(self, key: Any) -> Mark:
        spots = self._spots
        if spots is None:
            return self.value_marks.get(key, self.mark)
        entry = spots.get(key)
        return self.mark if entry is None else _value_of(self._path, entry)

    def take(self, source: LocatedDict, key: Any) -> None:
        """Copy one entry of another mapping, with its positions (which may be in another file)."""
        self[key] = source[key]
        mine, theirs = self._spots, source._spots
        if mine is not None and theirs is not None and source._path == self._path:
            entry = theirs.get(key)
            if entry is None:  # no position of its own: the source's mark, as key_mark() gives
                mark = source.mark
                entry = _entry(mark.line, mark.column, mark.line, mark.column)
            if entry is not None:
                mine[key] = entry
                return
        key_marks, value_marks = self._unpacked()
        key_marks[key] = source.key_mark(key)
        value_marks[key] = source.value_mark(key)


class LocatedList(list[Any]):
    """A YAML sequence that knows where it and each of its items are.

    Like :class:`LocatedDict`, it keeps packed positions in the file of ``mark`` until ``item_marks`` is
    asked for.
    """

    __slots__ = ("_at", "_item_marks", "_path", "_spots")

    def __init__(self, mark: Mark) -> None:
        super().__init__()
        self._path = mark.path
        self._at = _start(mark)
        self._spots: list[int] | None = []
        self._item_marks: list[Mark] | None = None

    @property
    def mark(self) -> Mark:
        return _start_mark(self._path, self._at)

    @property
    def item_marks(self) -> list[Mark]:
        if self._item_marks is None:
            path = self._path
            self._item_marks = [_mark_of(path, position) for position in self._spots or ()]
            self._spots = None
        return self._item_marks

    def place(self, item: Any, mark: Mark) -> None:
        """Append an item with its position."""
        self.append(item)
        spots = self._spots
        if spots is not None and mark.path == self._path:
            position = _position(mark.line, mark.column)
            if position is not None:
                spots.append(position)
                return
        self.item_marks.append(mark)

    def item_mark(self, index: int) -> Mark:
        spots = self._spots
        marks: list[Mark] | list[int] = self.item_marks if spots is None else spots
        if not 0 <= index < len(marks):
            return self.mark
        return _mark_of(self._path, spots[index]) if spots is not None else self.item_marks[index]


@dataclass(slots=True, eq=False)
class YamlDocument:
    """One file read: its data (``None`` when empty or unreadable) and what went wrong while reading it."""

    path: Path
    data: Any
    issues: list[ConfigIssue] = field(default_factory=list)

    @property
    def start(self) -> Mark:
        return Mark(str(self.path), 1, 1)


def _substitute_environment(text: str, mark: Mark, issues: list[ConfigIssue]) -> str:
    """``${NAME}`` replaced from the environment; a problem is reported at ``mark`` and the text left as is."""

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name is None:
            return "${"
        if not match["close"]:
            issues.append(mark.issue("'${' is not closed by '}' (write '$${' for a literal '${')"))
        elif not _VARIABLE_NAME.fullmatch(name):
            issues.append(mark.issue(f"'${{{name}}}' is not a valid environment variable name"))
        elif name not in os.environ:
            issues.append(mark.issue(f"environment variable {name} is not set"))
        else:
            return os.environ[name]
        return match[0]

    return _REFERENCE.sub(replace, text)


class _ScalarProblem(Exception):
    """A plain scalar that resolves to a value it cannot be (an over-long integer, a 31st of February)."""


_INTEGER_LIMIT = 10**MAX_INTEGER_DIGITS
_TOO_LONG_INTEGER = f"a number of more than {MAX_INTEGER_DIGITS} digits (put a text such as a serial number in quotes)"
_NOT_TEXT = "a string cannot hold a lone surrogate escape (\\ud800 to \\udfff): it is not text"


def _is_text(text: str) -> bool:
    """Whether ``text`` can be encoded: a double-quoted ``"\\ud800"`` cannot, and would fail wherever it is written."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Located(SafeConstructor):
    """Constructors building :class:`LocatedDict`/:class:`LocatedList` and collecting issues on the way."""

    path: str
    issues: list[ConfigIssue]

    def mark_of(self, node: Node) -> Mark:
        return Mark(self.path, node.start_mark.line + 1, node.start_mark.column + 1)

    def _refuse_scalar(self, node: ScalarNode, message: str) -> str:
        """The scalar's text, with an issue at it; without a position (the event builder's nodes), raise instead."""
        if node.start_mark is None:
            raise _ScalarProblem(message)
        self.issues.append(self.mark_of(node).issue(message))
        return str(node.value)

    def construct_bounded_int(self, node: ScalarNode) -> object:
        try:
            value = SafeConstructor.construct_yaml_int(self, node)
        except ValueError:  # more digits than int() converts
            return self._refuse_scalar(node, _TOO_LONG_INTEGER)
        return self._refuse_scalar(node, _TOO_LONG_INTEGER) if abs(value) >= _INTEGER_LIMIT else value

    def construct_checked_timestamp(self, node: ScalarNode) -> object:
        try:
            return SafeConstructor.construct_yaml_timestamp(self, node)
        except (ValueError, OverflowError):
            return self._refuse_scalar(node, "not a valid date or time (put a text in quotes)")

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
            value = self.construct_object(value_node, deep=True)
            mapping.place(key, value, self.mark_of(key_node), self.mark_of(value_node))
        return mapping

    def construct_located_sequence(self, node: SequenceNode) -> LocatedList:
        sequence = LocatedList(self.mark_of(node))
        for item_node in node.value:
            sequence.place(self.construct_object(item_node, deep=True), self.mark_of(item_node))
        return sequence

    def construct_substituted_str(self, node: ScalarNode) -> str:
        text = self.construct_scalar(node)
        if not _is_text(text):
            self.issues.append(self.mark_of(node).issue(_NOT_TEXT))
        return _substitute_environment(text, self.mark_of(node), self.issues) if "$" in text else text

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
    ("tag:yaml.org,2002:int", _Located.construct_bounded_int),
    ("tag:yaml.org,2002:timestamp", _Located.construct_checked_timestamp),
)
for _loader in (LocatedLoader, _FastLocatedLoader):
    for _tag, _constructor in _CONSTRUCTORS:
        # The stubs want the constructor's first argument typed as a loader class; the mixin is one in practice.
        _loader.add_constructor(_tag, _constructor)  # type: ignore[type-var]


def parse_yaml(text: str, path: str) -> tuple[Any, list[ConfigIssue]]:
    """The data of one YAML document and the issues found; data is ``None`` after a syntax error or if the
    document is beyond the bounds (control characters, nesting, aliases)."""
    control_issues = _control_character_issues(text, path)
    if control_issues:
        return None, control_issues
    fast = _CSafeLoader is not None
    if fast:
        try:
            data, issues, aliased = _build_from_events(text, path)
        except _Unsupported:
            pass
        except yaml.YAMLError:
            fast = False  # parsed again below, for the pure-Python parser's wording of the problem
        else:
            bound = _bounds_issue(text, path) if aliased else None
            return (None, [bound]) if bound is not None else (data, issues)
    # Composing a node tree recurses (in C for libyaml): the bounds are checked on the events first.
    bound = _bounds_issue(text, path)
    if bound is not None:
        return None, [bound]
    return _parse_composed(text, path, fast=fast)


def _advance(text: str, offset: int, since: tuple[int, int, int] = (0, 1, 1)) -> tuple[int, int, int]:
    """``(offset, line, column)`` of a character offset, counting from an earlier such triple."""
    start, line, line_start = since[0], since[1], since[0] - since[2] + 1
    for match in _LINE_BREAK.finditer(text, start, offset):
        line, line_start = line + 1, match.end()
    return offset, line, offset - line_start + 1


def position_of(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset, with line breaks counted as PyYAML counts them."""
    _, line, column = _advance(text, offset)
    return line, column


def _control_character_issues(text: str, path: str) -> list[ConfigIssue]:
    """A control character (ESC, DEL, NUL, ...) where PyYAML would only say "unacceptable character", positioned;
    the first one of each line, for the first few lines that have one."""
    issues: list[ConfigIssue] = []
    at = (0, 1, 1)
    last_line = 0
    for match in _NON_PRINTABLE.finditer(text):
        at = _advance(text, match.start(), at)
        if at[1] == last_line:
            continue
        last_line = at[1]
        if len(issues) == _MAX_CONTROL_ISSUES:
            issues.append(ConfigIssue(path, at[1], at[2], "more control characters follow (not listed)"))
            break
        code = ord(match[0])
        issues.append(
            ConfigIssue(
                path,
                at[1],
                at[2],
                f"control character U+{code:04X} is not allowed in a YAML file "
                "(inside double quotes, an escape such as \\t or \\x1b writes one)",
            )
        )
    return issues


def _bounds_issue(text: str, path: str) -> ConfigIssue | None:
    """Where the document nests deeper than MAX_DEPTH or its aliases add more than MAX_ALIAS_NODES nodes.

    Read from the parser's events, which both parsers produce without recursion; a syntax error ends the scan
    (the parse that follows reports it, no deeper than the scan got). libyaml refuses a flow nested 1000 deep
    with a syntax error of its own before any event, so after an error the pure-Python parser has a look.
    """
    for loader_class in (_CSafeLoader, yaml.SafeLoader) if _CSafeLoader is not None else (yaml.SafeLoader,):
        try:
            return _scan_bounds(loader_class(text), path)
        except yaml.YAMLError:
            continue
    return None


def _scan_bounds(loader: Any, path: str) -> ConfigIssue | None:
    open_containers: list[list[int]] = []  # [nodes, levels] of each container being read
    open_anchors: list[str | None] = []
    anchors: dict[str, tuple[int, int]] = {}  # name -> nodes, levels
    added = 0

    def issue(event: Any, message: str) -> ConfigIssue:
        return ConfigIssue(path, event.start_mark.line + 1, event.start_mark.column + 1, message)

    def add(nodes: int, levels: int) -> None:
        if open_containers:
            parent = open_containers[-1]
            parent[0] += nodes
            parent[1] = max(parent[1], levels + 1)

    try:
        while True:
            event = loader.get_event()
            kind = type(event)
            if kind is MappingStartEvent or kind is SequenceStartEvent:
                if len(open_containers) >= MAX_DEPTH:
                    return issue(event, f"lists and mappings are nested more than {MAX_DEPTH} levels deep here")
                open_containers.append([1, 1])
                open_anchors.append(event.anchor)
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                nodes, levels = open_containers.pop()
                anchor = open_anchors.pop()
                if anchor is not None:
                    anchors[anchor] = (nodes, levels)
                add(nodes, levels)
            elif kind is ScalarEvent:
                if event.anchor is not None:
                    anchors[event.anchor] = (1, 0)
                add(1, 0)
            elif kind is AliasEvent:
                nodes, levels = anchors.get(event.anchor, (1, 0))  # an undefined one is the parse's to report
                added += nodes
                if added > MAX_ALIAS_NODES:
                    return issue(event, f"aliases repeat more than {MAX_ALIAS_NODES:,} nodes in this file")
                if len(open_containers) + levels > MAX_DEPTH:
                    return issue(event, f"this alias nests lists and mappings more than {MAX_DEPTH} levels deep")
                add(nodes, levels)
            elif kind is StreamEndEvent:
                return None
    finally:
        loader.dispose()


def _parse_composed(text: str, path: str, *, fast: bool) -> tuple[Any, list[ConfigIssue]]:
    """Compose the node tree and construct from it: every YAML feature, with PyYAML's own error messages."""
    if fast:
        composed = _FastLocatedLoader(text, path)
        try:
            return composed.get_single_data(), composed.issues
        except yaml.YAMLError:
            pass  # parsed again below, for the pure-Python parser's wording of the problem
        finally:
            composed.dispose()
    loader = LocatedLoader(text, path)
    try:
        return loader.get_single_data(), loader.issues
    except RecursionError:  # not expected after the bounds check; a refusal all the same, never a crash
        return None, [*loader.issues, ConfigIssue(path, 1, 1, "lists and mappings are nested too deep")]
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        # PyYAML's context is either "while scanning ..." (noise for a technician) or the first half of the sentence.
        problem = error.problem or "invalid YAML"
        context = error.context_mark
        plain = explain(
            text,
            problem,
            error.context,
            (line - 1, column - 1),
            (context.line, context.column) if context is not None else None,
        )
        if plain is not None:
            line, column, problem = plain.line, plain.column, plain.message
        elif error.context and not error.context.startswith("while"):
            problem = f"{error.context}, {problem}"
        return None, [*loader.issues, ConfigIssue(path, line, column, f"YAML syntax: {problem}")]
    except yaml.YAMLError as error:
        return None, [*loader.issues, ConfigIssue(path, 1, 1, f"YAML syntax: {error}")]
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------------------------------
# Fast path (bench/startup.py and bench/fleet.py): build the located data straight from libyaml's events. Composing
# the node tree first cost most of the load's time (PyYAML's resolver and node objects, in Python) and most of its
# memory peak (two Mark objects per node: ~100 MB for the fleet's 1.9 MB rig file). The builder gives the same data,
# positions and issues (in another order before `_Session.sorted_issues`) for the YAML that configurations use
# (plain and quoted scalars, mappings, lists, anchors and aliases); anything else raises _Unsupported and the whole
# file goes through the node loader above: explicit tags, merge keys, keys that are lists or mappings, several
# documents, undefined, duplicate or recursive anchors, plain scalars that resolve to other tags or fail to
# construct.

_STR_TAG = "tag:yaml.org,2002:str"
_PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "timestamp"))
_MISSING = object()


class _Unsupported(Exception):
    """A construct the event builder leaves to the node loader."""


def _construct_plain(loader: Any, text: str) -> Any:
    """A plain (unquoted) scalar resolved and constructed as PyYAML does (a string before substitution)."""
    tag = loader.resolve(ScalarNode, text, (True, False))
    if tag == _STR_TAG:
        return text
    if tag not in _PLAIN_TAGS:
        raise _Unsupported(tag)  # `<<` (a merge key) and `=` (the value tag)
    try:
        return loader.yaml_constructors[tag](loader, ScalarNode(tag, text))
    except _ScalarProblem:
        raise
    except Exception as error:  # e.g. an impossible timestamp: the node loader reports it as before
        raise _Unsupported(tag) from error


class _Open:
    """A mapping or list being built, with the key waiting for its value."""

    __slots__ = ("anchor", "container", "first_lines", "is_list", "key", "key_column", "key_line", "mark")

    def __init__(self, container: LocatedDict | LocatedList, mark: Mark, anchor: str | None) -> None:
        self.container: Any = container
        self.is_list = isinstance(container, LocatedList)
        self.mark = mark
        self.anchor = anchor
        self.key: Any = _MISSING  # no key waiting
        self.key_line = self.key_column = 0
        self.first_lines: dict[Any, int] = {}  # of the keys given twice or more


def _build_from_events(text: str, path: str) -> tuple[Any, list[ConfigIssue], bool]:
    """The data, the issues, and whether an alias repeated a list or mapping (then the bounds need a look)."""
    loader = _FastLocatedLoader(text, path)
    try:
        data, aliased = _build(loader, path)
        return data, loader.issues, aliased
    finally:
        loader.dispose()


def _build(loader: Any, path: str) -> tuple[Any, bool]:
    issues: list[ConfigIssue] = loader.issues
    get_event = loader.get_event
    get_event()  # StreamStartEvent
    if isinstance(get_event(), StreamEndEvent):
        return None, False  # an empty file
    plain: dict[str, Any] = {}  # plain scalar text -> its value: resolved and constructed once per text
    quoted: dict[str, str] = {}
    anchors: dict[str, tuple[Any, Mark, bool]] = {}  # name -> value, its node's mark, whether a container
    named: set[str] = set()  # anchors defined so far, finished or not
    stack: list[_Open] = []
    aliased = False
    column_bits, key_bits, column_mask, lines_mask = _COLUMN_BITS, _KEY_BITS, _COLUMN_MASK, _LINES_MASK
    while True:
        event = get_event()
        kind = type(event)
        if kind is ScalarEvent:
            start = event.start_mark
            line, column = start.line + 1, start.column + 1
            if event.tag is not None:
                raise _Unsupported(event.tag)
            # One object per distinct text and value: a fleet's rig file repeats the same keys and values
            # (name, address, holding, float32, ...) hundreds of thousands of times (bench/fleet.py: memory).
            text = event.value
            if event.implicit[0]:
                value = plain.get(text, _MISSING)
                if value is _MISSING:
                    try:
                        value = _construct_plain(loader, text)
                    except _ScalarProblem as problem:
                        issues.append(ConfigIssue(path, line, column, str(problem)))
                        value = text
                    else:
                        if value == value:  # a NaN is unequal to itself: a shared one would make duplicate keys
                            plain[text] = value
            else:
                value = quoted.get(text, _MISSING)
                if value is _MISSING:
                    if not _is_text(text):
                        issues.append(ConfigIssue(path, line, column, _NOT_TEXT))
                    else:
                        quoted[text] = text
                    value = text
            if type(value) is str and "$" in value:
                value = _substitute_environment(value, Mark(path, line, column), issues)
            is_container = False
            anchor = event.anchor
            if anchor is not None:
                if anchor in named:
                    raise _Unsupported(anchor)
                named.add(anchor)
                anchors[anchor] = (value, Mark(path, line, column), False)
        elif kind is MappingEndEvent or kind is SequenceEndEvent:
            done = stack.pop()
            value, is_container = done.container, True
            line, column = done.mark.line, done.mark.column
            if done.anchor is not None:
                anchors[done.anchor] = (value, done.mark, True)
        elif kind is MappingStartEvent or kind is SequenceStartEvent:
            if event.tag is not None:
                raise _Unsupported(event.tag)
            if len(stack) >= MAX_DEPTH:
                raise _Unsupported("too deep")  # reported by the bounds check of the fallback
            anchor = event.anchor
            if anchor is not None:
                if anchor in named:
                    raise _Unsupported(anchor)
                named.add(anchor)
            start = event.start_mark
            mark = Mark(path, start.line + 1, start.column + 1)
            stack.append(_Open(LocatedDict(mark) if kind is MappingStartEvent else LocatedList(mark), mark, anchor))
            continue
        elif kind is AliasEvent:
            entry = anchors.get(event.anchor)
            if entry is None:
                raise _Unsupported(event.anchor)  # undefined, or an alias inside its own anchor
            value, mark, is_container = entry
            aliased = aliased or is_container
            line, column = mark.line, mark.column
        else:
            raise _Unsupported(kind.__name__)
        if not stack:
            break
        top = stack[-1]
        container = top.container
        if top.is_list:
            item_spots = container._spots
            if column <= column_mask and item_spots is not None:
                container.append(value)
                item_spots.append(line << column_bits | column)
            else:
                container.place(value, Mark(path, line, column))
        elif top.key is _MISSING:  # the key of an entry
            if is_container:
                raise _Unsupported("a key that is a list or mapping")
            if value in container:
                first = top.first_lines.setdefault(value, container.key_mark(value).line)
                issues.append(ConfigIssue(path, line, column, f"duplicate key {value!r} (first given on line {first})"))
            top.key, top.key_line, top.key_column = value, line, column
        else:
            key, key_line, key_column = top.key, top.key_line, top.key_column
            top.key = _MISSING
            below = line - key_line  # negative for an alias to an anchor above the key
            entry_spots = container._spots
            packable = 0 <= below <= lines_mask and key_column <= column_mask and column <= column_mask
            if packable and entry_spots is not None:
                container[key] = value
                entry_spots[key] = ((line << column_bits | column) << key_bits) | below << column_bits | key_column
            else:
                container.place(key, value, Mark(path, key_line, key_column), Mark(path, line, column))
    get_event()  # DocumentEndEvent
    if not isinstance(get_event(), StreamEndEvent):
        raise _Unsupported("several documents")  # the node loader reports it
    return value, aliased


class _NotReadable(Exception):
    """A file that is not read at all: a folder, a device, a pipe, or one too large to be configuration."""


def _read_bounded(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES; a FIFO or a device would block or never end."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(descriptor).st_mode
    except OSError:
        os.close(descriptor)
        raise
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise _NotReadable(
            "this is a folder, not a YAML file"
            if stat.S_ISDIR(mode)
            else "not a regular file (a device, a pipe or a socket)"
        )
    with os.fdopen(descriptor, "rb") as file:
        content = file.read(MAX_FILE_BYTES + 1)
    if len(content) > MAX_FILE_BYTES:
        raise _NotReadable(f"the file is larger than {MAX_FILE_BYTES >> 20} MiB: too large for configuration")
    return content


def read_yaml(path: Path) -> YamlDocument:
    """Read and parse one file; an unreadable, non-text or empty file becomes an issue, never an exception."""
    document = YamlDocument(path, None)
    try:
        content = _read_bounded(path)
    except _NotReadable as problem:
        document.issues.append(document.start.issue(str(problem)))
        return document
    except OSError as error:
        document.issues.append(document.start.issue(f"cannot read the file: {error.strerror or error}"))
        return document
    except ValueError:  # a NUL in the name: only a path from another file can have one, and those are checked
        document.issues.append(document.start.issue("cannot read the file: its name contains a NUL character"))
        return document
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        valid = content[: error.start].decode("utf-8")
        line, column = position_of(valid, len(valid))
        message = "not a text file (it is not valid UTF-8)" if not valid else "not valid UTF-8 text from here on"
        document.issues.append(ConfigIssue(str(path), line, column, message))
        return document
    document.data, document.issues = parse_yaml(text, str(path))
    if document.data is None and not document.issues:
        document.issues.append(document.start.issue("the file is empty"))
    return document
