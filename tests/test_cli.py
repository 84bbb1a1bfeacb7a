"""The command line end to end on a tiny local checkpoint and a local task file, and every bad input."""

import json
import re
import subprocess
import sys

import pytest
import torch
from helpers import make_tokenizer, toy_rows
from transformers import AutoModelForCausalLM, GPT2Config

from iclgd_lens.cli import main


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=128, n_ctx=128, vocab_size=len(make_tokenizer()))
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "model")
    make_tokenizer().save_pretrained(root / "model")
    for split, seed, n in (("train", 0, 30), ("eval", 1, 6)):
        (root / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in toy_rows(n, seed)))
    (root / "long.jsonl").write_text(json.dumps({"sentence": " ".join(["film"] * 200), "label": 1}))
    return root


def args(root, *extra, out="out"):
    return [
        "compare",
        "--model",
        str(root / "model"),
        "--task",
        "sst2",
        "--data-files",
        f"train={root / 'train.jsonl'}",
        f"eval={root / 'eval.jsonl'}",
        "--k",
        "4",
        "--lr",
        "0.01",
        "--n-eval",
        "6",
        "--out",
        str(root / out),
        *extra,
    ]


def test_compare_end_to_end(workspace, capsys):
    assert main(args(workspace, "--baselines", "no_training", "--device", "cpu")) == 0
    printed = capsys.readouterr().out
    assert "accuracy: zs" in printed and "simaou_norm" in printed and "no_training/lcgd" in printed
    result = json.loads((workspace / "out" / "result.json").read_text())
    assert result["config"]["task"] == "sst2" and result["config"]["effective_k"] == 4
    assert set(result["baselines"]) == {"no_training"}


def test_console_script_runs_as_a_module(workspace):
    run = subprocess.run(
        [sys.executable, "-m", "iclgd_lens.cli", *args(workspace, "--baselines", "--methods", "gd", out="module")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert (workspace / "module" / "result.json").is_file()


@pytest.mark.parametrize(
    "change, message",
    [
        (["--model", "gpt-7"], "unknown model 'gpt-7'"),
        (["--task", "sst9"], "unknown task 'sst9'; valid tasks"),
        (["--data-files", "train=/nope.jsonl", "eval=/nope.jsonl"], "train file '/nope.jsonl' does not exist"),
        (["--task", "mr"], r"columns \['text'\] are missing"),
        (["--task", "cb"], r"columns \['premise', 'hypothesis'\] are missing"),
        (
            ["--task", "x", "--template", "S: {sentence} L:", "--labels", "Negative", "Positive", "Neutral"],
            r"label words \['Neutral'\] are absent",
        ),
        (["--k", "31"], "k=31 demonstrations requested but the train split has 30"),
        (["--lr", "0"], "learning rate must be a positive finite number, got lr=0.0"),
        (["--lr=-1e-3"], "learning rate must be a positive"),
        (["--n-eval", "0"], "n_eval must be >= 1"),
        (["--batch-size", "0"], "batch_size must be >= 1"),
    ],
    ids=["model", "task", "file", "column", "columns-cb", "label-word", "k", "lr0", "lr-negative", "n-eval", "batch"],
)
def test_bad_input_is_one_line_error_and_no_result(workspace, capsys, change, message):
    argv = args(workspace, out="bad")
    for i, item in enumerate(argv):  # replace an option's value(s) in place
        if item == change[0].split("=")[0] and change[0] != "--template":
            end = i + 1
            while end < len(argv) and not argv[end].startswith("--"):
                end += 1
            argv[i:end] = change
            break
    else:
        argv += change
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("iclgd-lens: error:")]
    assert len(errors) == 1
    assert re.search(message, errors[0]), errors[0]
    assert not (workspace / "bad").exists()


def test_query_longer_than_context(workspace, capsys):
    argv = args(workspace, out="bad")
    argv[argv.index(f"eval={workspace / 'eval.jsonl'}")] = f"eval={workspace / 'long.jsonl'}"
    assert main(argv) == 2
    assert re.search(r"needs 20\d tokens with BOS and label but the model context is 128", capsys.readouterr().err)


def test_unknown_group_and_position_are_refused_by_the_parser(workspace, capsys):
    for extra in (["--groups", "kv"], ["--position", "last"]):
        with pytest.raises(SystemExit) as exit:
            main(args(workspace, *extra, out="bad"))
        assert exit.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_existing_result_needs_overwrite(workspace, capsys):
    folder = workspace / "existing"
    folder.mkdir()
    (folder / "result.json").write_text("{}")
    assert main(args(workspace, out="existing")) == 2
    assert (
        "already holds a result; choose another folder or pass overwrite=True (--overwrite)" in capsys.readouterr().err
    )
    assert main(args(workspace, "--overwrite", "--baselines", "--methods", "gd", out="existing")) == 0
    assert json.loads((folder / "result.json").read_text())["config"]["methods"] == ["gd"]
