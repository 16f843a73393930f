"""Safe arithmetic expressions for transformers, compiled once.

Ceilometer's ``unit_conversion`` and ``arithmetic`` transformers ran
``eval()`` on configured strings. Here an expression is parsed with
:mod:`ast`, checked against a whitelist (numbers, names, + - * / // % **,
unary minus, comparisons, ``a if c else b``, and calls to ``min``, ``max``,
``abs``, ``round``), and only then compiled to bytecode, once, at load time.
Attribute access, subscripts, lambdas, comprehensions and any other call are
rejected before anything runs, so an expression can read only the variables
it is given.

Example::

    expr = Expression("volume * 100 / (1e9 * cpu_number)", {"volume", "cpu_number"})
    expr({"volume": 2e9, "cpu_number": 2.0})   # -> 100.0
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterable, Mapping
from typing import Any

_FUNCTIONS: dict[str, Any] = {"min": min, "max": max, "abs": abs, "round": round}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}

_ALLOWED_NODES = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp, ast.BoolOp, ast.Constant, ast.Name,
    ast.Load, ast.Call, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub,
    ast.UAdd, ast.Not, ast.And, ast.Or, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq,
)


class ExpressionError(ValueError):
    """An expression is not valid, or uses something outside the whitelist."""


class Expression:
    """A validated, compiled arithmetic expression.

    Args:
        source: the expression text, e.g. ``"volume / 1024"``.
        names: variable names it may use (besides ``pi``, ``e`` and the functions);
            None accepts any name, to be supplied at call time (``variables``
            lists what the expression uses).

    Raises:
        ExpressionError: syntax error, a forbidden construct, or an unknown name;
            the message quotes the expression.
    """

    def __init__(self, source: str, names: Iterable[str] | None) -> None:
        self.source = source
        self.names = frozenset(names) if names is not None else None
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(f"{source!r}: syntax error: {exc.msg}") from None
        used: set[str] = set()
        for node in ast.walk(tree):
            if not isinstance(node, _ALLOWED_NODES):
                raise ExpressionError(f"{source!r}: {type(node).__name__} is not allowed")
            if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)) \
                    or isinstance(node, ast.Constant) and isinstance(node.value, bool):
                raise ExpressionError(f"{source!r}: only numbers are allowed as constants")
            if isinstance(node, ast.Call):
                if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
                    raise ExpressionError(
                        f"{source!r}: only calls to {', '.join(sorted(_FUNCTIONS))} are allowed")
            elif isinstance(node, ast.Name) and node.id not in _FUNCTIONS:
                used.add(node.id)
        unknown = used - self.names - set(_CONSTANTS) if self.names is not None else set()
        if unknown:
            raise ExpressionError(
                f"{source!r}: unknown name(s) {', '.join(sorted(unknown))}; "
                f"available: {', '.join(sorted(self.names | set(_CONSTANTS)))}")
        self.variables = frozenset(used - set(_CONSTANTS))
        self._code = compile(tree, f"<expression {source!r}>", "eval")
        self._globals = {"__builtins__": {}, **_FUNCTIONS, **_CONSTANTS}

    def __call__(self, variables: Mapping[str, float]) -> float:
        """Evaluate with ``variables``.

        Returns:
            the value as a float.

        Raises:
            ArithmeticError: division by zero, overflow.
            KeyError / NameError: a variable the expression uses is missing.
        """
        return float(eval(self._code, self._globals, dict(variables)))  # noqa: S307 - validated AST

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"
