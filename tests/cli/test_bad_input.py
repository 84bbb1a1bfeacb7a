"""Bad input on the verbs added after compare (lenses, attribute, report, reproduce's and compare's newer options,
registered methods, the parser): each is refused in one line with exit code 2, no traceback, and nothing written,
before any computation (issue 34). docs/reference/cli.md, "What is refused", lists these classes."""

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch

from iclgd_lens.cli import main
from iclgd_lens.core.config import CompareConfig
from iclgd_lens.core.methods import available_methods, register_method, registered, unregister_method
from iclgd_lens.sources.bundled import TINY_ICL_DIR

RUN = [
    "--model",
    "tiny-icl",
    "--task",
    "synth-sst2",
    "--k",
    "4",
    "--lr",
    "0.3",
    "--n-eval",
    "4",
    "--threads",
    "1",
    "--quiet",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two runs of one design, one of them also under a label control, a gd-only run, and models shaped like
    tiny-icl with other weights or another vocabulary."""
    root = tmp_path_factory.mktemp("bad-input")
    for name, extra in (
        ("run0", ["--seed", "0"]),
        ("run1", ["--seed", "1"]),
        ("control", ["--seed", "2", "--label-control", "shuffled"]),
        ("gd-only", ["--seed", "3", "--methods", "gd"]),
    ):
        assert main(["compare", *RUN, "--baselines", *extra, "--out", str(root / name)]) == 0
    other_weights = root / "other-weights"
    shutil.copytree(TINY_ICL_DIR, other_weights)
    from safetensors.torch import load_file, save_file

    state = load_file(other_weights / "model.safetensors")
    state = {k: (torch.randn_like(v) * v.std() if k.endswith("W_O") else v) for k, v in state.items()}
    save_file(state, other_weights / "model.safetensors")
    other_vocab = root / "other-vocab"
    shutil.copytree(TINY_ICL_DIR, other_vocab)
    config = json.loads((other_vocab / "config.json").read_text())
    config["d_vocab"] = config["d_vocab_out"] = config["d_vocab"] + 64
    (other_vocab / "config.json").write_text(json.dumps(config))
    state = load_file(other_vocab / "model.safetensors")
    padded = {"embed.W_E": (0, 0, 0, 64), "unembed.W_U": (0, 64), "unembed.b_U": (0, 64)}
    state = {k: torch.nn.functional.pad(v, padded[k]) if k in padded else v for k, v in state.items()}
    save_file(state, other_vocab / "model.safetensors")
    (root / "users").mkdir()
    (root / "users" / "notes.txt").write_text("keep")
    return root


def refused(capsys, argv, message, root, out=None):
    """main(argv) exits 2 with one error line matching `message`, no traceback, and writes nothing (`out` absent,
    the user's folder untouched)."""
    before = sorted(p.name for p in root.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert sorted(p.name for p in root.iterdir()) == before and (out is None or not out.exists())
    assert (root / "users" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--methods", "lcgd", "--lcgd-exit", "attn", "--groups", "k", "mlp_in"],
            r"method 'lcgd': with --lcgd-exit attn .* MLP weights \(--groups mlp_in\) get no gradient",
        ),
        (["--methods", "lcgd-normalised", "--lcgd-exit", "attn", "--groups", "mlp"], "method 'lcgd-normalised': "),
        (["--methods", "gd-adam", "--precision", "fp16-mixed"], "method 'gd-adam': precision fp16-mixed .*SGD only"),
        (["--methods", "gd", "--lr-lcgd", "0.01"], "--lr-lcgd sets LCGD's learning rate, and LCGD is not run"),
        (["--methods", "gd", "--lcgd-exit", "attn"], "--lcgd-exit sets LCGD's read-out, and no LCGD method is run"),
        (["--baseline-lr", "paper"], "--baseline-lr sets the baselines' learning rate, and no baseline is run"),
        (["--lr-grid", "0.1", "0.2"], "--lr-grid is what a search tries, and nothing is searched"),
        (["--n-heldout", "8"], "--n-heldout scores a search's learning rates, and nothing is searched"),
        (["--lr-lcgd", "-1"], r"--lr-lcgd \(lr_lcgd\) must be a positive finite number"),
    ],
    ids=[
        "lcgd-attn-mlp",
        "lcgd-normalised-attn-mlp",
        "adam-fp16",
        "lr-lcgd-unused",
        "exit-unused",
        "baseline-lr-unused",
        "grid-unused",
        "heldout-unused",
        "lr-lcgd-range",
    ],
)
def test_compare_refuses_what_its_methods_cannot_use(folders, capsys, extra, message):
    out = folders / "bad"
    refused(capsys, ["compare", *RUN, "--baselines", *extra, "--out", str(out)], message, folders, out)


def test_reproduce_refuses_options_that_do_nothing(folders, capsys):
    out = folders / "bad-sweep"
    sweep = [
        "reproduce",
        "--model",
        "tiny-icl",
        "--tasks",
        "synth-sst2",
        "--runs",
        "1",
        "--lr",
        "0.3",
        "--out",
        str(out),
        "--quiet",
    ]
    refused(capsys, [*sweep, "--methods", "gd", "--lr-lcgd", "gd"], "--lr-lcgd sets LCGD's learning rate", folders, out)
    refused(capsys, [*sweep, "--lr-grid", "0.1"], "--lr-grid applies to a learning-rate search", folders, out)


@pytest.mark.parametrize(
    "runs, message",
    [
        (["run0", "run0"], r"run0' are the same run \(task synth-sst2, seed 0, permutation 0\)"),
        (["run0", "control"], r"differ in label controls \['shuffled'\] against \[\]"),
        (["run0", "gd-only"], r"differ in methods \['gd'\] against \['gd', 'lcgd'\]"),
    ],
    ids=["twice", "label-control", "methods"],
)
def test_pooled_runs_must_be_distinct_runs_of_one_design(folders, capsys, runs, message):
    paths = [str(folders / run) for run in runs]
    out = folders / "bad-lenses"
    refused(capsys, ["lenses", *paths, "--out", str(out), "--threads", "1"], message, folders, out)
    html = folders / "bad.html"
    refused(capsys, ["report", *paths, "--html", str(html), "--no-views"], message, folders, html)


@pytest.mark.parametrize(
    "model, message",
    [
        (
            "other-vocab",
            r"not the one this result was computed on \(tiny-icl\): it has d_vocab 700 \(the result's 636\)",
        ),
        ("other-weights", r"same shapes, other weights \(its attention output weights W_O differ"),
    ],
    ids=["vocabulary", "weights"],
)
def test_a_model_that_is_not_the_results_is_refused(folders, capsys, model, message):
    for verb, out in (("attribute", folders / "bad-attribution"), ("lenses", folders / "bad-lenses")):
        argv = [verb, str(folders / "run0"), "--out", str(out), "--model", str(folders / model), "--threads", "1"]
        refused(capsys, argv, message, folders, out)
    html = folders / "bad.html"
    refused(
        capsys,
        ["report", str(folders / "run0"), "--html", str(html), "--model", str(folders / model)],
        message,
        folders,
        html,
    )


def test_attribute_refuses_options_that_do_nothing(folders, capsys):
    out = folders / "bad-attribution"
    attribute = ["attribute", str(folders / "run0"), "--out", str(out), "--threads", "1"]
    refused(
        capsys, [*attribute, "--estimate", "atp", "--verify-top", "5"], "--verify-top sets how many heads", folders, out
    )
    refused(
        capsys,
        [*attribute, "--kendall-queries", "0", "--kendall-method", "lcgd"],
        "--kendall-method sets the finetuning Kendall compares with",
        folders,
        out,
    )
    refused(
        capsys,
        [*attribute, "--layers", "0", "2"],
        r"--layers \[2\] out of range: the result's model has 2 layers",
        folders,
        out,
    )
    gd_only = ["attribute", str(folders / "gd-only"), "--out", str(out), "--kendall-method", "lcgd"]
    refused(capsys, gd_only, r"--kendall-method lcgd: the result ran \['gd'\] only", folders, out)


def test_folders_of_an_unknown_format_are_refused(folders, capsys, tmp_path):
    newer = tmp_path / "newer"
    shutil.copytree(folders / "run0", newer)
    data = json.loads((newer / "result.json").read_text())
    (newer / "result.json").write_text(json.dumps(data | {"format": "iclgd-lens result 9"}))
    out = tmp_path / "out"
    message = r"holds a result of format 'iclgd-lens result 9', which this iclgd-lens does not read"
    refused(capsys, ["attribute", str(newer), "--out", str(out)], message, folders, out)
    refused(capsys, ["lenses", str(newer), "--out", str(out)], message, folders, out)
    lenses = tmp_path / "lenses"
    lenses.mkdir()
    (lenses / "lenses.json").write_text(json.dumps({"format": "iclgd-lens lenses 7"}))
    html = tmp_path / "r.html"
    argv = ["report", str(folders / "run0"), "--no-views", "--lenses", str(lenses), "--html", str(html)]
    refused(capsys, argv, "holds a lenses of format 'iclgd-lens lenses 7'", folders, html)


def test_registered_methods_options_are_checked_when_registered_and_when_a_comparison_starts():
    fn = registered("gd").fn
    with pytest.raises(ValueError, match=r"method 'odd': option 'scale' = .* is not a JSON value"):
        register_method("odd", fn, options={"scale": object()})
    with pytest.raises(ValueError, match=r"method 'odd': option 'when' = nan is not a JSON value"):
        register_method("odd", fn, options={"when": float("nan")})
    with pytest.raises(ValueError, match="method 'odd': option 'lr' must be a positive finite number, got -1"):
        register_method("odd", fn, options={"lr": -1})
    assert "odd" not in available_methods()
    adam = registered("gd-adam")
    register_method("adam-typo", adam.fn, options={"epoch": 3}, check=adam.check)
    register_method("adam-zero", adam.fn, options={"epochs": 0}, check=adam.check)
    try:
        with pytest.raises(ValueError, match=r"method 'adam-typo': unknown option 'epoch' \(this method takes"):
            CompareConfig(methods=("adam-typo",))
        with pytest.raises(ValueError, match="method 'adam-zero': option 'epochs' must be an integer >= 1, got 0"):
            CompareConfig(methods=("adam-zero",))
    finally:
        unregister_method("adam-typo")
        unregister_method("adam-zero")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "--model", "m", "--task", "t", "--out", "o", "--k", "many"], "argument --k: invalid int value"),
        (["compare", "--model", "m", "--task", "t", "--out", "o", "--lcgd-exit", "mlp"], "invalid choice: 'mlp'"),
        (["attribute", "run", "--out", "o", "--estimate", "guess"], "argument --estimate: invalid choice"),
        (["lenses"], "the following arguments are required: RUN_DIR, --out"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
    ids=["not-a-number", "unknown-choice", "attribute-choice", "missing", "verb"],
)
def test_parser_errors_are_one_line(argv, message, tmp_path):
    run = subprocess.run([sys.executable, "-m", "iclgd_lens.cli", *argv], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 2 and run.stdout == ""
    assert len(run.stderr.strip().splitlines()) == 1 and "usage:" not in run.stderr, run.stderr
    assert re.search(message, run.stderr) and "--help shows the usage" in run.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("verb", ["attribute", "lenses", "report"])
def test_threads_out_of_range_on_every_verb(folders, capsys, verb):
    out = folders / ("bad.html" if verb == "report" else "bad-out")
    argv = [verb, str(folders / "run0"), "--html" if verb == "report" else "--out", str(out), "--threads", "0"]
    refused(capsys, argv, "--threads must be >= 1, got 0", folders, out)


def test_lenses_refuse_jobs_below_one(folders, capsys):
    out = folders / "bad-lenses"
    argv = ["lenses", str(folders / "run0"), "--out", str(out), "--jobs", "0", "--threads", "1"]
    refused(capsys, argv, "--jobs must be >= 1, got 0", folders, out)
