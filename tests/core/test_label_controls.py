"""Label controls: the controlled episode changes the demonstrations' labels and nothing else; the comparison runs a
second time on it, is saved beside the normal one, and stands beside every metric in the summary and the tables."""

import pytest

from iclgd_lens import Result, compare
from iclgd_lens.analysis.protocol.tables import control_label, cross_label, per_layer_table, summary_table
from iclgd_lens.core.episodes import build_episode, shown_labels
from iclgd_lens.views.reproduction import accuracy_table, others
from tests.helpers import make_tokenizer, tiny_model, toy_task


def episode(control=None, seed=3, task=None):
    return build_episode(task or toy_task(), make_tokenizer(), 256, k=10, seed=seed, n_eval=6, label_control=control)


def strip_label(demo, label_tokens, label):
    tokens = label_tokens[label]
    assert demo[-len(tokens) :] == tokens
    return demo[: -len(tokens)]


@pytest.mark.parametrize("control", ["shuffled", "reversed"])
def test_a_controlled_episode_changes_the_demonstrations_labels_and_nothing_else(control):
    task = toy_task()
    plain, controlled = episode(task=task), episode(control, task=task)
    true = [task.train[row]["label"] for row in plain.demo_rows]
    assert plain.demo_labels == tuple(true) and plain.label_control is None
    assert controlled.label_control == control
    for name in ("demo_rows", "train_rows", "queries", "query_rows", "labels", "label_tokens", "separator"):
        assert getattr(controlled, name) == getattr(plain, name), name
    # each demonstration is its own prompt followed by the label tokens of the class it shows
    for demos, labels in ((plain.demos, plain.demo_labels), (controlled.demos, controlled.demo_labels)):
        prompts = [strip_label(d, plain.label_tokens, c) for d, c in zip(demos, labels)]
        assert prompts == [strip_label(d, plain.label_tokens, c) for d, c in zip(plain.demos, plain.demo_labels)]
    assert [controlled.train_labels[controlled.train_rows.index(r)] for r in controlled.demo_rows] == list(
        controlled.demo_labels
    )  # GD's demonstrations show the same labels as ICL's
    if control == "reversed":
        assert list(controlled.demo_labels) == [1 - c for c in true]  # two classes: c -> n - 1 - c
    else:
        assert sorted(controlled.demo_labels) == sorted(true)  # a permutation of the labels
        assert controlled.demo_labels != plain.demo_labels  # which moves some (seed 3 draws both classes)
        assert episode(control, task=task).demo_labels == controlled.demo_labels  # seeded
        assert episode(control, seed=4, task=task).demo_labels != episode(seed=4, task=task).demo_labels


def test_shown_labels_by_hand():
    assert shown_labels([0, 1, 2, 2], 3, 0, "reversed") == [2, 1, 0, 0]
    assert shown_labels([0, 1, 2, 2], 3, 0, None) == [0, 1, 2, 2]
    shuffled = shown_labels([0, 1, 2, 2], 3, 0, "shuffled")
    assert sorted(shuffled) == [0, 1, 2, 2]
    with pytest.raises(ValueError, match="unknown label control 'random'"):
        shown_labels([0, 1], 2, 0, "random")


