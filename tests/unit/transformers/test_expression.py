import pytest

from streams.transformers.expression import Expression, ExpressionError


@pytest.mark.parametrize(
    "src, env, want",
    [
        ("volume * 100 / (1e9 * cpu_number)", {"volume": 2e9, "cpu_number": 2}, 100.0),
        ("-volume + 1", {"volume": 3}, -2.0),
        ("volume // 1024 % 10", {"volume": 20480}, 0.0),
        ("2 ** 10", {}, 1024.0),
        ("max(a, b) - min(a, b) + abs(-1) + round(2.6)", {"a": 1, "b": 5}, 8.0),
        ("a if a > b else b", {"a": 1, "b": 5}, 5.0),
        ("pi * 0 + e * 0", {}, 0.0),
    ],
)
def test_evaluates(src, env, want):
    assert Expression(src, env.keys())(env) == pytest.approx(want)


@pytest.mark.parametrize(
    "src, problem",
    [
        ("__import__('os').system('true')", "only calls to"),
        ("volume.__class__", "Attribute is not allowed"),
        ("[1, 2][0]", "Subscript is not allowed"),
        ("(lambda: 1)()", "only calls to"),
        ("'text'", "only numbers"),
        ("True + 1", "only numbers"),
        ("open('/etc/passwd')", "only calls to"),
        ("volume +", "syntax error"),
        ("x * 2", "unknown name(s) x"),
        ("round(volume, ndigits=1)", "only calls to"),
    ],
)
def test_rejects_unsafe_or_invalid(src, problem):
    with pytest.raises(ExpressionError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        Expression(src, {"volume"})


def test_division_by_zero_is_an_arithmetic_error():
    with pytest.raises(ArithmeticError):
        Expression("1 / volume", {"volume"})({"volume": 0})


def test_open_names_are_reported():
    e = Expression("volume * cpu_number", None)
    assert e.variables == {"volume", "cpu_number"}
