"""Attribution finds planted answers: a delta on one known head, patching that restores ICL exactly, and Kendall
on hand-made inputs against a hand-written tau."""

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from iclgd_lens import Delta, Result, compare, load_model, load_task
from iclgd_lens.analysis.attribution import delta_effects, logodds, patch_effects
from iclgd_lens.analysis.kendall import kendall_table, measures, top_k_recall
from iclgd_lens.cli import main


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-icl", device="cpu")


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("attribution") / "run"
    compare(tiny, load_task("synth-sst2"), k=6, seed=0, lr=0.3, n_eval=10, baselines=(), out=folder, progress=False)
    return folder


def test_a_delta_on_one_head_is_found_there_alone(tiny, saved):
    result = Result.load(saved)
    planted = Delta.zeros(tiny, ("attn.W_V",))
    generator = torch.Generator().manual_seed(0)
    planted.tensors["blocks.1.attn.W_V"][2] = 2.0 * torch.randn(planted.tensors["blocks.1.attn.W_V"][2].shape,
                                                                generator=generator)  # fmt: skip
    result.deltas = {"gd": planted}
    table = delta_effects(tiny, result, "gd", batch_size=4)
    heads = table[table["head"] != "all"].assign(size=lambda t: t.logodds_change.abs()).sort_values("size")
    assert (heads.iloc[-1].layer, heads.iloc[-1]["head"]) == (1, 2) and heads.iloc[-1]["size"] > 0.01
    assert (heads.iloc[:-1]["size"] == 0).all()  # every other head computes exactly what the model computes
    whole = table[table["head"] == "all"].set_index("layer").logodds_change
    assert whole[0] == 0 and whole[1] == pytest.approx(heads.iloc[-1].logodds_change)


def test_patching_every_head_restores_the_whole_icl_effect(tiny, saved):
    result = Result.load(saved)
    table, totals = patch_effects(tiny, result, batch_size=4)
    assert totals["all_heads"] == pytest.approx(totals["icl"], abs=1e-4)
    assert totals["all_heads_restored"] == pytest.approx(1.0, abs=1e-5) and totals["icl"] > totals["zs"] + 1
    # one head, independently: its ICL z from a full ICL forward, patched by hand into a full ZS forward
    episode, query, layer, head = result.episode, 3, 1, 2
    icl_tokens = torch.tensor([[*episode.icl_prefix, *episode.queries[query]]])
    _, cache = tiny.run_with_cache(icl_tokens, names_filter=f"blocks.{layer}.attn.hook_z")
    icl_z = cache[f"blocks.{layer}.attn.hook_z"][0, -1, head]

    def patch(z, hook):
        z[0, -1, head] = icl_z
        return z

    zs_tokens = torch.tensor([[episode.bos, *episode.queries[query]]])
    logits = tiny.run_with_hooks(zs_tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)])[0, -1]
    firsts = [t[0] for t in episode.label_tokens]
    by_hand = logodds(logits.log_softmax(-1)[firsts][None], result.labels[query : query + 1])
    only = Result(result.config, result.scores, {k: v.select(torch.arange(10) == query) for k, v in
                  result.records.items()}, result.W_O, result.labels[query : query + 1], _one_query(episode, query))  # fmt: skip
    one, one_totals = patch_effects(tiny, only, [layer], batch_size=1)
    restored = (by_hand.item() - one_totals["zs"]) / (one_totals["icl"] - one_totals["zs"])
    assert one.set_index(["layer", "head"]).loc[(layer, head), "patch_restored"] == pytest.approx(restored, abs=1e-5)
    assert table.patch_restored.notna().all() and len(table) == 2 * 4


def _one_query(episode, query):
    from dataclasses import replace

    return replace(episode, queries=(episode.queries[query],), query_rows=(episode.query_rows[query],),
                   labels=(episode.labels[query],))  # fmt: skip


def hand_tau(a, b) -> float:
    pairs = list(itertools.combinations(range(len(a)), 2))
    signs = [np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i, j in pairs]
    return sum(signs) / len(pairs)


def test_kendall_on_hand_made_inputs():
    rng = np.random.default_rng(1)
    icl = rng.normal(size=12)
    groups = np.repeat(np.arange(4), 3)
    same = measures(icl, icl.copy(), groups, rng.random(12))
    assert same["token"]["tau"] == pytest.approx(1.0) and same["demonstration"]["tau"] == pytest.approx(1.0)
    reversed_ = measures(icl, -icl, groups, rng.random(12))
    assert reversed_["token"]["tau"] == pytest.approx(-1.0)
    other, noise = rng.normal(size=12), rng.random(12)
    got = measures(icl, other, groups, noise)
    assert got["token"]["tau"] == pytest.approx(hand_tau(icl, other))  # softmax keeps the order
    assert got["token"]["tau"] == pytest.approx(kendalltau(icl, other).statistic)
    assert got["token"]["tau_random"] == pytest.approx(hand_tau(icl, noise))
    assert top_k_recall(np.array([5, 4, 3, 2, 1.0]), np.array([5, 4, 0, 0, 9.0]), 2) == 0.5  # {0, 4} vs {0, 1}
    assert top_k_recall(icl, other, 100) == 1.0  # k capped at the number of items


def test_kendall_refits_the_saved_delta_and_writes_every_level(tiny, saved):
    table = kendall_table(tiny, Result.load(saved), "gd", n_queries=5)
    assert list(table.columns[:6]) == ["layer", "level", "tau", "tau_random", "recall_at_5", "recall_at_100"]
    assert len(table) == 2 * 2 and set(table.level) == {"token", "demonstration"}
    assert table.tau.between(-1, 1).all() or table.tau.isna().any()


def test_attribute_command_writes_its_tables(saved, tmp_path):
    out = tmp_path / "attribution"
    assert main(["attribute", str(saved), "--out", str(out), "--kendall-queries", "4", "--threads", "1"]) == 0
    for name in ("heads.csv", "heads.md", "heads.png", "kendall.csv", "kendall.md", "attribution.json"):
        assert (out / name).is_file(), name
    import pandas as pd

    heads = pd.read_csv(out / "heads.csv")
    assert list(heads.columns) == ["layer", "head", "method", "logodds_change", "acc_change", "patch_restored"]
    assert set(heads.method) == {"gd", "lcgd"} and len(heads) == 2 * (2 * 4 + 2)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["attribute", str(saved), "--out", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
