"""Attribution finds planted answers: a delta on one known head, patching that restores ICL exactly, and Kendall
on hand-made inputs against a hand-written tau."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import kendalltau
from transformers import AutoModelForCausalLM, GPT2Config

from iclgd_lens import Delta, Result, compare, load_model, load_task
from iclgd_lens.analysis.heads import kendall
from iclgd_lens.analysis.heads.attribution import (
    attribution_table,
    change_against,
    delta_effects,
    logodds,
    patch_effects,
    with_queries,
)
from iclgd_lens.analysis.heads.kendall import (
    COLUMNS,
    ft_scores,
    kendall_table,
    measures,
    pooled_tables,
    queries_table,
    read_queries_table,
    softmax,
    top_k_recall,
)
from iclgd_lens.cli import main
from iclgd_lens.core.recording import record_offset
from tests.helpers import make_tokenizer, toy_task


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("attribution") / "run"
    compare(
        tiny,
        load_task("synth-sst2"),
        k=6,
        seed=0,
        lr=0.3,
        n_eval=10,
        baselines=("no_training",),
        out=folder,
        progress=False,
    )
    return folder


def test_a_delta_on_one_head_is_found_there_alone(tiny, saved):
    result = Result.load(saved)
    planted = Delta.zeros(tiny, ("attn.W_V",))
    generator = torch.Generator().manual_seed(0)
    planted.tensors["blocks.1.attn.W_V"][2] = 2.0 * torch.randn(
        planted.tensors["blocks.1.attn.W_V"][2].shape, generator=generator
    )
    result.deltas = {"gd": planted}
    table = delta_effects(tiny, result, "gd", batch_size=4)
    heads = table[table["head"] != "all"].assign(size=lambda t: t.logodds_change.abs()).sort_values("size")
    assert (heads.iloc[-1].layer, heads.iloc[-1]["head"]) == (1, 2) and heads.iloc[-1]["size"] > 0.01
    # every other head computes what the model computes (to float rounding: the heads run batched, ZS unbatched)
    assert (heads.iloc[:-1]["size"] < 1e-6).all()
    whole = table[table["head"] == "all"].set_index("layer").logodds_change
    assert whole[0] == 0 and whole[1] == pytest.approx(heads.iloc[-1].logodds_change)
    assert whole["all"] == pytest.approx(whole[1])  # the whole delta is layer 1's


def test_a_delta_pushing_every_query_to_one_class_shows_beside_a_cancelling_mean(tiny, saved):
    """A value bias whose attention output writes W_U[first] − W_U[second] at every position: every query moves
    toward the first class, so the signed mean change nearly cancels over balanced labels while the mean absolute
    change and the majority share do not."""
    full = Result.load(saved)
    labels = full.labels.tolist()
    result = with_queries(
        full, [i for i, l in enumerate(labels) if l == 0][:2] + [i for i, l in enumerate(labels) if l == 1][:2]
    )
    episode, last = result.episode, tiny.cfg.n_layers - 1
    first, second = (tokens[0] for tokens in episode.label_tokens)
    direction = (tiny.W_U[:, first] - tiny.W_U[:, second]).detach()
    W_O = tiny.blocks[last].attn.W_O.detach().reshape(-1, tiny.cfg.d_model)  # [head * d_head, d_model]
    b_V = torch.linalg.lstsq(W_O.T, 50 * direction[:, None]).solution[:, 0]
    pushed = Delta.zeros(tiny, ("attn.b_V",))
    pushed.tensors[f"blocks.{last}.attn.b_V"] = b_V.reshape(tiny.cfg.n_heads, tiny.cfg.d_head)
    result.deltas = {"gd": pushed}
    whole = delta_effects(tiny, result, "gd", batch_size=4).set_index(["layer", "head"]).loc[("all", "all")]
    assert result.labels.tolist() == [0, 0, 1, 1]  # balanced: the signed mean cancels
    assert whole.abs_logodds_change > 5 and abs(whole.logodds_change) < 0.5 * whole.abs_logodds_change
    zs_share = float(torch.bincount(result.records["zs"].label_logprobs.argmax(1)).max()) / 4
    assert whole.majority_share_change == pytest.approx(1 - zs_share)  # every query now answers the first class
    assert whole.majority_share_change > 0.2


def test_change_against_by_hand():
    zs = torch.tensor([[-0.1, -2.0], [-2.0, -0.1], [-0.1, -2.0], [-2.0, -0.1]]).log_softmax(1)
    pushed = torch.tensor([[-0.1, -3.0], [-0.5, -1.0], [-0.1, -3.0], [-0.5, -1.0]]).log_softmax(1)
    labels = torch.tensor([0, 1, 0, 1])
    got = change_against(pushed, zs, labels)
    by_hand = [
        logodds(p[None], l[None]).item() - logodds(z[None], l[None]).item() for p, z, l in zip(pushed, zs, labels)
    ]
    assert got["logodds_change"] == pytest.approx(np.mean(by_hand))
    assert got["abs_logodds_change"] == pytest.approx(np.mean(np.abs(by_hand)))
    assert (got["majority_share_change"], got["acc_change"]) == (0.5, -0.5)  # 2/4 -> 4/4 answer class 0


def test_patch_restored_is_nan_below_the_icl_effect_threshold(tiny, saved, monkeypatch):
    from iclgd_lens.analysis.heads import attribution

    result = Result.load(saved)
    table, totals = patch_effects(tiny, result, [1], batch_size=4)
    assert table.patch_restored.notna().all() and (table.patch_low <= table.patch_restored).all()
    assert (table.patch_restored <= table.patch_high).all() and "note" not in totals
    monkeypatch.setattr(attribution, "MIN_ICL_EFFECT", abs(totals["icl_effect"]) + 1)
    table, totals = patch_effects(tiny, result, [1], batch_size=4)
    assert table[["patch_restored", "patch_low", "patch_high"]].isna().all().all()
    assert math.isnan(totals["all_heads_restored"]) and "below" in totals["note"]


def test_learned_positions_need_the_position_patch_to_restore_exactly(tmp_path):
    """GPT-2-shaped: every head patched leaves W_pos[ZS position] in the residual stream, which ICL has at
    prefix + position; patching that difference too gives ICL's log-odds exactly."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=256, vocab_size=len(make_tokenizer()))
    hf = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        hf.transformer.wpe.weight.normal_(0, 1.0)  # positions that matter, as in a trained GPT-2
    hf.save_pretrained(tmp_path / "gpt2")
    make_tokenizer().save_pretrained(tmp_path / "gpt2")
    model = load_model(str(tmp_path / "gpt2"), device="cpu")
    result = compare(model, toy_task(), k=6, seed=0, lr=0.01, n_eval=6, baselines=(), methods=("gd",), progress=False)
    table, totals = patch_effects(model, result, [0], batch_size=3)
    assert abs(totals["all_heads"] - totals["icl"]) > 1e-2  # the heads alone do not restore exactly
    assert totals["all_heads_position"] == pytest.approx(totals["icl"], abs=1e-4)
    assert ("all", "all+position") in set(zip(table.layer, table["head"]))  # the position row
    result.deltas = {"gd": result.deltas["gd"]}
    heads, totals = attribution_table(model, result, [0], batch_size=3)
    position = heads[heads["head"] == "all+position"]
    assert list(position.method) == ["icl"] and position.logodds_change.isna().all()
    from iclgd_lens.views.attribution import heads_heatmaps, heads_markdown

    assert "every head and the positional embedding" in heads_markdown(heads, totals)
    assert len(heads_heatmaps(heads).axes) == 2 * 2  # gd and the patching share, each with its colour bar


