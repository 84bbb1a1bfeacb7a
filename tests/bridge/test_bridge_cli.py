"""The command line on TransformerLens 4: compare (with its untrained baselines), reproduce, report, attribute (with
Kendall and function vectors) and lenses (with the chained patch's transfer) run, and the reference preset trains in
fp16 with fairseq-drawn baselines; baselines another backend drew are refused in one line before anything is written
(`make test-tl4`)."""

from __future__ import annotations

import json
import shutil

import pytest

from iclgd_lens.backend import BRIDGE
from iclgd_lens.cli import main
from tests.bridge.test_cross_backend import REFERENCE

pytestmark = pytest.mark.skipif(not BRIDGE, reason="TransformerLens 4 only: make test-tl4")
MODEL = str(REFERENCE / "llama-gqa" / "model")


@pytest.fixture(scope="module")
def run_with_baselines(tmp_path_factory):
    out = tmp_path_factory.mktemp("bridge") / "run"
    common = ["--task", "synth-sst2", "--k", "8", "--n-eval", "8", "--lr", "0.05", "--quiet"]
    assert main(["compare", "--model", MODEL, *common, "--out", str(out)]) == 0
    return out


def test_compare_with_baselines_then_report(run_with_baselines, tmp_path):
    result = json.loads((run_with_baselines / "result.json").read_text())
    assert set(result["baselines"]) == {"no_training", "trained_norms", "trained_embeddings"}
    assert result["config"]["versions"]["transformer-lens"].startswith("4.")
    html = tmp_path / "report.html"
    assert main(["report", str(run_with_baselines), "--html", str(html), "--model", MODEL]) == 0
    assert "<html" in html.read_text()[:2000].lower()


def test_attribute_with_kendall_and_function_vectors_and_lenses_with_transfer_run(run_with_baselines, tmp_path):
    heads, lenses = tmp_path / "heads", tmp_path / "lenses"
    argv = [
        "attribute",
        str(run_with_baselines),
        "--out",
        str(heads),
        "--model",
        MODEL,
        "--verify-top",
        "2",
        "--kendall-queries",
        "4",
        "--function-vectors",
    ]
    assert main(argv) == 0
    kendall = (heads / "kendall.csv").read_text()
    assert all(subject in kendall for subject in ("model", "zero_delta", "no_training", "trained_embeddings"))
    assert "in_vector" in (heads / "fv_heads.csv").read_text()
    argv = ["lenses", str(run_with_baselines), "--out", str(lenses), "--model", MODEL, "--transfer", "3"]
    assert main(argv) == 0
    per_layer = (lenses / "per_layer.csv").read_text()
    assert "trained_norms" in per_layer and "transfer_gain_patch_mean" in per_layer


def test_baselines_drawn_under_transformer_lens_3_are_refused(run_with_baselines, tmp_path, capsys):
    """The backends draw baselines apart: a 3.x result's baselines are not re-derived here, with the way out."""
    copy = tmp_path / "run-tl3"
    shutil.copytree(run_with_baselines, copy)
    result = json.loads((copy / "result.json").read_text())
    result["config"]["versions"]["transformer-lens"] = "3.9.0"
    (copy / "result.json").write_text(json.dumps(result))
    for argv in (
        ["lenses", str(copy), "--out", str(tmp_path / "lenses")],
        ["attribute", str(copy), "--out", str(tmp_path / "heads")],
    ):
        assert main([*argv, "--model", MODEL]) == 2
        error = capsys.readouterr().err.strip()
        assert "drawn under transformer-lens 3.9.0" in error and "\n" not in error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run-tl3"]
    argv = ["lenses", str(copy), "--out", str(tmp_path / "lenses"), "--model", MODEL, "--baselines"]
    assert main(argv) == 0  # the model alone


def test_reproduce_without_baselines(tmp_path):
    out = tmp_path / "sweep"
    argv = [
        "reproduce",
        "--model",
        MODEL,
        "--tasks",
        "synth-sst2",
        "--runs",
        "5",
        "--lr",
        "0.05",
        "--k",
        "8",
        "--n-eval",
        "8",
        "--baselines",
        "--out",
        str(out),
        "--jobs",
        "1",
        "--threads",
        "1",
    ]
    assert main(argv) == 0
    tables = (out / "tables.md").read_text()
    assert "Revisited Table 2" in tables and "synth-sst2" in tables


def test_reference_preset_trains_in_float16(tmp_path):
    """The reference preset on the bridge: fp16-mixed training on its float16 copy, and a baseline drawn with
    fairseq's initialisation."""
    out = tmp_path / "run"
    argv = [
        "compare",
        "--model",
        MODEL,
        "--task",
        "synth-sst2",
        "--k",
        "8",
        "--n-eval",
        "8",
        "--lr",
        "0.05",
        "--quiet",
        "--preset",
        "reference",
        "--baselines",
        "no_training",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    config = json.loads((out / "result.json").read_text())["config"]
    assert (config["precision"], config["dtype"], config["init"]) == ("fp16-mixed", "float16", "fairseq")
    assert config["baselines"] == ["no_training"]


@pytest.mark.slow  # the SmolLM2 part of the notebook runs too where its package is installed
def test_the_tour_notebook_runs_on_the_bridge(tmp_path):
    """scripts/notebooks/tour.ipynb from top to bottom on TransformerLens 4 (its model, tiny-icl-neox, loads on
    both): a plain `pip install` runs the tour."""
    from tests.scripts.test_notebook import execute_tour

    execute_tour(tmp_path)
