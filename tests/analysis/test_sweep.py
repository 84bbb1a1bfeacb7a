"""`reproduce` end to end on tiny-icl: every table, resumption after SIGKILL, --jobs and submitit giving the same
files, the sweep folder's safety, and the plan of runs."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iclgd_lens.analysis.protocol.plan import PAPER_SETTINGS, plan_runs
from iclgd_lens.analysis.protocol.sweep import SweepConfig, check_sweep_folder
from iclgd_lens.cli import main
from iclgd_lens.core.config import CompareConfig
from iclgd_lens.core.presets import DAI_LR_GRID
from iclgd_lens.views.reproduction import TABLE_FILES

SWEEP = [
    "reproduce",
    "--model",
    "tiny-icl",
    "--tasks",
    "synth-sst2,synth-mr",
    "--runs",
    "2",
    "--lr",
    "0.3",
    "--k",
    "6",
    "--n-eval",
    "12",
    "--baselines",
    "no_training",
    "--threads",
    "1",
    "--quiet",
]


def table_bytes(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in TABLE_FILES}


@pytest.fixture(scope="module")
def reference_sweep(tmp_path_factory):
    """The uninterrupted sweep in this process, one run at a time."""
    out = tmp_path_factory.mktemp("sweep") / "serial"
    assert main([*SWEEP, "--out", str(out)]) == 0
    return out


@pytest.mark.slow  # runs a sweep
def test_sweep_writes_every_table(reference_sweep):
    out = reference_sweep
    for task in ("synth-sst2", "synth-mr"):
        for run in ("seed0-perm0", "seed1-perm1"):
            config = json.loads((out / "runs" / task / run / "result.json").read_text())["config"]
            assert (config["task"], f"seed{config['seed']}-perm{config['permutation']}") == (task, run)
    assert set(TABLE_FILES) <= {p.name for p in out.iterdir()}
    from iclgd_lens.files import umask

    assert all((out / name).stat().st_mode & 0o777 == 0o666 & ~umask() for name in TABLE_FILES)  # not private
    tables = (out / "tables.md").read_text()
    for heading in ("Accuracy", "Revisited Table 1", "Revisited Table 2", "Dai et al.", "Learning rates"):
        assert heading in tables
    assert "trained − no_training" in tables and "too few runs" in tables  # 2 runs: no verdict
    assert "two-level bootstrap" in tables and "Update size" in tables and "LCGD against GD" in tables
    # the papers' 1.3B numbers of the real task beside the synthetic one's: SST-2's ZS / ICL / GD accuracy, GD SimAM∆
    assert "| synth-sst2 | " in tables and "0.705 / 0.927 / 0.739" in tables and "| 0.15 / –" in tables
    assert (out / "per_layer_simam_delta.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # runs a sweep
def test_summary_recomputes_from_result_files(reference_sweep):
    """mean and std over runs from each run's result.json, computed here by hand."""
    import pandas as pd

    summary = pd.read_csv(reference_sweep / "summary.csv")
    values = [
        json.loads((reference_sweep / "runs" / "synth-mr" / run / "result.json").read_text())["metrics"]["lcgd"][
            "simaou"
        ]["mean"]
        for run in ("seed0-perm0", "seed1-perm1")
    ]
    mean = sum(values) / 2
    std = (sum((v - mean) ** 2 for v in values) / (2 - 1)) ** 0.5
    row = summary[
        (summary.task == "synth-mr")
        & (summary.model == "trained")
        & (summary.method == "lcgd")
        & (summary.metric == "simaou")
    ].iloc[0]
    assert row["mean"] == pytest.approx(mean, rel=1e-5) and row["std"] == pytest.approx(std, rel=1e-5)
    assert row.ci_low <= row["mean"] <= row.ci_high and row.runs == 2
    verdicts = pd.read_csv(reference_sweep / "verdicts.csv")
    versus = verdicts[(verdicts.task == "synth-mr") & (verdicts.method == "lcgd") & (verdicts.metric == "simaou")]
    assert list(versus.baseline) == ["no_training", "gd"] and set(versus.verdict) == {"too few runs"}
    # the csv holds 6 significant digits: baseline_mean ~0.1 is rounded by up to 5e-8
    assert versus.difference.iloc[0] == pytest.approx(mean - versus.baseline_mean.iloc[0], abs=2e-7)
    gd = summary[
        (summary.task == "synth-mr")
        & (summary.model == "trained")
        & (summary.method == "gd")
        & (summary.metric == "simaou")
    ].iloc[0]
    assert versus.baseline_mean.iloc[1] == pytest.approx(gd["mean"], rel=1e-5)  # LCGD − GD on the trained model
    assert "simam" not in set(verdicts.metric)  # SimAM after FT measures no update


