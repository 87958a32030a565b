"""Computed points: fields derived from the other fields of the same record by a safe expression.

Sample (rig file, on an instrument; per channel when its inputs are per-channel fields)::

    computed:
      - {name: p, expr: "v * i / 1000", unit: W}        # per socket: v in V, i in mA
      - {name: leak_ua, expr: "i * 1000 if v > 0.5 else 0"}

An expression is parsed and checked once, when the file loads, and evaluated with simpleeval (a maintained
evaluator with no access to attributes, imports or builtins) on the parsed tree, so a record pays for a walk of
a few nodes, never for a parse. Computed points are evaluated in the order written, on every record the
instrument's poll gives (the main record and each channel's), before the record enters the ring queue: they are
ordinary fields from then on (the reliability engine, the spool and every output see them). A point whose input
is missing from a record, or whose value cannot be computed (a division by zero, a NaN), is missing from it too.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import Field, field_validator
from simpleeval import SimpleEval

from edge_daq.config.types import NAME_PATTERN, StrictModel
from edge_daq.record import FieldValue, Record

log = structlog.get_logger("edge_daq.processing")

MAX_EXPRESSION = 1000  # characters
MAX_NODES = 200  # of a parsed expression: what a record's evaluation walks is bounded

FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "min": min,
    "max": max,
    "round": round,
    "float": float,
    "int": int,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "log10": math.log10,
    "hypot": math.hypot,
}
CONSTANTS: dict[str, FieldValue] = {"pi": math.pi, "e": math.e, "True": True, "False": False}

# The arithmetic, comparison and logic simpleeval knows, without its string and power helpers: ``**`` is
# bounded by simpleeval itself (safe_power), so a huge exponent raises rather than hangs.
_OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Not: operator.not_,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_ALLOWED_NODES: tuple[type, ...] = (
    ast.Expression,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.UnaryOp,
    ast.BinOp,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.Compare,
    ast.IfExp,
    ast.Call,
    ast.Pow,
    *_OPERATORS,
)


class ExpressionError(ValueError):
    """An expression that cannot be used; ``offset`` is its 0-based column inside the expression."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at column {offset + 1} of the expression)")
        self.offset = offset


def parse_expression(expr: str) -> tuple[ast.expr, frozenset[str]]:
    """The checked tree of ``expr`` and the field names it reads; raises :class:`ExpressionError`."""
    if len(expr) > MAX_EXPRESSION:
        raise ExpressionError(f"an expression is at most {MAX_EXPRESSION} characters", MAX_EXPRESSION)
    if "\n" in expr or "\r" in expr:
        raise ExpressionError("an expression is one line", min(expr.find("\n") % (len(expr) + 1), len(expr)))
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as error:
        leading = len(expr) - len(expr.lstrip())
        raise ExpressionError(f"syntax error: {error.msg}", leading + max(0, (error.offset or 1) - 1)) from None
    names: set[str] = set()
    leading = len(expr) - len(expr.lstrip())
    for count, node in enumerate(ast.walk(tree)):
        offset = leading + getattr(node, "col_offset", 0)
        if count >= MAX_NODES:
            raise ExpressionError(f"an expression has at most {MAX_NODES} terms", offset)
        if not isinstance(node, _ALLOWED_NODES):
            raise ExpressionError(f"{type(node).__name__} is not allowed in an expression", offset)
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                called = node.func.id if isinstance(node.func, ast.Name) else "this"
                known = ", ".join(sorted(FUNCTIONS))
                raise ExpressionError(f"unknown function {called!r} (functions: {known})", offset)
            if node.keywords:
                raise ExpressionError("functions take no keyword arguments", offset)
        elif isinstance(node, ast.Name) and node.id not in CONSTANTS and node.id not in FUNCTIONS:
            names.add(node.id)
        elif isinstance(node, ast.Constant) and not isinstance(node.value, int | float | bool | str):
            raise ExpressionError(f"a constant of type {type(node.value).__name__} is not allowed", offset)
    # Function names appear as ast.Name under ast.Call; a field named like a function is shadowed by it.
    return tree.body, frozenset(names)


def name_offset(expr: str, name: str) -> int:
    """Where ``name`` is first read in ``expr`` (0-based), for a positioned error."""
    leading = len(expr) - len(expr.lstrip())
    tree = ast.parse(expr.strip(), mode="eval")
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == name:
            return leading + node.col_offset
    return 0