def test_patching_every_head_restores_the_whole_icl_effect(tiny, saved):
    result = Result.load(saved)
    table, totals = patch_effects(tiny, result, batch_size=4)
    assert totals["all_heads"] == pytest.approx(totals["icl"], abs=1e-4) and "all_heads_position" not in totals  # ALiBi
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
    one, one_totals = patch_effects(tiny, with_queries(result, [query]), [layer], batch_size=1)
    restored = (by_hand.item() - one_totals["zs"]) / (one_totals["icl"] - one_totals["zs"])
    assert one.set_index(["layer", "head"]).loc[(layer, head), "patch_restored"] == pytest.approx(restored, abs=1e-5)
    assert table.patch_restored.notna().all() and len(table) == 2 * 4 + 1  # every head, and all heads at once
    every = table.set_index(["layer", "head"]).loc[("all", "all")]
    assert (
        every.patch_restored == pytest.approx(totals["all_heads_restored"]) and every.patch_low <= 1 <= every.patch_high
    )


def hand_tau(a, b) -> float:
    pairs = list(itertools.combinations(range(len(a)), 2))
    signs = [np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i, j in pairs]
    return sum(signs) / len(pairs)


def test_kendall_on_hand_made_inputs():
    rng = np.random.default_rng(1)
    icl = rng.normal(size=12)
    groups = np.repeat(np.arange(4), 3)
    same = measures(icl, icl.copy(), groups, rng)
    assert same["token"]["tau"] == pytest.approx(1.0) and same["demonstration"]["tau"] == pytest.approx(1.0)
    reversed_ = measures(icl, -icl, groups, rng)
    assert reversed_["token"]["tau"] == pytest.approx(-1.0)
    other = rng.normal(size=12)
    got = measures(icl, other, groups, np.random.default_rng(7))
    noise = np.random.default_rng(7).random(12)  # the token level's U[0, 1) draw, the first the measure makes
    assert got["token"]["tau"] == pytest.approx(hand_tau(icl, other))  # softmax keeps the order
    assert got["token"]["tau"] == pytest.approx(kendalltau(icl, other).statistic)
    assert got["token"]["tau_random"] == pytest.approx(hand_tau(icl, noise))
    assert (got["token"]["recall_k"], got["token"]["recall_chance"]) == (12, 1.0)  # k = 100 capped at 12 tokens
    assert (got["demonstration"]["recall_k"], got["demonstration"]["recall_chance"]) == (4, 1.0)
    assert top_k_recall(np.array([5, 4, 3, 2, 1.0]), np.array([5, 4, 0, 0, 9.0]), 2) == 0.5  # {0, 4} vs {0, 1}
    assert top_k_recall(icl, other, 100) == 1.0  # k capped at the number of items
    groups = np.repeat(np.arange(10), 2)
    ten = measures(rng.normal(size=20), rng.normal(size=20), groups, rng)["demonstration"]
    assert (ten["recall_k"], ten["recall_chance"]) == (5, 0.5)  # the reference's k = 5 among 10 demonstrations


