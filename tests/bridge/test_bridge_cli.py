"""The command line on TransformerLens 4: compare, reproduce and report run; what the bridge backend does not do yet is refused
in one line before anything loads or is written (`make test-tl4`)."""

from __future__ import annotations

import pytest

from iclgd_lens.backend import BRIDGE
from iclgd_lens.cli import main
from tests.bridge.test_cross_backend import REFERENCE

pytestmark = pytest.mark.skipif(not BRIDGE, reason="TransformerLens 4 only: make test-tl4")
MODEL = str(REFERENCE / "llama-gqa" / "model")


def test_compare_then_report(tmp_path):
    out = tmp_path / "run"
    common = ["--task", "synth-sst2", "--k", "8", "--n-eval", "8", "--lr", "0.05", "--quiet"]
    assert main(["compare", "--model", MODEL, *common, "--baselines", "--out", str(out)]) == 0
    assert (out / "result.json").is_file()
    html = tmp_path / "report.html"
    assert main(["report", str(out), "--html", str(html), "--model", MODEL]) == 0
    assert "<html" in html.read_text()[:2000].lower()


def test_reproduce_without_baselines(tmp_path):
    out = tmp_path / "sweep"
    argv = ["reproduce", "--model", MODEL, "--tasks", "synth-sst2", "--runs", "5", "--lr", "0.05", "--k", "8",
            "--n-eval", "8", "--baselines", "--out", str(out), "--jobs", "1", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    tables = (out / "tables.md").read_text()
    assert "Revisited Table 2" in tables and "synth-sst2" in tables


@pytest.mark.parametrize(
    "argv, what",
    [
        (["compare", "--model", MODEL, "--task", "synth-sst2", "--k", "8"], "untrained baselines"),
        (["compare", "--model", MODEL, "--task", "synth-sst2", "--k", "8", "--baselines", "--preset", "reference"],
         "fp16-mixed"),
        (["attribute", "RUN", "--out", "OUT"], "per-head attribution"),
        (["lenses", "RUN", "--out", "OUT"], "the lenses"),
    ],
)  # fmt: skip
def test_refused_in_one_line_before_anything_is_written(argv, what, tmp_path, capsys):
    argv = [str(tmp_path / a) if a in ("RUN", "OUT") else a for a in argv]
    if argv[0] == "compare":
        argv += ["--out", str(tmp_path / "run")]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert what in error and "TransformerLens 3.x" in error and "pip install" in error and "\n" not in error
    assert list(tmp_path.iterdir()) == []