@pytest.mark.slow  # runs a sweep
def test_killed_sweep_resumes_to_identical_tables(tmp_path, reference_sweep):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "iclgd_lens.cli", *SWEEP, "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "runs" / "synth-sst2" / "seed0-perm0" / "result.json"
    deadline = time.monotonic() + 120
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the sweep ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "tables.md").exists()  # killed mid-sweep, after the first run
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert re.search(r"[123] of 4 runs are already finished", result.stdout)
    assert table_bytes(out) == table_bytes(reference_sweep)
    again = subprocess.run(command, capture_output=True, text=True)  # a finished sweep: nothing to redo
    assert "4 of 4 runs are already finished" in again.stdout and table_bytes(out) == table_bytes(reference_sweep)


@pytest.mark.slow  # runs a sweep
def test_jobs_and_submitit_give_the_same_tables(tmp_path, reference_sweep):
    assert main([*SWEEP, "--jobs", "2", "--out", str(tmp_path / "jobs2")]) == 0
    assert table_bytes(tmp_path / "jobs2") == table_bytes(reference_sweep)
    assert main([*SWEEP, "--executor", "submitit-local", "--jobs", "2", "--out", str(tmp_path / "submitit")]) == 0
    assert table_bytes(tmp_path / "submitit") == table_bytes(reference_sweep)


@pytest.mark.slow  # runs a sweep
def test_sweep_folder_refuses_foreign_and_other_sweeps(tmp_path, reference_sweep, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main([*SWEEP, "--out", str(foreign)]) == 2
    assert "not a sweep folder written by iclgd-lens" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1
    other = [*SWEEP[: SWEEP.index("--k") + 1], "8", *SWEEP[SWEEP.index("--k") + 2 :]]
    before = table_bytes(reference_sweep)
    assert main([*other, "--out", str(reference_sweep)]) == 2
    error = capsys.readouterr().err
    assert "holds another sweep (k: 6 there, 8 now)" in error
    assert table_bytes(reference_sweep) == before


def test_bad_sweep_options_fail_before_any_run(tmp_path, capsys):
    cases = [
        (["--tasks", "synth-sst2,nope"], "nope"),
        (["--runs", "two"], "--runs takes 'paper', 'paper:N' or a number"),
        (["--tasks", "trec2"], "trec2"),
        (["--lr", "-1"], "--lr must be a positive"),
        (["--tasks", "synth-sst2,synth-sst2"], "repeat a task"),
    ]
    for extra, message in cases:
        argv = [*SWEEP, *extra, "--out", str(tmp_path / "bad")]
        assert main(argv) == 2, extra
        assert message in capsys.readouterr().err, extra
        assert not (tmp_path / "bad").exists()
    custom = [a for a in SWEEP if a not in ("--lr", "0.3")]
    assert main([*custom, "--tasks", "bbc-headlines", "--lr", "paper", "--out", str(tmp_path / "bad")]) == 2
    assert "has no paper setting" in capsys.readouterr().err


def test_paper_plan_uses_the_papers_seeds_and_learning_rates():
    plan = plan_runs(["sst2", "synth-cb", "rt-snippets"], "paper", "paper")
    assert [(r.task, r.seed, r.permutation, r.lr) for r in plan[:3]] == [
        ("sst2", 2, 0, 5e-4),
        ("sst2", 3, 1, 5e-4),
        ("sst2", 4, 2, 5e-4),
    ]
    assert {(r.seed, r.lr) for r in plan if r.task == "synth-cb"} == {(3, 0.08), (4, 0.08), (5, 0.08)}
    assert {r.lr for r in plan if r.task == "rt-snippets"} == {PAPER_SETTINGS["mr"][1]}
    assert [r.lr for r in plan_runs(["trec"], "2", "search")] == [None, None]
    assert len(DAI_LR_GRID) == 36 and DAI_LR_GRID[0] == 0.1 and min(DAI_LR_GRID) == 1e-4 and 9e-4 in DAI_LR_GRID


def test_a_restart_may_change_how_but_not_what(tmp_path):
    config = SweepConfig("tiny-icl", ("synth-sst2",), "1", "0.3", compare=CompareConfig(k=6))
    out = tmp_path / "s"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"format": "iclgd-lens sweep 1", "config": config.to_dict()}))
    check_sweep_folder(out, config)  # the same sweep: resumable
    with pytest.raises(ValueError, match="holds another sweep \\(k: 6 there, 8 now\\)"):
        check_sweep_folder(out, SweepConfig("tiny-icl", ("synth-sst2",), "1", "0.3", compare=CompareConfig(k=8)))
    # An earlier version's sweep.json held only the options given: a default left out is the same sweep.
    earlier = config.to_dict() | {"compare": {"k": 6, "methods": ["gd", "lcgd"]}}
    (out / "sweep.json").write_text(json.dumps({"format": "iclgd-lens sweep 1", "config": earlier}))
    check_sweep_folder(out, config)
    with pytest.raises(ValueError, match="baseline_lr: 'matched' there, 'paper' now"):
        check_sweep_folder(
            out, SweepConfig("tiny-icl", ("synth-sst2",), "1", "0.3", compare=CompareConfig(k=6, baseline_lr="paper"))
        )


