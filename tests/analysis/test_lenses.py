"""The lenses against independent computations: the implicit update against weights edited by hand, its cosine
against a GD delta built to equal it, task vectors against the recorder's own ZS and ICL runs, and the statistics
against hand-computed means."""

import copy
import dataclasses
import json
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

import iclgd_lens.cli.lens_jobs as lens_jobs
from iclgd_lens import Delta, Result, compare, load_task
from iclgd_lens.analysis.heads.attribution import _first_token_record
from iclgd_lens.analysis.lenses.implicit_update import (
    implicit_norms,
    implicit_parts,
    implicit_values,
    inner_with,
    input_matrices,
    method_update,
    path_values,
)
from iclgd_lens.analysis.lenses.lens_nulls import check_null_result, other_task_subject, random_abs_cos, random_scales
from iclgd_lens.analysis.lenses.lens_runs import SubjectRuns, check_lens_result, subject_runs
from iclgd_lens.analysis.lenses.patch_transfer import transfer_values
from iclgd_lens.analysis.lenses.task_vectors import (
    patch_values,
    patched_runs,
    shift_values,
    stream_points,
    task_vector,
    task_vector_values,
)
from iclgd_lens.analysis.lenses.values import cross_pair, lens_values, method_measures, verdict_measures
from iclgd_lens.analysis.protocol.pooled import mean_and_interval, paired_table, per_layer_table
from iclgd_lens.cli import main
from iclgd_lens.core.hooks import hook_name, parameter_name
from iclgd_lens.core.methods import run_method
from iclgd_lens.core.recording import Prompts, read_points
from iclgd_lens.sources.task import Task
from iclgd_lens.views import lens_run_values
from tests.helpers import GEMMA3_LIKE, tiny_model, toy_rows, toy_task

ARCHS = {
    "gpt2-like": dict(),
    "llama-like": dict(
        normalization_type="RMS", positional="rotary", gated_mlp=True, act_fn="silu", n_key_value_heads=2
    ),
    "neox-like": dict(positional="rotary", parallel_attn_mlp=True),
    "gemma3-like": GEMMA3_LIKE,
}


def lens_subject(arch: str, **options) -> tuple[SubjectRuns, Result]:
    model = tiny_model(dtype=torch.float64, **ARCHS[arch])
    result = compare(
        model, toy_task(), k=4, n_eval=5, groups=("mlp_in",), baselines=(), lr=0.1, progress=False, **options
    )
    [subject] = subject_runs(model, result)
    return subject, result


@pytest.mark.parametrize("arch", ARCHS, ids=list(ARCHS))
def test_the_zs_block_under_the_implicit_update_is_the_icl_block(arch):
    """Against weights edited by hand: the ZS prompt through a copy whose MLP input weights are W + ΔW_i, with Δr_i
    added to the block's output at the prediction position, gives ICL's block output there (float64)."""
    subject, result = lens_subject(arch)
    model, episode = subject.model, result.episode
    icl_out = subject.readings["icl"]["resid_post"].double()
    zs_out = subject.readings["zs"]["resid_post"].double()
    values = implicit_values(subject, episode)
    assert values["exact_error"].max() < 1e-5  # the hook-based check the lens reports
    for layer in range(model.cfg.n_layers):
        u, a, residual = implicit_parts(subject, layer)
        for query in (0, 3):
            edited = copy.deepcopy(model)
            with torch.no_grad():
                for name, weight in input_matrices(model, layer).items():
                    change = torch.outer(u[query], a[name][query]) / u[query].dot(u[query])
                    dict(edited.named_parameters())[parameter_name(name, layer)].add_(change)
            tokens = torch.tensor([[episode.bos, *episode.queries[query]]])
            at = len(episode.queries[query])
            captured = {}

            def keep(resid, hook):
                captured["out"] = resid[0, at] + residual[query]

            edited.run_with_hooks(tokens, fwd_hooks=[(hook_name("resid_post", layer), keep)])
            expected = icl_out[query, layer]
            gap = (captured["out"] - expected).norm() / expected.norm()
            assert gap < 1e-5, (layer, query, float(gap))
            # the check can fail: without the update the ZS block is far from ICL's
            assert (zs_out[query, layer] - expected).norm() / expected.norm() > 1e-3


