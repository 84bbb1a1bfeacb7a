"""benchmarks/: the naive pipeline agrees with `compare`, the JSON it writes, and what it refuses."""

import json
import math
import os
from types import SimpleNamespace

import pytest

from benchmarks import agreement, flops, machine, main, report

pytestmark = pytest.mark.slow  # make test-fast leaves this module out

TINY = ["--layers", "2", "--d-model", "64", "--heads", "4", "--k", "4", "--n-queries", "6", "--naive-queries", "3"]


def test_naive_pipeline_agrees_with_compare_and_the_json_says_so(tmp_path):
    out = tmp_path / "bench.json"
    main.main([*TINY, "--no-scaling", "--no-smollm2", "--allow-busy", "--threads", "2", "--out", str(out)])
    written = json.loads(out.read_text())
    run = written["gpt2_small"]
    assert written["format"] == report.BENCH_FORMAT
    agree = run["agreement"]
    assert agree["agree"] and agree["metrics_required"]
    assert agree["metrics"]["compared"] > 100 and agree["metrics"]["max_abs_diff"] <= agreement.AGREEMENT
    assert agree["metric_code"]["max_abs_diff"] <= agreement.METRIC_CODE_AGREEMENT
    assert all(
        agree["records"]["settings"][s]["max_relative_diff"] <= agreement.RECORDS_AGREEMENT for s in ("zs", "icl")
    )
    # The naive time at 6 queries is extrapolated from the 3 it ran on, and labelled so.
    assert run["naive"]["extrapolated_from"] == 3 and run["naive"]["n_queries"] == 6 == run["toolkit"]["n_queries"]
    assert run["naive"]["seconds"] > run["naive"]["seconds_measured"] > 0
    assert written["speedup"] == pytest.approx(run["naive"]["seconds"] / run["toolkit"]["seconds"])
    assert 0 < run["toolkit"]["flop_floor_s"] and run["toolkit"]["peak_rss_bytes"] > written["model_bytes"]
    assert set(run["naive"]["stages"]) == {
        "record zs",
        "record icl",
        "fit gd",
        "record gd",
        "fit lcgd",
        "record lcgd",
        "metrics",
    }
    assert run["fits"]["lcgd_over_gd"] == pytest.approx(run["fits"]["lcgd"]["seconds"] / run["fits"]["gd"]["seconds"])


def _scores(simaou_layer_1: float) -> dict:
    return {
        "accuracy": {"zs": 0.5, "icl": 0.75},
        "metrics": {"gd": {"simaou": {"mean": 0.1, "per_layer": [0.1, simaou_layer_1]}, "rec2ftp": math.nan}},
        "per_head": {"gd": {"simam": [[0.2, 0.3]]}},
    }


def test_agreement_catches_a_changed_number_and_a_nan_mismatch():
    toolkit = _scores(math.nan)
    assert agreement.scores_agreement(_scores(math.nan), toolkit)["agree"]
    changed = _scores(math.nan)
    changed["per_head"]["gd"]["simam"][0][1] += 2 * agreement.AGREEMENT
    verdict = agreement.scores_agreement(changed, toolkit)
    assert not verdict["agree"] and verdict["at"] == "per_head/gd/simam/0/1"
    verdict = agreement.scores_agreement(_scores(0.3), toolkit)  # a number where the toolkit says undefined
    assert not verdict["agree"] and verdict["nan_mismatch"] == ["metrics/gd/simaou/per_layer/1"]


def test_a_busy_machine_is_refused_unless_allowed(monkeypatch):
    monkeypatch.setattr(machine, "others_cores", lambda before, after: 1.5)
    with pytest.raises(SystemExit, match="--allow-busy"):
        machine.check_quiet(allow_busy=False, seconds=0)
    assert machine.check_quiet(allow_busy=True, seconds=0) == 1.5


def test_other_processes_cores_from_clock_ticks():
    ticks = os.sysconf("SC_CLK_TCK")
    # Over 2 s the machine was busy 4 core-seconds, 1 of them this process: others kept 1.5 cores busy.
    assert machine.others_cores((10.0, 0, 0), (12.0, 4 * ticks, ticks)) == pytest.approx(1.5)


