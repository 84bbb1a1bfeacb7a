"""The tour notebook runs from top to bottom (so it never rots), and the committed copy carries no outputs."""

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import SCRIPTS

pytestmark = pytest.mark.slow  # make test-fast leaves this module out

TOUR = SCRIPTS / "notebooks" / "tour.ipynb"


def test_tour_notebook_executes(tmp_path):
    execute_tour(tmp_path)


def execute_tour(folder) -> None:
    """Run the tour notebook in `folder` with this environment's kernel and check what it shows (also run under
    TransformerLens 4: tests/bridge/test_bridge_cli.py)."""
    notebook = nbformat.read(TOUR, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # kept small
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    ).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = "".join(
        o.get("data", {}).get("text/html", "") for o in outputs if o.output_type in ("execute_result", "display_data")
    )
    assert "AttentionHeads" in html and "ColoredTokensMulti" in html  # the circuitsvis views rendered
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the per-layer curves and the heatmaps
