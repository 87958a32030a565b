"""YAML syntax errors in plain words: what is wrong, its usual cause, and where.

PyYAML says "mapping values are not allowed here" or "expected <block end>, but found '<block mapping
start>'" at the line after the mistake; a technician wants "no space after ':' in 'test:HTOL'" at the line
of the mistake. Only the few lines around the error are looked at (each cut to ``_LINE_LOOK``
characters), so explaining an error costs nothing whatever the size of the file.
"""

from __future__ import annotations

from dataclasses import dataclass

_LINE_LOOK = 200  # characters of a line looked at
_LINES_BACK = 50  # lines walked back to find the enclosing keys
_NEITHER = (
    "this line is neither 'key: value' nor '- item': a ': ' is missing, or a value that goes on over several "
    "lines needs quotes"
)
_INDENT_HINT = "keys of one mapping start in the same column, each level indented by the same step (two spaces)"


@dataclass(frozen=True, slots=True)
class SyntaxProblem:
    line: int  # 1-based
    column: int  # 1-based
    message: str  # without the "YAML syntax: " prefix


def explain(
    text: str, problem: str, context: str | None, at: tuple[int, int], context_at: tuple[int, int] | None
) -> SyntaxProblem | None:
    """A plain-words explanation of PyYAML's ``problem`` at ``at`` (0-based line, column), or None.

    ``context`` and ``context_at`` are PyYAML's (``while scanning a quoted scalar`` and where it began).
    """
    lines = text.split("\n", at[0] + 1)[: at[0] + 1]
    line, column = at
    here = lines[line][:_LINE_LOOK] if line < len(lines) else ""
    if "'\\t'" in problem or "tab" in problem:
        tab = here.find("\t")
        return SyntaxProblem(
            line + 1,
            (tab if tab >= 0 else column) + 1,
            "a tab character: YAML allows only spaces for indentation and after ':' (replace the tab with spaces)",
        )
    if context == "while scanning a quoted scalar" and context_at is not None:
        return SyntaxProblem(
            context_at[0] + 1, context_at[1] + 1, "this quoted value is never closed: its closing quote is missing"
        )
    if context in ("while parsing a flow mapping", "while parsing a flow sequence") and context_at is not None:
        opening, closing = ("{", "}") if "mapping" in context else ("[", "]")
        return SyntaxProblem(
            context_at[0] + 1,
            context_at[1] + 1,
            f"this '{opening}' is not closed: a '{closing}' is missing, or a ',' between two of its items",
        )
    if problem == "mapping values are not allowed here" or problem.startswith("expected <block end>"):
        return _mapping_problem(lines, line, column)
    if problem == "could not find expected ':'" and context_at is not None:
        start = lines[context_at[0]][:_LINE_LOOK] if context_at[0] < len(lines) else ""
        colon = _missing_space(start)
        if colon is not None:
            return _no_space(context_at[0], start, colon)
        return SyntaxProblem(context_at[0] + 1, context_at[1] + 1, _NEITHER)
    return None


def _no_space(number: int, text: str, colon: int) -> SyntaxProblem:
    key, _, value = _content(text).partition(":")
    return SyntaxProblem(
        number + 1,
        colon + 1,
        f"no space after ':' in {key + ':' + value!r}: write '{key}: {value}' (a key is followed by ': ')",
    )


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content(line: str) -> str:
    """A line without its indentation and list dash."""
    stripped = line.strip()
    while stripped.startswith("- ") or stripped == "-":
        stripped = stripped[2:].lstrip()
    return stripped


def _missing_space(line: str) -> int | None:
    """The 0-based column of the ':' in ``key:value`` (no space after the colon), or None."""
    content = _content(line)
    if not content or content[0] in "#'\"{[" or ": " in content or content.endswith(":"):
        return None
    key, colon, value = content.partition(":")
    if not colon or not key[:1].isalpha() or not value or any(c in key for c in " \t,{}[]") or value.startswith("//"):
        return None  # `http://host` is a value, not a key
    return line.find(content) + len(key)


def missing_space_after_colon(value: str) -> bool:
    """Whether a scalar looks like ``key:value`` written without the space (so YAML took it as text)."""
    return "\n" not in value and _missing_space(value[:_LINE_LOOK]) is not None


def _mapping_problem(lines: list[str], line: int, column: int) -> SyntaxProblem | None:
    here = lines[line][:_LINE_LOOK] if line < len(lines) else ""
    previous = next(
        (
            (number, lines[number][:_LINE_LOOK])
            for number in range(line - 1, max(-1, line - _LINES_BACK), -1)
            if lines[number].strip() and not lines[number].lstrip().startswith("#")
        ),
        None,
    )
    for number, text in ([previous] if previous else []) + [(line, here)]:
        colon = _missing_space(text)
        if colon is not None:
            return _no_space(number, text, colon)
    content = _content(here)
    if content.count(": ") > 1 and not content.startswith(("{", "[", "'", '"')):
        second = here.find(": ", here.find(": ") + 2)
        return SyntaxProblem(
            line + 1, second + 1, "a second ': ' on one line: put a value that contains ': ' in quotes"
        )
    if previous is None or not here.strip():
        return None
    indent, previous_number, previous_line = _indent(here), previous[0], previous[1]
    if indent > _indent(previous_line) and not previous_line.rstrip().endswith(":"):
        return SyntaxProblem(
            line + 1,
            indent + 1,
            f"this line is indented more than line {previous_number + 1} above it, which already has its value: "
            f"{_INDENT_HINT}",
        )
    open_columns = sorted(set(_open_columns(lines, line)))
    if indent in open_columns:  # this line is fine: the one above it is no `key: value`
        return SyntaxProblem(previous_number + 1, _indent(previous_line) + 1, _NEITHER)
    columns = [str(c + 1) for c in open_columns] or ["1"]
    shown = columns[0] if len(columns) == 1 else f"{', '.join(columns[:-1])} or {columns[-1]}"
    return SyntaxProblem(
        line + 1,
        indent + 1,
        f"wrong indentation: this line starts in column {indent + 1}, the keys above it in column {shown}: "
        f"{_INDENT_HINT}",
    )


def _open_columns(lines: list[str], line: int) -> list[int]:
    """Columns where a key may start on ``line``: those of the enclosing keys above it."""
    columns: list[int] = []
    for number in range(line - 1, max(-1, line - _LINES_BACK), -1):
        text = lines[number][:_LINE_LOOK]
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        indent = _indent(text)
        content_column = text.find(_content(text)) if text.lstrip().startswith("- ") else indent
        for candidate in (content_column, indent):  # in a list item, the item's keys and the dash
            if not columns or candidate < columns[-1]:
                columns.append(candidate)
        if indent == 0:
            break
    return columns