def test_demonstration_random_baseline_does_not_measure_length():
    """ICL scores that are pure noise, demonstrations of 1 to 12 tokens: ICL's demonstration-level mass follows the
    length; the random baseline (U[0, 1) per demonstration, as the reference draws it) must not, where summing
    softmaxed per-token noise (the former baseline) does."""
    rng = np.random.default_rng(0)
    lengths = [1, 2, 3, 4, 6, 8, 10, 12]
    groups = np.repeat(np.arange(len(lengths)), lengths)
    taus, former = [], []
    for _ in range(200):
        icl = rng.normal(0, 0.01, len(groups))
        taus.append(measures(icl, icl, groups, rng)["demonstration"]["tau_random"])
        summed_noise = np.bincount(groups, weights=softmax(rng.random(len(groups))))
        former.append(kendalltau(np.bincount(groups, weights=softmax(icl)), summed_noise).statistic)
    assert abs(np.mean(taus)) < 0.05 and np.mean(former) > 0.5


def test_ft_scores_are_fairseqs_scaled_queries_dotted():
    rng = np.random.default_rng(2)
    n_heads, d_head = 3, 4
    q, q_train = rng.normal(size=(2, 2, n_heads * d_head)), rng.normal(size=(2, 5, n_heads * d_head))
    scale = np.array([2.0, 3.0])
    got = ft_scores(torch.from_numpy(q), torch.from_numpy(q_train), torch.from_numpy(scale))
    i, layer, token = 1, 1, 3
    by_hand = sum(
        (q[i, layer, h * d_head : (h + 1) * d_head] / scale[layer])
        @ (q_train[layer, token, h * d_head : (h + 1) * d_head] / scale[layer])
        for h in range(n_heads)
    )
    assert got[i, layer, token] == pytest.approx(by_hand)