def test_implicit_norms_against_materialised_updates():
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    a = {
        "W_in": torch.randn(4, 5, generator=generator, dtype=torch.float64),
        "W_gate": torch.randn(4, 5, generator=generator, dtype=torch.float64),
    }
    full = [torch.cat([torch.outer(u[i], a[k][i]) for k in a], 1) / u[i].dot(u[i]) for i in range(4)]
    per_query, mean = implicit_norms(u, a)
    torch.testing.assert_close(per_query, torch.stack([m.norm() for m in full]))
    assert mean == pytest.approx(float(torch.stack(full).mean(0).norm()), rel=1e-12)


@pytest.mark.parametrize("arch", ["gpt2-like", "llama-like"])
def test_cosine_is_one_for_a_gd_delta_equal_to_the_implicit_update(arch):
    subject, result = lens_subject(arch)
    layers = range(subject.model.cfg.n_layers)
    parts = [implicit_parts(subject, layer) for layer in layers]

    def planted(make) -> Delta:
        tensors = {}
        for layer, (u, a, _) in enumerate(parts):
            for name in a:
                tensors[parameter_name(name, layer)] = make(u, a[name])
        return Delta(tensors)

    one = lambda u, a: torch.outer(u[2], a[2]) / u[2].dot(u[2])  # noqa: E731
    mean = lambda u, a: torch.stack([torch.outer(u[i], a[i]) / u[i].dot(u[i]) for i in range(len(u))]).mean(0)  # noqa: E731
    subject.deltas = {"gd": planted(one), "lcgd": planted(mean)}
    values = implicit_values(subject, result.episode)
    torch.testing.assert_close(values["implicit_cos_gd"][2], torch.ones(len(layers), dtype=torch.float64))
    assert (values["implicit_cos_gd"][[0, 1, 3, 4]] < 1 - 1e-6).all()  # other queries' updates differ
    torch.testing.assert_close(values["implicit_mean_cos_lcgd"][0], torch.ones(len(layers), dtype=torch.float64))
    torch.testing.assert_close(values["implicit_norm_ratio_lcgd"][0], torch.ones(len(layers), dtype=torch.float64))
    # a method that did not train the MLP input weights has nothing to be set against: NaN, never 0
    subject.deltas = {"gd": Delta({})}
    assert implicit_values(subject, result.episode)["implicit_cos_gd"].isnan().all()


