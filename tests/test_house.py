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


# Modules whose tests live in a module named for what they test together (a family's pipeline, the command line
# end to end): the test module, and a name of the module the test module must use.
TESTED_WITH = {
    "analysis/heads/kendall.py": ("tests/analysis/test_attribution.py", "iclgd_lens.analysis.heads.kendall"),
    "analysis/heads/patterns.py": ("tests/views/test_views.py", "iclgd_lens.analysis.heads.patterns"),
    "analysis/lenses/lens_findings.py": ("tests/views/test_findings.py", "iclgd_lens.analysis.lenses.lens_findings"),
    "analysis/lenses/implicit_update.py": (
        "tests/analysis/test_lenses.py",
        "iclgd_lens.analysis.lenses.implicit_update",
    ),
    "analysis/lenses/lens_nulls.py": ("tests/analysis/test_lenses.py", "iclgd_lens.analysis.lenses.lens_nulls"),
    "analysis/lenses/lens_runs.py": ("tests/analysis/test_lenses.py", "iclgd_lens.analysis.lenses.lens_runs"),
    "analysis/lenses/patch_transfer.py": ("tests/analysis/test_implicit_patch.py", "patch_transfer"),
    "analysis/lenses/task_vectors.py": ("tests/analysis/test_lenses.py", "iclgd_lens.analysis.lenses.task_vectors"),
    "analysis/lenses/values.py": ("tests/analysis/test_lenses.py", "iclgd_lens.analysis.lenses.values"),
    "analysis/protocol/bootstrap.py": ("tests/analysis/test_tables.py", "bootstrap"),
    "analysis/protocol/plan.py": ("tests/analysis/test_sweep.py", "iclgd_lens.analysis.protocol.plan"),
    "analysis/protocol/pooled.py": ("tests/analysis/test_lenses.py", "iclgd_lens.analysis.protocol.pooled"),
    "backend.py": ("tests/bridge/test_bridge_pitfalls.py", "iclgd_lens.backend"),
    "cli/__init__.py": ("tests/cli/test_cli.py", "from iclgd_lens.cli import main"),
    "cli/commands.py": ("tests/cli/test_cli.py", "from iclgd_lens.cli import main"),
    "cli/lens_jobs.py": ("tests/analysis/test_lenses.py", "iclgd_lens.cli.lens_jobs"),
    "cli/parser.py": ("tests/cli/test_bad_input.py", "from iclgd_lens.cli import main"),
    "core/shared_prefix.py": ("tests/core/test_recording.py", "shared_prefix"),
    "core/zs_batch.py": ("tests/analysis/test_attribution_patching.py", "zs_batch"),
    "files.py": ("tests/core/test_result_safety.py", "iclgd_lens.files"),
    "sources/bridge_models.py": ("tests/bridge/test_bridge.py", "load_model"),
    "sources/dispatch.py": ("tests/sources/test_models.py", "load_model"),
    "sources/hf_models.py": ("tests/sources/test_quiet.py", "iclgd_lens.sources.hf_models"),
    "sources/hub_tasks.py": ("tests/sources/test_tasks.py", "iclgd_lens.sources.hub_tasks"),
    "sources/task.py": ("tests/sources/test_tasks.py", "iclgd_lens.sources.task"),
    "sources/tokenizers.py": ("tests/sources/test_synthetic_tasks.py", "iclgd_lens.sources.tokenizers"),
    "views/attention.py": ("tests/views/test_views.py", "iclgd_lens.views.attention"),
    "views/html.py": ("tests/views/test_report.py", "report"),
    "views/lens_run_values.py": ("tests/analysis/test_lenses.py", "from iclgd_lens.views import lens_run_values"),
    "views/lenses.py": ("tests/analysis/test_lenses.py", "lenses.md"),
    "views/plots.py": ("tests/views/test_views.py", "iclgd_lens.views.plots"),
    "views/reproduction.py": ("tests/analysis/test_sweep.py", "tables.md"),
}


def test_every_module_with_logic_has_its_tests():
    """A test module named for it (tests/<layer>/test_<module>.py), or one that TESTED_WITH names and that uses it."""
    named = {p.stem for p in (ROOT / "tests").rglob("test_*.py")}
    untested = []
    for path in sorted((ROOT / "iclgd_lens").rglob("*.py")):
        module = path.relative_to(ROOT / "iclgd_lens").as_posix()
        tree = ast.parse(path.read_text())
        if not any(isinstance(node, (ast.FunctionDef, ast.ClassDef)) for node in tree.body):
            continue  # names and constants only
        if f"test_{path.stem}" in named:
            continue
        where = TESTED_WITH.get(module)
        if where is None or where[1] not in (ROOT / where[0]).read_text():
            untested.append(module)
    assert not untested, untested