class ComputedPoint(StrictModel):
    """One computed point of an instrument."""

    name: str = Field(pattern=NAME_PATTERN, max_length=128)
    expr: str = Field(min_length=1, max_length=MAX_EXPRESSION)
    unit: str | None = Field(default=None, max_length=64)

    @field_validator("expr")
    @classmethod
    def _parses(cls, expr: str) -> str:
        parse_expression(expr)  # raises ExpressionError, a ValueError: pydantic positions it at the value
        return expr


@dataclass(slots=True)
class _Compiled:
    name: str
    expr: str
    tree: ast.expr
    inputs: tuple[str, ...]
    errors: int = 0
    failing: bool = False


@dataclass(slots=True)
class ComputedFields:
    """An instrument's computed points, compiled; :meth:`apply` adds them to a record's fields in place."""

    instrument: str
    points: list[_Compiled]
    _evaluator: SimpleEval = field(init=False)

    def __post_init__(self) -> None:
        self._evaluator = SimpleEval(operators=dict(_OPERATORS), functions=dict(FUNCTIONS), names={})
        self._evaluator.operators[ast.Pow] = _bounded_power

    @property
    def errors(self) -> int:
        """Evaluations that failed (a division by zero, a wrong type): each left its point missing."""
        return sum(point.errors for point in self.points)

    def apply(self, fields: dict[str, FieldValue]) -> None:
        evaluator = self._evaluator
        names: dict[str, Any] = {**CONSTANTS, **fields}
        evaluator.names = names
        for point in self.points:
            if not all(name in names for name in point.inputs):
                continue  # an input missing from this record: the point is missing too
            try:
                value = evaluator.eval(point.expr, previously_parsed=point.tree)
            except Exception as error:
                self._failed(point, error)
                continue
            if type(value) is bool or type(value) is int:
                pass
            elif isinstance(value, int | float) and math.isfinite(value):
                value = float(value)
            else:
                self._failed(point, ValueError(f"the result {value!r} is not a finite number or a boolean"))
                continue
            if point.failing:
                point.failing = False
                log.info("computed_point_recovered", instrument=self.instrument, point=point.name)
            fields[point.name] = value
            names[point.name] = value  # later points may use it

    def apply_all(self, records: Iterable[Record]) -> None:
        for record in records:
            self.apply(record.fields)

    def _failed(self, point: _Compiled, error: Exception) -> None:
        point.errors += 1
        if not point.failing:  # once per episode: the counter has every one
            point.failing = True
            log.warning(
                "computed_point_failed", instrument=self.instrument, point=point.name, expr=point.expr, error=str(error)
            )


MAX_EXPONENT = 1000


def _bounded_power(base: Any, exponent: Any) -> Any:
    if abs(exponent) > MAX_EXPONENT:
        raise OverflowError(f"an exponent is at most {MAX_EXPONENT}")
    return operator.pow(base, exponent)


def compile_points(instrument: str, points: Sequence[ComputedPoint]) -> ComputedFields | None:
    """The compiled points of an instrument, or None if it has none (the record builder then does no work)."""
    if not points:
        return None
    compiled = []
    for point in points:
        tree, names = parse_expression(point.expr)
        compiled.append(_Compiled(point.name, point.expr, tree, tuple(sorted(names))))
    return ComputedFields(instrument, compiled)


def unknown_names(points: Sequence[ComputedPoint], known: Mapping[str, str]) -> list[tuple[int, str, str]]:
    """``(index, name, message)`` for each name a point reads that is neither in ``known`` (field name to its
    kind: "record" or "channel") nor an earlier computed point, and for a point mixing the two kinds."""
    available = dict(known)
    problems: list[tuple[int, str, str]] = []
    for index, point in enumerate(points):
        _, names = parse_expression(point.expr)
        kinds = set()
        for name in sorted(names):
            kind = available.get(name)
            if kind is None:
                choices = ", ".join(sorted(available)) or "none"
                problems.append((index, name, f"unknown name {name!r} (points of this instrument: {choices})"))
            else:
                kinds.add(kind)
        if len(kinds) > 1:
            first = sorted(names)[0]
            problems.append(
                (index, first, "an expression mixes per-channel fields and main-record points: it is never computed")
            )
        if point.name in available and point.name not in {p.name for p in points[:index]}:
            problems.append((index, "", f"computed point {point.name!r} has the name of a point of the instrument"))
        available[point.name] = kinds.pop() if len(kinds) == 1 else "record"
    return problems