@pytest.mark.parametrize("arch", ["gpt2-like", "llama-like"])
def test_the_path_ends_at_the_whole_update(arch):
    """With all k demonstrations the path's cosine is the whole network's: every layer's implicit update against the
    result's own GD delta (trained on all k), as one vector; the first step changes ΔW by all of it."""
    subject, result = lens_subject(arch)
    k = len(result.episode.demos)
    assert result.episode.train_demos == result.episode.demos  # GD trains on ICL's demonstrations, in their order
    values = path_values(subject, result.episode, batch_size=2)
    assert values["path_cos_gd"].shape == (5, k + 1) and values["path_cos_gd"][:, 0].isnan().all()
    inner, own, other = 0.0, 0.0, 0.0
    for layer in range(subject.model.cfg.n_layers):
        u, a, _ = implicit_parts(subject, layer)
        update = method_update(subject, "gd", layer)
        inner = inner + inner_with(u, a, update)
        own = own + implicit_norms(u, a)[0] ** 2
        other = other + sum(g.pow(2).sum() for g in update.values())
    torch.testing.assert_close(values["path_cos_gd"][:, k], inner / (own.sqrt() * other.sqrt()), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(values["path_change"][:, 1], torch.ones(5, dtype=torch.float64))
    assert (values["path_change"][:, 2:] < 1e3).all()


@pytest.mark.parametrize("arch", ["gpt2-like", "llama-like"])
def test_task_vectors_patch_nothing_then_everything(arch):
    """Unpatched is ZS and patched after the last layer is ICL, both against the recorder's own runs; with rotary
    positions the stream entering layer 0 is the same token's embedding in both prompts, so patching it is ZS."""
    subject, result = lens_subject(arch)
    episode = result.episode
    patched, plain = patched_runs(subject, episode, {"own": stream_points(subject.readings["icl"])}, batch_size=2)
    patched = patched["own"]
    zs = _first_token_record(subject.model, episode, episode.zs_prefix, 3).double()
    icl = _first_token_record(subject.model, episode, episode.icl_prefix, 3).double()
    # up to a per-row constant (full-vocabulary log-probs): compare the class log-odds
    centred = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731
    torch.testing.assert_close(centred(plain), centred(zs), atol=1e-6, rtol=0)
    torch.testing.assert_close(centred(patched[:, -1]), centred(icl), atol=1e-6, rtol=0)
    if arch == "llama-like":
        torch.testing.assert_close(centred(patched[:, 0]), centred(zs), atol=1e-6, rtol=0)
    values = task_vector_values(subject, episode, batch_size=2)
    assert values["tv_correct"].shape == values["own_stream_correct"].shape == (5, subject.model.cfg.n_layers + 1)
    # the shift cosine by hand at the last point
    icl_shift = (subject.readings["icl"]["resid_post"][:, -1] - subject.readings["zs"]["resid_post"][:, -1]).double()
    gd_shift = (subject.readings["gd"]["resid_post"][:, -1] - subject.readings["zs"]["resid_post"][:, -1]).double()
    by_hand = torch.nn.functional.cosine_similarity(icl_shift, gd_shift, dim=-1)
    torch.testing.assert_close(values["shift_cos_gd"][:, -1], by_hand)


def test_hendels_task_vector_is_the_mean_dummy_stream_and_not_the_querys():
    """θ by hand: full forwards of [demonstrations; dummy] (run_with_cache, no shared prefix), the stream at the last
    position averaged over the dummies; the same θ whatever the evaluation queries; patched, every query gets it."""
    subject, result = lens_subject("llama-like")
    episode, model = result.episode, subject.model
    assert len(episode.dummy_queries) == 8 and sorted(set(episode.dummy_labels)) == [0, 1]
    assert not set(episode.dummy_rows) & set(episode.demo_rows)
    by_hand = []
    for dummy in episode.dummy_queries:
        _, cache = model.run_with_cache(torch.tensor([[*episode.icl_prefix, *dummy]]))
        streams = [cache[hook_name("resid_pre", layer)][0, -1] for layer in range(model.cfg.n_layers)]
        by_hand.append(torch.stack([*streams, cache[hook_name("resid_post", model.cfg.n_layers - 1)][0, -1]]))
    theta = task_vector(subject, episode, batch_size=3)
    torch.testing.assert_close(theta, torch.stack(by_hand).mean(0).double(), atol=1e-6, rtol=0)
    others = dataclasses.replace(episode, queries=episode.queries[::-1], labels=episode.labels[::-1])
    assert torch.equal(task_vector(subject, others, batch_size=3), theta)
    n = len(episode.queries)
    values = patch_values(subject, episode, {"tv": theta.expand(n, *theta.shape)}, batch_size=2)
    assert torch.equal(values["tv_correct"], task_vector_values(subject, episode, batch_size=2)["tv_correct"])


def test_the_majority_share_says_where_a_patched_run_answers_one_class():
    """After the last layer θ is the whole stream the read-out sees, the same for every query: every query gets
    the same answer (majority 1). Random streams patched in give answers that differ: each query's indicator of
    the point's most frequent answer, counted by hand."""
    subject, result = lens_subject("llama-like")
    episode = result.episode
    values = task_vector_values(subject, episode, batch_size=2)
    assert torch.equal(values["tv_majority"][:, -1], torch.ones(len(episode.queries), dtype=torch.float64))
    assert values["tv_majority"].shape == values["tv_correct"].shape
    # random streams patched in: answers that differ between queries, the majority counted by hand (5 queries, two
    # classes: no ties)
    torch.manual_seed(0)
    n, points = len(episode.queries), subject.model.cfg.n_layers + 1
    sources = {"noise": torch.randn(n, points, subject.model.cfg.d_model, dtype=torch.float64)}
    answers = patched_runs(subject, episode, sources, batch_size=2)[0]["noise"].argmax(-1).tolist()
    by_hand = [
        [float(row[p] == Counter(r[p] for r in answers).most_common(1)[0][0]) for p in range(points)] for row in answers
    ]
    majority = patch_values(subject, episode, sources, batch_size=2)["noise_majority"]
    assert majority.tolist() == by_hand and 0 < majority.mean() < 1


def test_a_task_vector_without_demonstrations_changes_nothing():
    """θ from a zero-shot prompt (no demonstrations) of the query itself is the query's own ZS stream: patching it
    into the query's ZS run leaves every point's answer as it was (the patch machinery adds nothing of its own)."""
    subject, result = lens_subject("gemma3-like")
    first = result.episode.queries[0]
    episode = dataclasses.replace(
        result.episode, demos=(), queries=(first,), labels=result.episode.labels[:1], dummy_queries=(first,)
    )
    theta = task_vector(subject, episode)
    patched, plain = patched_runs(subject, episode, {"tv": theta[None]})
    patched = patched["tv"]
    # the recorded streams are float32: the patched value is the float64 stream rounded to float32
    torch.testing.assert_close(patched, plain[:, None].expand_as(patched), atol=1e-6, rtol=0)


def one_answer_task(label: int):
    """synth-sst2 with every row of class `label` (but one train row, which a Task needs of each class and no
    demonstration here is): the task is to answer that class."""
    task = load_task("synth-sst2")
    relabel = lambda rows: [dict(row, label=label) for row in rows]  # noqa: E731
    train = [*relabel(task.train[:-1]), dict(task.train[-1], label=1 - label)]
    return dataclasses.replace(task, name=f"always-{label}", train=train, eval=relabel(task.eval))


def test_on_tiny_icl_a_task_vector_carries_its_task_and_another_tasks_does_not(tiny):
    """tiny-icl's ZS prefers one label word; on the task "always answer the other" its ICL mostly answers it, and θ
    patched entering its last layer (the one middle point of two layers) moves the answer toward it; θ of the task
    "always answer the preferred one" moves it away. (On tiny-icl θ lifts the log-odds, 0.46 nats, more than the
    accuracy: 0.125 to 0.25.)"""
    runs = {}
    for label in (0, 1):
        result = compare(tiny, one_answer_task(label), k=16, n_eval=24, baselines=(), methods=("gd",), progress=False)
        [subject] = subject_runs(tiny, result)
        runs[label] = (subject, result)
    target = min(runs, key=lambda label: runs[label][1].scores["model"].accuracy["zs"])  # the class ZS does not say
    (subject, result), (other_subject, other_result) = runs[target], runs[1 - target]
    assert set(result.episode.demo_labels) == {target}
    assert result.scores["model"].accuracy["zs"] < 0.5 and result.scores["model"].accuracy["icl"] > 0.6
    n, middle = len(result.episode.queries), tiny.cfg.n_layers - 1

    def patched_logodds(theta: torch.Tensor) -> torch.Tensor:
        return patch_values(subject, result.episode, {"tv": theta.expand(n, *theta.shape)})["tv_logodds"].mean(0)

    own = patched_logodds(task_vector(subject, result.episode))
    crossed = patched_logodds(task_vector(other_subject, other_result.episode))
    zs = own[0]  # entering layer 0 the stream is the last token's embedding: the same in every prompt
    assert own[middle] > zs + 0.3 and crossed[middle] < zs - 0.3


def test_lens_cross_pairs_say_whose_labels_moved_a_lens():
    """Constructed as for the metrics' cross pairs: ICL ignores the labels (the control's ICL runs are the true
    ones), GD follows them. ICL on the shuffled labels against GD on the true ones gives the true pair's measures
    exactly; ICL on the true labels against GD on the shuffled ones gives the residual-shift cosine by hand."""
    subject, result = lens_subject("llama-like", label_control="shuffled", seed=2)  # seed 2 moves two labels
    [control] = subject_runs(subject.model, result.controls["shuffled"], [])
    control.readings["icl"] = subject.readings["icl"]  # ICL ignores the labels
    trained = {"true": subject, "shuffled": control}
    same = method_measures(cross_pair(trained, "shuffled", "shuffled"), result.controls["shuffled"].episode, 2)
    own = implicit_values(subject, result.episode, exact=False) | shift_values(subject)
    assert set(same) == {
        f"{m}_{method}"
        for m in (
            "implicit_cos",
            "implicit_abs_cos",
            "implicit_mean_cos",
            "implicit_norm_ratio",
            "shift_cos",
            "shift_abs_cos",
            "shift_norm_ratio",
        )
        for method in ("gd", "lcgd")
    }
    for name, value in same.items():
        torch.testing.assert_close(value, own[name], rtol=0, atol=0, equal_nan=True)
    moved = method_measures(cross_pair(trained, "shuffled", "true"), result.episode, 2)
    last = lambda setting, who: (who.readings[setting]["resid_post"][:, -1]).double()  # noqa: E731
    by_hand = torch.nn.functional.cosine_similarity(
        last("icl", subject) - last("zs", subject), last("gd", control) - last("zs", subject), dim=-1
    )
    torch.testing.assert_close(moved["shift_cos_gd"][:, -1], by_hand)
    assert not torch.allclose(moved["shift_cos_gd"][:, -1], own["shift_cos_gd"][:, -1])


def test_the_random_direction_scale_against_sampled_directions():
    """E|cos| against a uniform direction: the formula against 20,000 sampled directions (3 standard errors), and
    its large-D form √(2/(πD))."""
    generator = torch.Generator().manual_seed(0)
    for dimension in (3, 50):
        directions = torch.randn(20_000, dimension, generator=generator, dtype=torch.float64)
        sampled = (directions[:, 0] / directions.norm(dim=-1)).abs()
        assert abs(sampled.mean().item() - random_abs_cos(dimension)) < 3 * sampled.std().item() / 20_000**0.5
    assert random_abs_cos(2_000_000) == pytest.approx((2 / (math.pi * 2_000_000)) ** 0.5, rel=1e-6)
    model = tiny_model(**ARCHS["llama-like"])
    scales = random_scales(model)
    assert scales["random_abs_cos_implicit"][0, 0] == random_abs_cos(2 * 32 * 64)  # gate and in: 2 × d_model × d_mlp
    assert scales["random_abs_cos_shift"].shape == (1, 3) and scales["random_abs_cos_shift"][0, 0] == random_abs_cos(32)


def other_toy_task() -> Task:
    """Another two-class task of the same format and label words (other rows)."""
    return Task("toy-b", "Sentence: {sentence} Label:", ("Negative", "Positive"), toy_rows(40, 5), toy_rows(12, 6))


def test_the_structured_null_is_the_other_tasks_update_read_on_this_tasks_queries():
    """The null subject's delta is GD refit on exactly the other task's demonstrations (its episode), and its
    cosines are the lens's measures with that delta in place of this task's; a null of the same task, another k or
    another number of classes is refused in one line."""
    subject, result = lens_subject("llama-like")
    null = compare(
        subject.model, other_toy_task(), k=4, n_eval=5, groups=("mlp_in",), baselines=(), lr=0.1, progress=False
    )
    other = other_task_subject(subject, result, null, batch_size=2)
    refit = run_method("gd", subject.model, null.episode, subject.contexts["gd"])
    for key, tensor in refit.tensors.items():
        torch.testing.assert_close(other.deltas["gd"].tensors[key], tensor, rtol=0, atol=0)
    by_hand = SubjectRuns("by hand", subject.model, {"gd": refit}, {**subject.readings, "gd": other.readings["gd"]}, {})
    measured = method_measures(other, result.episode, 2)
    torch.testing.assert_close(
        measured["implicit_cos_gd"], method_measures(by_hand, result.episode, 2)["implicit_cos_gd"]
    )
    assert not torch.allclose(measured["implicit_cos_gd"], implicit_values(subject, result.episode)["implicit_cos_gd"])
    zs_prompts = Prompts.of(result.episode, (result.episode.bos,))
    zs_through_null = read_points(subject.model, zs_prompts, ("resid_post",), refit, 2)
    torch.testing.assert_close(other.readings["gd"]["resid_post"], zs_through_null["resid_post"])
    check_null_result(result, null, subject.model)
    with pytest.raises(ValueError, match="the same task"):
        check_null_result(result, result, subject.model)
    with pytest.raises(ValueError, match="k 6 .this run's 4."):
        check_null_result(
            result,
            compare(
                subject.model, other_toy_task(), k=6, n_eval=5, groups=("mlp_in",), baselines=(), lr=0.1, progress=False
            ),
            subject.model,
        )
    three = Task(
        "toy-c",
        "Sentence: {sentence} Label:",
        ("Negative", "Positive", "Neutral"),
        [dict(r, label=i % 3) for i, r in enumerate(toy_rows(40, 7))],
        toy_rows(12, 8),
    )
    with pytest.raises(ValueError, match="3 classes .this task's 2."):
        check_null_result(
            result,
            compare(subject.model, three, k=4, n_eval=5, groups=("mlp_in",), baselines=(), lr=0.1, progress=False),
            subject.model,
        )


def test_statistics_against_hand_computed_means():
    one = np.array([[1.0, np.nan], [3.0, 4.0]])  # 2 queries, 2 layers
    mean, (low, high), covers = mean_and_interval([one])
    assert mean == pytest.approx((2.0 + 4.0) / 2) and covers == "queries" and low <= mean <= high
    two = np.array([[0.0, 0.0], [2.0, 2.0]])
    mean, _, covers = mean_and_interval([one, two])
    assert mean == pytest.approx((3.0 + 1.0) / 2) and covers == "runs and queries"
    measures = ("tv_correct", "implicit_cos_gd", "shift_cos_gd")
    runs = [{"model": dict.fromkeys(measures, one), "no_training": dict.fromkeys(measures, two)}]
    table = per_layer_table(runs)
    row = table[(table.measure == "tv_correct") & (table.subject == "model") & (table.layer == 0)].iloc[0]
    assert row["mean"] == pytest.approx(2.0)
    paired = paired_table(runs, verdict_measures(["gd"]))
    assert list(paired.measure) == ["implicit_cos_gd", "shift_cos_gd", "tv_correct"]
    # paired: on the (query, layer) pairs both define (query 0 of layer 1 is NaN on the model's side)
    first = paired.iloc[0]
    assert (first.model, first.baseline_value, first.difference) == pytest.approx((3.0, 1.5, 1.5))
    assert set(paired.verdict) == {"too few runs"}


@pytest.fixture(scope="module")
def two_runs(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("lenses")
    for seed in (0, 1):
        compare(
            tiny,
            load_task("synth-sst2"),
            k=6,
            seed=seed,
            lr=0.3,
            n_eval=6,
            groups=("k", "v", "mlp_in"),
            baselines=("no_training",),
            label_control="shuffled",
            out=root / f"run{seed}",
            progress=False,
        )
    return root


@pytest.mark.slow  # a subprocess or a whole CLI run: make test, not the edit loop
def test_lenses_command_pools_runs_and_guards_its_folder(tiny, two_runs, capsys):
    out = two_runs / "lenses"
    runs = [str(two_runs / "run0"), str(two_runs / "run1")]
    assert main(["lenses", *runs, "--out", str(out), "--threads", "1", "--path"]) == 0
    for name in ("per_layer.csv", "paired.csv", "lenses.md", "lenses.png", "lenses.json"):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "per_layer.csv")
    controls = {"model [shuffled]", "model [ICL true, FT shuffled]", "model [ICL shuffled, FT true]"}
    assert set(table.subject) == {"model", "no_training", *controls}
    assert set(table.covers) <= {"runs and queries", "none (one value per run: give several runs)"}
    assert {"path_cos_gd", "path_change"} <= set(table.measure)
    errors = table[table.measure == "exact_error"]["mean"]
    assert errors.max() < 1e-4  # float32 model
    paired = pd.read_csv(out / "paired.csv")
    assert set(paired.verdict) == {"too few runs"} and "implicit_cos_gd" in set(paired.measure)
    assert set(paired.baseline) == {"no_training", *controls}  # the label control and its cross pairs, paired
    crossed = paired[paired.baseline == "model [ICL true, FT shuffled]"]
    assert set(crossed.measure) == {
        f"{stem}_{method}"
        for stem in ("implicit_cos", "implicit_abs_cos", "shift_cos", "shift_abs_cos")
        for method in ("gd", "lcgd")
    }
    about = json.loads((out / "lenses.json").read_text())
    assert about["runs"] == 2 and any("too few runs" in note for note in about["notes"])
    # the report's lenses section
    html = two_runs / "report.html"
    assert main(["report", runs[0], "--html", str(html), "--no-views", "--lenses", str(out)]) == 0
    text = html.read_text()
    assert "Lenses: lenses (tiny-icl on synth-sst2, 2 runs)" in text and 'alt="lenses.png"' in text
    assert "implicit_cos_gd: cos(ICL&#x27;s implicit ΔW" in text or "implicit_cos_gd: cos(ICL's implicit ΔW" in text
    capsys.readouterr()
    assert main(["report", runs[0], "--html", str(two_runs / "r2.html"), "--no-views", "--lenses", runs[1]]) == 2
    assert "is not a lenses folder" in capsys.readouterr().err and not (two_runs / "r2.html").exists()
    # an earlier lenses folder is replaced; a folder of anyone else's is refused untouched
    assert main(["lenses", runs[0], "--out", str(out), "--baselines"]) == 0
    assert set(pd.read_csv(out / "per_layer.csv").subject) == {"model", *controls}
    (two_runs / "mine").mkdir()
    (two_runs / "mine" / "notes.txt").write_text("keep")
    capsys.readouterr()
    assert main(["lenses", runs[0], "--out", str(two_runs / "mine")]) == 2
    assert (two_runs / "mine" / "notes.txt").read_text() == "keep"


def test_lenses_refuse_what_they_cannot_read(tiny, two_runs, tmp_path, capsys):
    other = tmp_path / "other"
    compare(tiny, load_task("synth-sst2"), k=6, seed=0, lr=0.3, n_eval=4, baselines=(), out=other, progress=False)
    assert main(["lenses", str(two_runs / "run0"), str(other), "--out", str(tmp_path / "x")]) == 2
    assert "are runs of one task that differ in n_eval 4 against" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    first_option = compare(
        tiny, load_task("synth-sst2"), k=6, n_eval=4, baselines=(), position="first_option", lr=0.3, progress=False
    )
    with pytest.raises(ValueError, match="the lenses read the prediction position"):
        check_lens_result(first_option, tiny)
    capsys.readouterr()
    runs = [str(two_runs / "run0"), str(two_runs / "run1")]
    assert main(["lenses", *runs, "--out", str(tmp_path / "y"), "--null-runs", runs[0]]) == 2
    assert "--null-runs gives 1 results for 2 runs" in capsys.readouterr().err
    assert main(["lenses", runs[0], "--out", str(tmp_path / "y"), "--null-runs", runs[1]]) == 2
    assert "the same task (the null needs another task's demonstrations)" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_the_mean_patch_is_set_against_the_other_tasks_update():
    """With --transfer and a structured null, the null subject carries cos(mean patch, the other task's update) and
    their norm ratio per layer: by hand from the model's mean chained patch (this task's first 2 queries) and the
    null result's saved delta of the same matrices."""
    subject, result = lens_subject("llama-like")
    null = compare(
        subject.model, other_toy_task(), k=4, n_eval=5, groups=("mlp_in",), baselines=(), lr=0.1, progress=False
    )
    values = lens_values(subject.model, result, baselines=(), batch_size=2, null=null, transfer=2)
    _, mean = transfer_values(subject, result.episode, n_sources=2, batch_size=2)
    measured = values["model [FT on toy-b]"]
    learned_by_name = null.deltas["gd"].tensors
    for layer, changes in mean.items():
        shared = [name for name in changes if parameter_name(name, layer) in learned_by_name]  # the MLP input's
        patch = torch.cat([changes[name].flatten() for name in shared]).double()
        learned = torch.cat([learned_by_name[parameter_name(name, layer)].flatten() for name in shared]).double()
        assert measured["patch_cos_gd"][0, layer] == pytest.approx(
            float(patch @ learned / patch.norm() / learned.norm())
        )
        assert measured["patch_norm_ratio_gd"][0, layer] == pytest.approx(float(patch.norm() / learned.norm()))
    assert not np.allclose(measured["patch_cos_gd"], values["model"]["patch_cos_gd"])  # this task's update differs


@pytest.mark.slow  # tiny-icl runs and the CLI: make test, not the edit loop
def test_lenses_set_every_cosine_beside_the_other_tasks_null(tiny, two_runs, tmp_path):
    """--null-runs: the subject "model [FT on synth-subj]" with the method measures, paired with the model per run
    and query, and the random-direction scales on the model, per layer."""
    nulls = []
    for seed in (0, 1):
        nulls.append(tmp_path / f"null{seed}")
        compare(
            tiny,
            load_task("synth-subj"),
            k=6,
            seed=seed,
            lr=0.3,
            n_eval=6,
            groups=("k", "v", "mlp_in"),
            baselines=(),
            out=nulls[-1],
            progress=False,
        )
    out = tmp_path / "lenses"
    runs = [str(two_runs / "run0"), str(two_runs / "run1")]
    assert main(["lenses", *runs, "--out", str(out), "--baselines", "--null-runs", *map(str, nulls)]) == 0
    table = pd.read_csv(out / "per_layer.csv")
    null = table[table.subject == "model [FT on synth-subj]"]
    assert {"implicit_cos_gd", "implicit_abs_cos_gd", "shift_cos_gd", "shift_abs_cos_gd"} <= set(null.measure)
    scale = table[(table.subject == "model") & (table.measure == "random_abs_cos_shift")]
    assert len(scale) == tiny.cfg.n_layers + 1 and scale["mean"].iloc[0] == pytest.approx(
        random_abs_cos(tiny.cfg.d_model)
    )
    paired = pd.read_csv(out / "paired.csv")
    assert "model [FT on synth-subj]" in set(paired.baseline)
    assert "lenses.md" in {p.name for p in out.iterdir()} and "random direction" in (out / "lenses.md").read_text()


@pytest.mark.slow  # tiny-icl runs, the CLI and two spawned processes: make test, not the edit loop
def test_lenses_keep_each_runs_values_and_go_on_where_they_stopped(two_runs, tmp_path, monkeypatch, capsys):
    """Each run's values are kept in runs/ as it finishes: a call stopped by a failing run leaves the runs before it,
    the next call computes only the rest and writes the same tables as an uninterrupted call; a changed option
    computes again; `--jobs 2` (two processes) writes the same tables as one job."""
    runs = [str(two_runs / "run0"), str(two_runs / "run1")]
    whole, resumed, parallel = tmp_path / "whole", tmp_path / "resumed", tmp_path / "parallel"
    assert main(["lenses", *runs, "--out", str(whole), "--baselines", "--threads", "1"]) == 0
    computed = []
    real = lens_jobs.lens_values

    def second_run_fails(model, result, *args):
        if len(computed) == 1:
            raise ValueError("stopped")
        computed.append(result.config["seed"])
        return real(model, result, *args)

    monkeypatch.setattr(lens_jobs, "lens_values", second_run_fails)
    assert main(["lenses", *runs, "--out", str(resumed), "--baselines", "--threads", "1"]) == 2
    assert "stopped" in capsys.readouterr().err
    assert not (resumed / "lenses.json").exists() and len(list((resumed / lens_run_values.RUNS).glob("*.npz"))) == 1
    computed.clear()
    monkeypatch.setattr(
        lens_jobs, "lens_values", lambda model, result, *args: computed.append(0) or real(model, result, *args)
    )
    assert main(["lenses", *runs, "--out", str(resumed), "--baselines", "--threads", "1"]) == 0
    assert len(computed) == 1 and "1 of 2 runs' values read" in capsys.readouterr().out
    for name in ("per_layer.csv", "paired.csv"):
        assert (resumed / name).read_text() == (whole / name).read_text(), name
    assert main(["lenses", *runs, "--out", str(resumed), "--baselines", "--threads", "1"]) == 0
    assert len(computed) == 1  # everything read back, nothing computed
    assert main(["lenses", runs[0], "--out", str(resumed), "--baselines", "--batch-size", "2", "--threads", "1"]) == 0
    assert len(computed) == 2  # another option: computed again
    monkeypatch.undo()
    assert main(["lenses", *runs, "--out", str(parallel), "--baselines", "--jobs", "2", "--threads", "2"]) == 0
    for name in ("per_layer.csv", "paired.csv"):
        assert (parallel / name).read_text() == (whole / name).read_text(), name


def test_kept_run_values_read_back_only_under_their_own_key(tmp_path):
    """Values written under a key read back equal (subjects and measures in order, float32 kept); a key given
    with a tuple reads back (JSON keeps lists); another option or an edited result.json reads nothing."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text("{}")
    out = tmp_path / "lenses"
    values = {
        "model": {"tv_correct": np.arange(6, dtype=np.float32).reshape(3, 2), "zs_correct": np.ones((3, 1))},
        "model [ICL true, FT shuffled]": {"shift_cos_gd": np.full((3, 2), np.nan)},
    }
    key = lens_run_values.run_key(run, None, {"baselines": ("no_training",), "path": False})
    lens_run_values.start_run_values(out)
    lens_run_values.write_run_values(out, key, values)
    back = lens_run_values.read_run_values(out, key)
    assert list(back) == list(values) and list(back["model"]) == ["tv_correct", "zs_correct"]
    assert back["model"]["tv_correct"].dtype == np.float32
    np.testing.assert_array_equal(back["model"]["tv_correct"], values["model"]["tv_correct"])
    assert np.isnan(back["model [ICL true, FT shuffled]"]["shift_cos_gd"]).all()
    assert (
        lens_run_values.read_run_values(out, lens_run_values.run_key(run, None, {"baselines": [], "path": False}))
        is None
    )
    (run / "result.json").write_text('{"edited": 1}')
    assert lens_run_values.read_run_values(out, lens_run_values.run_key(run, None, key["options"])) is None
