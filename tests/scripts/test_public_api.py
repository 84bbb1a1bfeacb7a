"""Scripts and the notebook in scripts/ use the public API only: iclgd_lens, iclgd_lens.sources, and the analysis
and view functions docs/views.md documents; never the pipeline's modules (iclgd_lens.core) or a source's module."""

import ast
import json

from tests.helpers import SCRIPTS

PUBLIC = ("iclgd_lens", "iclgd_lens.sources")
USER_FACING = ("iclgd_lens.analysis.", "iclgd_lens.views.")


def imported_modules(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("iclgd_lens"):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("iclgd_lens")]
    return found


def sources() -> dict[str, str]:
    scripts = {path.name: path.read_text() for path in SCRIPTS.glob("*.py")}
    for notebook in SCRIPTS.glob("notebooks/*.ipynb"):
        cells = json.loads(notebook.read_text())["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        scripts[notebook.name] = "\n".join(
            line for cell in code for line in cell.splitlines() if not line.startswith("%")
        )
    return scripts


def test_analyses_import_the_public_api_only():
    found = {name: imported_modules(text) for name, text in sources().items()}
    assert found["evaluate_icl.py"] and found["tour.ipynb"]  # the scan sees their imports
    private = {
        name: [m for m in modules if m not in PUBLIC and not m.startswith(USER_FACING)]
        for name, modules in found.items()
    }
    assert not any(private.values()), private