def test_flop_count_by_hand():
    cfg = SimpleNamespace(n_layers=1, d_model=4, n_heads=2, d_head=2, d_mlp=8, gated_mlp=False)
    linear, attention = flops.block_flops(cfg, n_tokens=3, n_keys=5)
    # Per token: Q, K, V 3·4·4, O 4·4, MLP 2·4·8 multiply-adds; attention: scores and mixing, 2·4·5.
    assert linear == 3 * 2 * (3 * 16 + 16 + 64)
    assert attention == 3 * 2 * (2 * 4 * 5)


def test_an_out_file_it_did_not_write_is_refused(tmp_path):
    out = tmp_path / "notes.json"
    out.write_text('{"mine": true}')
    with pytest.raises(SystemExit):
        main.parse_args([*TINY, "--out", str(out)])
    assert out.read_text() == '{"mine": true}'


def test_the_attribution_benchmark_writes_its_json_and_tables(tmp_path, capsys):
    from benchmarks import attribution
    from iclgd_lens import compare, load_model, load_task

    result = tmp_path / "result"
    compare(
        load_model("tiny-icl"),
        load_task("synth-sst2"),
        k=4,
        lr=0.3,
        n_eval=6,
        baselines=("no_training",),
        out=result,
        progress=False,
    )
    out = tmp_path / "attribution.json"
    report = attribution.main(
        [
            "--models",
            "tiny-icl",
            "--n-queries",
            "8",
            "--spearman-queries",
            "4",
            "--threads",
            "1",
            "--allow-busy",
            "--command-result",
            str(result),
            "--out",
            str(out),
        ]
    )
    command = report["command"]
    assert list(command["kendall"]) == ["model", "zero_delta", "no_training"] and command["verify_top"] == 10
    assert command["seconds"] >= command["heads"] + sum(command["kendall"].values()) > 0
    run = report["models"]["tiny-icl"]
    assert run["one_layer"]["largest_difference_batched"] < 1e-5 and run["one_layer"]["speedup_batched"] > 0
    assert run["one_layer"]["at_prediction"] == 0  # ALiBi: the prediction position cannot run alone
    assert set(run["exact_every_head"]["spearman"]) == {"gd", "lcgd", "icl"}
    assert {entry["heads"] for entry in run["atp+verify"]["agreement"].values()} == {8}  # 2 x 4 heads, all verified
    assert json.loads(out.read_text())["section"] == "attribution"
    printed = capsys.readouterr().out
    assert "Spearman, every head" in printed and "The command with its defaults" in printed


def test_the_backends_table_and_agreement_from_hand_made_workers(tmp_path):
    from benchmarks.backends import agreement, main, table

    tl3 = {"seconds": {"load": 5.0, "record_zs_icl": 20.0, "fit_gd": 10.0, "compare": 100.0}}
    tl3 |= {"accuracy": {"zs": 0.5, "icl": 0.75}, "metrics": {"gd/simaou": 0.25, "alpha/alpha": 0.1}}
    same = tl3 | {"seconds": {"load": 2.0, "record_zs_icl": 10.0, "fit_gd": 10.0, "compare": 120.0}}
    same |= {"metrics": {"gd/simaou": 0.2504, "alpha/alpha": 0.1}}
    assert "| compare | 100.0 | 120.0 | 1.20 |" in table(tl3, same).splitlines()
    assert agreement(tl3, same) == {"accuracy_equal": True, "max_metric_difference": pytest.approx(4e-4), "agree": True}
    assert not agreement(tl3, same | {"accuracy": {"zs": 0.5, "icl": 0.7}})["agree"]
    assert not agreement(tl3, same | {"metrics": {"gd/simaou": 0.26, "alpha/alpha": 0.1}})["agree"]
    foreign = tmp_path / "theirs.json"
    foreign.write_text("{}")
    with pytest.raises(SystemExit, match="not a file this benchmark wrote"):
        main(["--out", str(foreign)])
    assert foreign.read_text() == "{}"