def test_compare_runs_the_control_beside_and_saves_it(tmp_path):
    model = tiny_model()
    result = compare(
        model,
        toy_task(),
        k=10,
        seed=3,
        n_eval=6,
        baselines=("trained_norms",),
        lr=0.1,
        label_control="shuffled",
        out=tmp_path / "run",
        progress=False,
    )
    control = result.controls["shuffled"]
    assert control.config["demonstration_labels"] == "shuffled" and result.config["demonstration_labels"] == "true"
    assert result.config["label_control"] == "shuffled"
    assert control.accuracy["zs"] == result.accuracy["zs"]  # the queries are the same; ZS sees no demonstration
    assert control.records["icl"].attn_out.ne(result.records["icl"].attn_out).any()  # ICL saw other labels
    summary = result.summary()
    assert {"gd [shuffled]", "lcgd [shuffled]", "gd [ICL true, FT shuffled]", "gd [ICL shuffled, FT true]"} <= set(
        summary.columns
    )
    assert summary.loc["acc_icl", "gd [shuffled]"] == control.accuracy["icl"]
    loaded = Result.load(tmp_path / "run")
    assert list(loaded.controls) == ["shuffled"]
    assert loaded.controls["shuffled"].episode.demo_labels == control.episode.demo_labels
    assert (tmp_path / "run" / "control-shuffled" / "result.json").is_file()
    # a result with its control is the toolkit's own folder: overwritten on request, refused with a stranger's file
    result.save(tmp_path / "run", overwrite=True)
    (tmp_path / "run" / "control-shuffled" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="is not a result folder written by iclgd-lens"):
        result.save(tmp_path / "run", overwrite=True)
    assert (tmp_path / "run" / "control-shuffled" / "notes.txt").read_text() == "keep"
    (tmp_path / "run" / "control-shuffled" / "notes.txt").unlink()

    table, verdicts = summary_table({"toy": [loaded]})
    label = control_label("shuffled")
    assert label in set(table.model)
    icl = table[(table.model == label) & (table.metric == "acc_icl")]["mean"].iloc[0]
    assert icl == control.accuracy["icl"]
    assert label in set(verdicts.baseline)  # the trained model is set against its control, paired
    accuracies = accuracy_table(table)
    # a baseline whose name starts with "trained" is no control: no accuracy row, listed before the control
    assert "| toy [shuffled] |" in accuracies and "norms" not in accuracies
    crosses = [cross_label("shuffled", "true"), cross_label("shuffled", "shuffled")]
    assert crosses == ["trained [ICL true, FT shuffled]", "trained [ICL shuffled, FT true]"]
    assert others(table) == ["trained_norms", *sorted([label, *crosses])]
    assert set(crosses) <= set(verdicts.baseline)  # the cross pairs too, paired by run and query
    # α involves no ICL: a cross pair's would copy the trained model's or its control's, and a verdict against it
    # would be an identity (0 against "ICL shuffled, FT true"): no α row for a cross pair, in any table
    assert "alpha" in set(verdicts[verdicts.baseline == label].metric)
    assert "alpha" not in set(verdicts[verdicts.baseline.isin(crosses)].metric)
    assert "alpha" in set(table[table.model == label].metric)
    assert "alpha" not in set(table[table.model.isin(crosses)].metric)
    layers = per_layer_table({"toy": [loaded]})
    assert "alpha" in set(layers[layers.model == label].metric)
    assert "alpha" not in set(layers[layers.model.isin(crosses)].metric)
    assert {"simaou_norm", "simaou", "simam_delta"} <= set(verdicts[verdicts.baseline == crosses[1]].metric)
    crossed = table[(table.model == crosses[0]) & (table.method == "gd")].set_index("metric")["mean"]
    assert (crossed["acc_icl"], crossed["acc_ft"]) == (result.accuracy["icl"], control.accuracy["gd"])


def layer_mean(values):
    """A metric's mean as the toolkit reduces it: per-layer means over defined queries, then over layers."""
    per_layer = values.nanmean(0)
    return float(per_layer[~per_layer.isnan()].mean())


def test_cross_pairs_say_whose_labels_moved_a_similarity():
    """Constructed: ICL ignores the labels (its shuffled-label records are its true-label ones) while GD follows
    them. The matched control moves every similarity and cannot say whose labels did it; the cross pairs can: ICL
    on the shuffled labels against GD on the true ones is the true pair exactly, ICL on the true labels against GD
    on the shuffled ones carries the whole change. Each cross pair's SimAOU against the metric by hand."""
    import torch

    from iclgd_lens.core import metrics as M

    result = compare(
        tiny_model(), toy_task(), k=10, seed=3, n_eval=6, baselines=(), lr=0.1, label_control="shuffled", progress=False
    )
    control = result.controls["shuffled"]
    control.records["icl"] = result.records["icl"]  # ICL ignores the labels
    zs, icl = result.records["zs"], result.records["icl"]
    assert not torch.equal(control.records["gd"].attn_out, result.records["gd"].attn_out)  # GD follows them
    icl_moved = result.crossed("shuffled", icl="shuffled")
    gd_moved = result.crossed("shuffled", icl="true")
    for method in result.methods:
        for metric in ("simaou", "simaou_norm", "simam_delta"):
            assert icl_moved.metrics[method][metric]["mean"] == result.metrics[method][metric]["mean"]
        by_hand = layer_mean(M.simaou(icl.attn_out, zs.attn_out, control.records[method].attn_out))
        assert gd_moved.metrics[method]["simaou"]["mean"] == pytest.approx(by_hand, abs=1e-6)
        assert abs(by_hand - result.metrics[method]["simaou"]["mean"]) > 1e-3
    assert gd_moved.scores["model"].update_norm == control.scores["model"].update_norm
    assert gd_moved.accuracy["icl"] == result.accuracy["icl"] and gd_moved.accuracy["gd"] == control.accuracy["gd"]
    with pytest.raises(ValueError, match="no cross pair"):
        result.crossed("reversed", icl="true")


def test_a_sweep_with_a_label_control_resumes_without_rerunning(tmp_path, capsys):
    from iclgd_lens.cli import main

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
        "--k",
        "6",
        "--n-eval",
        "6",
        "--baselines",
        "--label-control",
        "reversed",
        "--threads",
        "1",
        "--quiet",
        "--out",
        str(tmp_path / "sweep"),
    ]
    assert main(sweep) == 0
    capsys.readouterr()
    assert main(sweep) == 0
    assert "1 of 1 runs are already finished" in capsys.readouterr().out


def test_an_unknown_control_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match="unknown label control 'random'"):
        compare(tiny_model(), toy_task(), k=4, n_eval=2, label_control="random", progress=False)