@pytest.mark.slow  # runs a sweep
def test_searched_learning_rates_are_recorded_per_run(tmp_path):
    out = tmp_path / "search"
    argv = [a for a in SWEEP if a not in ("--lr", "0.3")]
    argv[argv.index("synth-sst2,synth-mr")] = "synth-sst2"
    argv[argv.index("--runs") + 1] = "1"
    assert main([*argv, "--lr", "search", "--lr-grid", "0.03,0.3", "--n-heldout", "16", "--out", str(out)]) == 0
    search = json.loads((out / "lr-search" / "synth-sst2-seed0-perm0.json").read_text())
    assert [c["lr"] for c in search["candidates"]] == [0.03, 0.3] and search["n_heldout"] == 16
    config = json.loads((out / "runs" / "synth-sst2" / "seed0-perm0" / "result.json").read_text())["config"]
    assert config["lr"] == search["chosen"]
    import pandas as pd

    lcgd_search = json.loads((out / "lr-search" / "synth-sst2-seed0-perm0-lcgd.json").read_text())
    assert lcgd_search["method"] == "lcgd" and config["lr_lcgd"] == lcgd_search["chosen"]  # searched on its own
    lrs = pd.read_csv(out / "lr.csv")
    trained, baseline = lrs[lrs.subject == "trained"], lrs[lrs.subject != "trained"]
    assert trained.method.tolist() == ["gd", "lcgd"] and trained.source.tolist() == ["search", "search"]
    assert trained.lr.tolist() == [search["chosen"], lcgd_search["chosen"]]
    assert set(baseline.source) == {"matched"}  # the baselines matched to the trained model's update sizes
    result = json.loads((out / "runs" / "synth-sst2" / "seed0-perm0" / "result.json").read_text())
    assert baseline.lr.tolist() == pytest.approx(
        [result["baselines"][b]["lr"][m] for b, m in zip(baseline.subject, baseline.method)], rel=1e-5
    )
    assert json.loads((out / "sweep.json").read_text())["config"]["lr_grid"] == [0.03, 0.3]


@pytest.mark.slow  # runs a sweep
def test_a_failing_run_is_reported_and_the_others_go_on(tmp_path, capsys, monkeypatch):
    import iclgd_lens.core.comparison

    real = iclgd_lens.core.comparison.compare

    def diverging_on_mr(model, task, *args, **kwargs):
        if task.name == "synth-mr":
            raise FloatingPointError("gd loss is nan at demonstration 3 with lr=0.3; lower the learning rate")
        return real(model, task, *args, **kwargs)

    monkeypatch.setattr(iclgd_lens.core.comparison, "compare", diverging_on_mr)
    out = tmp_path / "diverges"
    assert main([*SWEEP, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "2 of 4 runs did not finish" in error and "synth-mr/seed0-perm0 (FloatingPointError" in error
    assert "Missing runs" in (out / "tables.md").read_text() and "synth-mr" not in (out / "summary.csv").read_text()
