"""The command line end to end on a tiny local checkpoint and a local task file, and every bad input."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from iclgd_lens.cli import main
from tests.helpers import make_tokenizer, toy_rows


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
    (root / "empty.jsonl").write_text("")
    (root / "broken.jsonl").write_text('{"sentence": "a good film", "label": 1}\n{"sentence": oops')
    (root / "broken.parquet").write_bytes(b"not a parquet file")
    (root / "weightless").mkdir()
    (root / "weightless" / "config.json").write_bytes((root / "model" / "config.json").read_bytes())
    no_specials = root / "no-specials"
    no_specials.mkdir()
    for f in (root / "model").iterdir():
        (no_specials / f.name).write_bytes(f.read_bytes())
    tokenizer_config = json.loads((no_specials / "tokenizer_config.json").read_text())
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        tokenizer_config.pop(key, None)
    (no_specials / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
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


@pytest.mark.slow  # a subprocess or a whole CLI run: make test, not the edit loop
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
        (["--k", "0"], "k must be >= 1, got 0 .with k=0 ICL is ZS"),
        (["--model", "WORKSPACE/weightless"], "has config.json but no weights"),
        (["--model", "WORKSPACE/train.jsonl"], "is a file; give a Hugging Face checkpoint folder"),
        (["--model", "WORKSPACE/no-specials"], "neither a beginning- nor an end-of-sequence token"),
        (["--data-files", "train=WORKSPACE/train.jsonl", "eval=WORKSPACE/empty.jsonl"], "eval.* empty"),
        (["--data-files", "train=WORKSPACE/broken.jsonl", "eval=WORKSPACE/eval.jsonl"], "cannot read train file"),
        (["--data-files", "train=WORKSPACE/broken.parquet", "eval=WORKSPACE/eval.jsonl"], "cannot read train file"),
        (["--data-files", "train=WORKSPACE/train.jsonl", "dev=WORKSPACE/eval.jsonl"], "SPLIT one of"),
        (
            ["--task", "mine", "--template", "Review: {text} Verdict:", "--labels", "bad", "good"],
            r"columns \['text'\] are missing.*template 'Review: \{text\} Verdict:' needs \['text'\]",
        ),
        (["--task", "mine", "--template", "S: {sentence} L:", "--labels", "", "good"], "tokenise to nothing"),
        (["--out", "."], "refusing to write a result to '.'"),
        (["--out", "WORKSPACE/users-folder"], "not a result folder written by iclgd-lens .it holds \\['mine.txt'\\]"),
        (["--permutation", "5", "--preset", "reference"], "permutation 5 does not exist in the reference code"),
        (["--threads", "0"], "--threads must be >= 1"),
    ],
    ids=[
        "model",
        "task",
        "file",
        "column",
        "columns-cb",
        "label-word",
        "k",
        "lr0",
        "lr-negative",
        "n-eval",
        "batch",
        "k0",
        "no-weights",
        "model-file",
        "no-bos-eos",
        "empty-split",
        "broken-json",
        "broken-parquet",
        "split-name",
        "template-field",
        "empty-label",
        "out-dot",
        "users-folder",
        "reference-permutation",
        "threads",
    ],
)
def test_bad_input_is_one_line_error_and_no_result(workspace, capsys, change, message, monkeypatch):
    monkeypatch.chdir(workspace)
    (workspace / "users-folder").mkdir(exist_ok=True)
    (workspace / "users-folder" / "mine.txt").write_text("keep")
    before = sorted(p.name for p in workspace.iterdir())
    change = [c.replace("WORKSPACE", str(workspace)) for c in change]
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
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("iclgd-lens: error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert re.search(message, errors[0]), errors[0]
    assert not (workspace / "bad").exists() and sorted(p.name for p in workspace.iterdir()) == before
    assert (workspace / "users-folder" / "mine.txt").read_text() == "keep"


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
    assert main(args(workspace, "--baselines", "--methods", "lcgd", out="existing")) == 0
    capsys.readouterr()
    assert main(args(workspace, out="existing")) == 2
    assert "already holds a result; choose another path or pass overwrite=True (--overwrite)" in capsys.readouterr().err
    assert main(args(workspace, "--overwrite", "--baselines", "--methods", "gd", out="existing")) == 0
    assert json.loads((folder / "result.json").read_text())["config"]["methods"] == ["gd"]


def test_debug_shows_the_traceback(workspace):
    with pytest.raises(ValueError, match="k must be >= 1"):
        main(args(workspace, "--k", "0", "--debug", out="bad"))


def run_cli(*argv, env=None):
    return subprocess.run([sys.executable, "-m", "iclgd_lens.cli", *argv], capture_output=True, text=True, env=env)


@pytest.mark.slow  # a subprocess or a whole CLI run: make test, not the edit loop
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "gpt2", "--task", "synth-sst2"], "model 'gpt2' could not be loaded from the Hugging Face hub"),
        (["--model", "tiny-icl", "--task", "sst2"], "task 'sst2' could not be loaded from the Hugging Face hub"),
    ],
    ids=["model", "task"],
)
def test_hub_names_offline_are_one_line_errors(workspace, tmp_path, argv, message):
    """Offline mode (no network is touched) with an empty cache: what a user without the hub sees."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    run = run_cli("compare", *argv, "--k", "2", "--out", str(tmp_path / "out"), env=env)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("iclgd-lens: error:")]
    assert len(errors) == 1 and message in errors[0], run.stderr
    assert not (tmp_path / "out").exists()


def test_help_lists_defaults_and_tasks_without_importing_torch():
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from iclgd_lens.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformer_lens', 'datasets', 'pandas') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
    )
    assert run.stdout.strip() == "[]", run.stdout
    text = run_cli("compare", "--help").stdout
    assert "(default: 32)" in text and "synth-sst2" in text and "--preset {toolkit,reference}" in text
    assert "reference: fairseq]" in text  # each choice shows both presets' values


def test_dropped_demonstrations_warn_and_files_repeat(workspace, capsys):
    argv = args(workspace, "--baselines", "--methods", "gd", "--quiet", out="warned")
    argv[argv.index("--data-files") : argv.index("--data-files") + 3] = [
        "--data-files",
        f"train={workspace / 'train.jsonl'}",
        "--data-files",
        f"validation={workspace / 'eval.jsonl'}",
    ]
    argv[argv.index("--k") + 1] = "30"  # 30 demonstrations of about 8 tokens overflow the 128-token context
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert re.search(r"warning: \d+ of 30 demonstrations do not fit the 128-token context", captured.err)
    assert "Moving model" not in captured.out and "fit gd" not in captured.err  # quiet: no progress bars
    config = json.loads((workspace / "warned" / "result.json").read_text())["config"]
    assert config["effective_k"] < 30 == config["k"]


def test_reference_preset_end_to_end(workspace, capsys):
    assert (
        main(
            args(
                workspace,
                "--preset",
                "reference",
                "--subset",
                "f2t",
                "--baselines",
                "trained_norms",
                "--quiet",
                out="reference",
            )
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "preset reference: position 'first_option', separator 'eos', truncation 'reference'" in printed
    assert "f2t subset" in printed and "trained_norms/gd" in printed and "float16" in printed
