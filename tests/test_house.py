"""The house rules of the package, checked on its source: functions small enough to read, the formatter in charge,
a public API that says what each name takes and returns, and a short front door."""

import ast
import inspect
from pathlib import Path

import iclgd_lens

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES, MAX_PARAMETERS = 60, 8


def functions():
    for path in sorted((ROOT / "iclgd_lens").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{path.relative_to(ROOT)}:{node.lineno} {node.name}", node


def parameters(node: ast.FunctionDef) -> int:
    a = node.args
    names = [*a.posonlyargs, *a.args, *a.kwonlyargs] + [x for x in (a.vararg, a.kwarg) if x is not None]
    return len([n for n in names if n.arg not in ("self", "cls")])


def test_no_function_over_60_lines_or_8_parameters():
    long = [name for name, node in functions() if node.end_lineno - node.lineno + 1 > MAX_LINES]
    many = [name for name, node in functions() if parameters(node) > MAX_PARAMETERS]
    assert not long and not many, (long, many)


def test_the_rules_can_fail():
    wide = ast.parse("def f(a, b, c, d, e, f, g, h, i, *, j=1, **k):\n    pass").body[0]
    assert parameters(wide) == 11
    method = ast.parse("def f(self, a):\n    pass").body[0]
    assert parameters(method) == 1


def test_no_formatter_escapes_in_the_package():
    escaped = [str(p) for p in (ROOT / "iclgd_lens").rglob("*.py") if "fmt: skip" in p.read_text()]
    assert not escaped


def test_every_public_name_says_what_it_takes_and_returns():
    for name in iclgd_lens.__all__:
        value = getattr(iclgd_lens, name)
        doc = inspect.getdoc(value) or ""
        assert doc and not doc.startswith(f"{name}("), f"{name} has no docstring of its own"
        if inspect.isfunction(value):
            assert "return" in doc.lower(), f"{name}'s docstring does not say what it returns"


def test_the_front_door_is_at_most_8_kb():
    assert (ROOT / "README.md").stat().st_size <= 8 * 1024