def normed_by_hand(model, layer: int, x: torch.Tensor, kind: str) -> torch.Tensor:
    """hook_q / hook_k ([pos, head, d_head]) with the model's qk-norm written out (RMS over d_head, times its
    weight), where it has one."""
    if not model.cfg.use_qk_norm:
        return x
    norm = getattr(model.blocks[layer].attn, f"{kind}_norm")
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.w


def kendall_sides_by_hand(model, episode, query: int = 0):
    """Kendall's two sides for the base model (no finetuning) and one query, every layer, from run_with_cache on
    whole prompts: ICL's Σ_h q_h · k_h / attn_scale from the last query token to the demonstration tokens, FT's
    Σ_h q_h · q'_h / attn_scale² with q' from each training demonstration's own forward; q and k as hook_q and
    hook_k give them (before rotary; no ALiBi bias), qk-norm applied by hand, key-value heads repeated."""
    _, icl_cache = model.run_with_cache(torch.tensor([[*episode.icl_prefix, *episode.queries[query]]]))
    _, zs_cache = model.run_with_cache(torch.tensor([[episode.bos, *episode.queries[query]]]))
    position, positions, q_demo = 1, [], {}
    for row, demo in zip(episode.demo_rows, episode.demos):
        step = episode.train_rows.index(row)
        _, demo_cache = model.run_with_cache(torch.tensor([[episode.bos, *episode.train_demos[step]]]))
        for layer in range(model.cfg.n_layers):
            q = normed_by_hand(model, layer, demo_cache[f"blocks.{layer}.attn.hook_q"][0, 1:], "q")
            q_demo.setdefault(layer, []).append(q.flatten(-2))
        positions += range(position, position + len(demo))
        position += len(demo) + len(episode.separator)
    icl, ft = [], []
    for layer in range(model.cfg.n_layers):
        scale = float(model.blocks[layer].attn.attn_scale)
        q = normed_by_hand(model, layer, icl_cache[f"blocks.{layer}.attn.hook_q"][0, -1:], "q")[0].double()
        k = normed_by_hand(model, layer, icl_cache[f"blocks.{layer}.attn.hook_k"][0, positions], "k").double()
        k = k.repeat_interleave(model.cfg.n_heads // k.shape[1], dim=1)
        icl.append((torch.einsum("hd,thd->t", q, k) / scale).detach().numpy())
        q = normed_by_hand(model, layer, zs_cache[f"blocks.{layer}.attn.hook_q"][0, -1:], "q")[0].flatten()
        # float64 products, then float32, as the definition rounds them: a float32 matrix-vector product may give two
        # equal rows (a token repeated at the same position) results one ulp apart, and tau would rank that noise
        ft.append((torch.cat(q_demo[layer]).double() @ q.double() / scale**2).detach().numpy())
    return [side.astype(np.float32).astype(np.float64) for side in (np.stack(icl), np.stack(ft))]


def test_zero_delta_control_equals_the_base_models_tau_by_hand(tiny, saved):
    result = Result.load(saved)
    table = kendall_table(tiny, result, "gd", n_queries=1)
    zero = table[table.subject == "zero_delta"].set_index(["layer", "level"])
    assert all(float(block.attn.attn_scale) == tiny.cfg.d_head**0.5 for block in tiny.blocks)
    icl, ft = kendall_sides_by_hand(tiny, result.episode)
    for layer in range(tiny.cfg.n_layers):
        assert zero.loc[(layer, "token"), "tau"] == pytest.approx(
            kendalltau(softmax(icl[layer]), softmax(ft[layer])).statistic
        )


@pytest.mark.parametrize("shape", ["llama-gqa", "gemma3"])
def test_kendall_sides_are_in_one_geometry_on_rotary_and_qk_norm_models(shape):
    """Rotary positions with grouped-query attention (a Llama-shaped model) and qk-norm (a Gemma-3-shaped one): both
    sides equal the by-hand q·k and q·q' without rotary angles, and the ICL side is not the model's rotary attention
    scores, which the former definition read."""
    from tests.helpers import GEMMA3_LIKE, tiny_model

    llama_like = dict(normalization_type="RMS", positional="rotary", gated_mlp=True, act_fn="silu", n_key_value_heads=2)
    model = tiny_model(**(GEMMA3_LIKE if shape == "gemma3" else llama_like))
    assert model.cfg.positional_embedding_type == "rotary" and (shape != "gemma3" or model.cfg.use_qk_norm)
    result = compare(model, toy_task(), k=6, n_eval=2, lr=0.05, baselines=(), progress=False)
    icl, ft, _ = kendall.kendall_scores(model, result, "gd", 1, finetune=False)
    icl_hand, ft_hand = kendall_sides_by_hand(model, result.episode)
    np.testing.assert_allclose(icl[0], icl_hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ft[0], ft_hand, rtol=1e-5, atol=1e-6)
    _, cache = model.run_with_cache(torch.tensor([[*result.episode.icl_prefix, *result.episode.queries[0]]]))
    keep, _, _ = kendall._alignment(result.episode)
    rotary = np.stack(
        [
            cache[f"blocks.{l}.attn.hook_attn_scores"][0, :, -1, keep].sum(0).detach().numpy()
            for l in range(model.cfg.n_layers)
        ]
    )
    assert np.abs(rotary - icl_hand).max() > 1e-3


def test_kendall_refuses_a_qk_norm_over_the_whole_projection():
    """OLMo 2's qk-norm normalises all heads' queries together, which `content` does not reproduce: refused before
    anything runs; the same model read as per-head qk-norm (Gemma 3's) passes."""
    from tests.helpers import GEMMA3_LIKE, tiny_model

    model = tiny_model(**GEMMA3_LIKE)
    kendall.check_geometry(model)
    model.cfg.original_architecture = "Olmo2ForCausalLM"
    with pytest.raises(NotImplementedError, match="OLMo's norm over the whole projection.*--kendall-queries 0"):
        kendall.check_geometry(model)


def test_kendall_refits_the_saved_delta_with_controls(tiny, saved):
    table = kendall_table(tiny, Result.load(saved), "gd", n_queries=5)
    assert list(table.columns) == COLUMNS
    assert list(dict.fromkeys(table.subject)) == ["model", "zero_delta", "no_training"]
    assert len(table) == 3 * 2 * 2 and set(table.level) == {"token", "demonstration"}
    assert table.tau.dropna().between(-1, 1).all() and table.defined.le(5).all()
    finetuned = table[table.subject == "model"].tau.to_numpy()
    assert not np.allclose(finetuned, table[table.subject == "zero_delta"].tau.to_numpy())  # GD changed something
    # the per-query values the intervals resample: their means over queries are the table's, and they survive the csv
    per_query = table.attrs["per_query"]
    for row in table.itertuples():
        for name in ("tau", "recall"):
            values = per_query[row.subject][f"{name}_{row.level}"][:, row.layer]
            assert np.nanmean(values) == pytest.approx(getattr(row, name), nan_ok=True)
    back = read_queries_table(queries_table(per_query))
    for subject, values in per_query.items():
        for name, array in values.items():
            np.testing.assert_array_equal(back[subject][name], array)


def test_pooled_kendall_against_hand_computed_means():
    """Two runs, two queries, two layers: the per-layer mean and the paired difference of the mean over layers, by
    hand; the verdict says too few runs."""
    model = {"tau_token": np.array([[0.2, 0.4], [0.6, 0.8]]), "tau_demonstration": np.array([[1.0, 0.0], [0.0, 1.0]])}
    zero = {"tau_token": np.zeros((2, 2)), "tau_demonstration": np.full((2, 2), 0.5)}
    runs = [{"model": model, "zero_delta": zero}, {"model": {k: v + 0.1 for k, v in model.items()}, "zero_delta": zero}]
    per_layer, paired = pooled_tables(runs)
    row = per_layer[(per_layer.subject == "model") & (per_layer.measure == "tau_token") & (per_layer.layer == 1)]
    assert row["mean"].iloc[0] == pytest.approx((0.6 + 0.7) / 2) and row.covers.iloc[0] == "runs and queries"
    token = paired[(paired.measure == "tau_token") & (paired.baseline == "zero_delta")].iloc[0]
    assert token.difference == pytest.approx((0.5 + 0.6) / 2) and token.verdict == "too few runs"
    assert token.low <= token.difference <= token.high


def full_prompt_icl_scores(model, episode, n, keep, position, batch_size):
    """Kendall's ICL side one whole-prompt forward per query (the path before the shared prefix): hook_q at the
    recorded position dotted with hook_k at the kept prefix tokens, over heads, / attn_scale (tiny-icl: no qk-norm,
    one key-value head per head)."""
    out = np.zeros((n, model.cfg.n_layers, len(keep)))
    for i in range(n):
        offset = record_offset(episode.queries[i], episode.label_tokens, position)
        tokens = [*episode.icl_prefix, *(list(episode.queries[i]) + list(episode.label_tokens[0]))[: offset + 1]]
        _, cache = model.run_with_cache(torch.tensor([tokens]))
        at = len(episode.icl_prefix) + offset
        for layer in range(model.cfg.n_layers):
            q = cache[f"blocks.{layer}.attn.hook_q"][0, at].double()
            k = cache[f"blocks.{layer}.attn.hook_k"][0, torch.as_tensor(keep)].double()
            out[i, layer] = (torch.einsum("hd,thd->t", q, k) / float(model.blocks[layer].attn.attn_scale)).numpy()
    return out


def full_prompt_queries(model, episode, delta, n, position, batch_size):
    """The finetuned model's query at each ZS prompt's recorded position, one forward per prompt."""
    out = []
    with model.hooks(delta.hooks(model) if delta is not None else []):
        for i in range(n):
            offset = record_offset(episode.queries[i], episode.label_tokens, position)
            tokens = [episode.bos, *(list(episode.queries[i]) + list(episode.label_tokens[0]))[: offset + 1]]
            _, cache = model.run_with_cache(torch.tensor([tokens]))
            out.append(
                torch.stack([cache[f"blocks.{l}.attn.hook_q"][0, -1].flatten() for l in range(model.cfg.n_layers)])
            )
    return torch.stack(out).double()


@pytest.mark.parametrize("preset", ["toolkit", "reference"])
def test_kendall_on_batched_shared_prefix_runs_equals_whole_prompt_forwards(tiny, saved, preset, monkeypatch):
    """kendall.csv from the batched runs (the ICL prefix once, shared by the query rows) against the former path,
    one forward per whole prompt: the same table in float32. The reference preset (first_option position, the
    refit on a float16 copy) agrees to fp16 rounding: scores that differ in the last fp16 digit swap a few ranks, so
    a query's tau moves by about 1e-3."""
    result = (
        Result.load(saved)
        if preset == "toolkit"
        else compare(
            tiny,
            load_task("synth-sst2"),
            k=6,
            seed=0,
            lr=0.3,
            n_eval=6,
            baselines=("no_training",),
            preset=preset,
            progress=False,
        )
    )
    batched = kendall_table(tiny, result, "gd", n_queries=6)
    monkeypatch.setattr(kendall, "_icl_scores", full_prompt_icl_scores)
    monkeypatch.setattr(kendall, "_finetuned_queries", full_prompt_queries)
    whole = kendall_table(tiny, result, "gd", n_queries=6)
    pd.testing.assert_frame_equal(batched, whole, check_exact=False, rtol=0, atol=1e-9 if preset == "toolkit" else 5e-3)


def test_kendall_measures_dais_own_setting(tiny):
    """The reference preset: first_option position and fp16-mixed finetuning (on a float16 copy)."""
    result = compare(
        tiny, load_task("synth-sst2"), k=6, seed=0, lr=0.3, n_eval=4, baselines=(), preset="reference", progress=False
    )
    assert (result.config["position"], result.config["precision"]) == ("first_option", "fp16-mixed")
    table = kendall_table(tiny, result, "gd", n_queries=3, controls=False)
    assert list(table.subject.unique()) == ["model"] and table.tau.notna().any()


def test_attribute_command_writes_its_tables(tiny, saved, tmp_path, capsys):
    import json

    import pandas as pd

    out = tmp_path / "attribution"
    assert (
        main(
            [
                "attribute",
                str(saved),
                "--out",
                str(out),
                "--kendall-queries",
                "4",
                "--threads",
                "1",
                "--verify-top",
                "3",
            ]
        )
        == 0
    )
    for name in ("heads.csv", "heads.md", "heads.png", "kendall.csv", "kendall.md", "attribution.json"):
        assert (out / name).is_file(), name
    changes = ["logodds_change", "abs_logodds_change", "majority_share_change", "acc_change"]
    patches = ["patch_logodds_change", "patch_restored", "patch_low", "patch_high"]
    heads = pd.read_csv(out / "heads.csv")
    assert list(heads.columns) == [
        "layer",
        "head",
        "method",
        *changes,
        *(c + "_atp" for c in changes),
        *patches,
        "patch_logodds_change_atp",
        "patch_restored_atp",
    ]
    assert set(heads.method) == {"gd", "lcgd"} and len(heads) == 2 * (2 * 4 + 2 + 1)
    single = heads[heads["head"] != "all"]
    assert single.logodds_change_atp.notna().all() and (single.groupby("method").logodds_change.count() == 3).all()
    about = json.loads((out / "attribution.json").read_text())
    assert (about["estimate"], about["verify_top"]) == ("atp+verify", 3)
    assert {entry["heads"] for entry in about["totals"]["agreement"].values()} == {3}
    assert "Spearman's rank correlation between estimate and exact" in (out / "heads.md").read_text()
    paired = pd.read_csv(out / "kendall_paired.csv")
    assert set(paired.baseline) == {"zero_delta", "no_training"} and set(paired.covers) == {"queries"}
    assert "model − control [95 %]" in (out / "kendall.md").read_text() and (out / "kendall_queries.csv").is_file()
    assert about["query_rows"] == list(Result.load(saved).episode.query_rows[:4])

    # pooled over two runs by the kendall verb: intervals over runs and queries
    second, other = tmp_path / "run1", tmp_path / "attribution1"
    compare(
        tiny,
        load_task("synth-sst2"),
        k=6,
        seed=1,
        lr=0.3,
        n_eval=10,
        baselines=("no_training",),
        out=second,
        progress=False,
    )
    assert main(["attribute", str(second), "--out", str(other), "--kendall-queries", "4", "--estimate", "exact"]) == 0
    pooled = tmp_path / "kendall"
    assert main(["kendall", str(out), str(other), "--out", str(pooled)]) == 0
    paired = pd.read_csv(pooled / "kendall_paired.csv")
    assert set(paired.covers) == {"runs and queries"} and set(paired.verdict) == {"too few runs"}
    assert json.loads((pooled / "kendall.json").read_text())["runs"] == 2
    capsys.readouterr()
    assert main(["kendall", str(out), str(out), "--out", str(tmp_path / "k2")]) == 2
    assert "not distinct runs" in capsys.readouterr().err and not (tmp_path / "k2").exists()
    assert "order_ft" in set(paired.measure)  # FT's order tau, paired with the controls'
    queries = pd.read_csv(other / "kendall_queries.csv")  # as attribute wrote it before the order measures
    queries.drop(columns=["order_icl", "order_ft"]).to_csv(other / "kendall_queries.csv", index=False)
    assert main(["kendall", str(out), str(other), "--out", str(tmp_path / "k3")]) == 2
    assert "written before the order measures" in capsys.readouterr().err and not (tmp_path / "k3").exists()

    assert (
        main(
            [
                "attribute",
                str(saved),
                "--out",
                str(out),
                "--kendall-queries",
                "0",
                "--estimate",
                "exact",
                "--function-vectors",
            ]
        )
        == 0
    )
    vectors = pd.read_csv(out / "fv_heads.csv")
    assert len(vectors) == tiny.cfg.n_layers * tiny.cfg.n_heads and vectors.in_vector.sum() == min(10, len(vectors))
    assert len(pd.read_csv(out / "fv_points.csv")) == tiny.cfg.n_layers + 1
    assert "Spearman's rank correlation" in (out / "fv.md").read_text()
    heads = pd.read_csv(out / "heads.csv")  # an earlier attribution is replaced
    assert list(heads.columns) == ["layer", "head", "method", *changes, *patches] and heads[changes].notna().all().all()
    assert heads[heads["head"] != "all"][patches].notna().all().all()
    assert "Every value is exact" in (out / "heads.md").read_text() and not (out / "kendall.csv").exists()

    capsys.readouterr()
    assert main(["attribute", str(saved), "--out", str(tmp_path / "new"), "--verify-top", "0"]) == 2
    assert "verify_top must be at least 1" in capsys.readouterr().err and not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["attribute", str(saved), "--out", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_order_tau_ranks_the_demonstrations_by_their_place():
    """Scores that grow with a demonstration's place give order tau +1 on that side, falling ones −1; the value is
    Kendall's tau of the places against the demonstration-level masses, by hand; kept per query and read back from
    kendall_queries.csv; a table written before the order measures reads back without them, and pools so."""
    groups = np.repeat(np.arange(4), 3)
    rising = np.repeat(np.arange(4.0), 3)
    got = measures(rising, -rising, groups, np.random.default_rng(0))["demonstration"]
    assert (got["order_icl"], got["order_ft"]) == (pytest.approx(1.0), pytest.approx(-1.0))
    rng = np.random.default_rng(3)
    icl, ft = rng.normal(size=12), rng.normal(size=12)
    got = measures(icl, ft, groups, rng)["demonstration"]
    masses = [np.exp(ft[groups == g]).sum() for g in range(4)]  # softmax's denominator does not change the order
    assert got["order_ft"] == pytest.approx(hand_tau(np.arange(4.0), np.array(masses)))
    assert "order_icl" not in measures(icl, ft, groups, rng)["token"]
    values = {name: rng.normal(size=(3, 2)) for name in kendall.PER_QUERY}
    table = queries_table({"model": values, "zero_delta": values})
    back = read_queries_table(table)
    assert set(back["model"]) == set(kendall.PER_QUERY)
    np.testing.assert_allclose(back["zero_delta"]["order_ft"], values["order_ft"])
    older = read_queries_table(table.drop(columns=list(kendall.ORDERS)))
    assert set(older["model"]) == {"tau_token", "tau_demonstration", "recall_token", "recall_demonstration"}
    _, paired = pooled_tables([older, older])
    assert set(paired.measure) == {"tau_token", "tau_demonstration"}
    _, paired = pooled_tables([back, back])
    assert set(paired.measure) == {"tau_token", "tau_demonstration", "order_ft"}
