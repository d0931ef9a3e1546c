"""No assertion in tests/ that cannot fail: on a constant, a tuple or list, an f-string, or a conditional expression
(`assert a == b if c else d` asserts `d` when `c` is false, a truthy tuple for one such test here before)."""

from __future__ import annotations

import ast

import pytest

from conftest import ROOT


def hollow_asserts(source: str) -> list[tuple[int, str]]:
    """(line, why) for each `assert` whose test is a constant, a literal tuple/list/set/dict, an f-string or a
    conditional expression at its top (a conditional inside an operand, `x == (a if c else b)`, is fine)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assert):
            continue
        test = node.test
        if isinstance(test, ast.Constant):
            found.append((node.lineno, f"assert on the constant {test.value!r}"))
        elif isinstance(test, (ast.Tuple, ast.List, ast.Set, ast.Dict, ast.JoinedStr)):
            found.append((node.lineno, f"assert on a {type(test).__name__} literal"))
        elif isinstance(test, ast.IfExp):
            found.append((node.lineno, "assert on a conditional expression (parenthesise it or use if/else)"))
    return found


@pytest.mark.parametrize(
    "source, hollow",
    [
        ("assert x == (1, 2) if y else (3, 4)", True),
        ("assert True", True),
        ("assert 1", True),
        ("assert (x, 'why')", True),
        ("assert f'{x}'", True),
        ("assert [x]", True),
        ("assert x == ((1, 2) if y else (3, 4))", False),
        ("assert x, 'why'", False),
        ("assert not x", False),
        ("assert (a if c else b) == d", False),
    ],
)
def test_the_scan_tells_hollow_asserts_from_real_ones(source: str, hollow: bool) -> None:
    assert bool(hollow_asserts(source)) is hollow


def test_no_test_asserts_something_that_cannot_fail() -> None:
    files = sorted((ROOT / "tests").rglob("*.py"))
    assert len(files) > 40
    bad = [f"{p.relative_to(ROOT)}:{line}: {why}" for p in files for line, why in hollow_asserts(p.read_text())]
    assert not bad, "\n".join(bad)
