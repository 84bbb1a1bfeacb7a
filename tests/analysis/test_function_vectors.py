"""Function vectors against a constructed model: one head writes the task's direction (its output grows with the
share of "Positive" labels among the tokens it attends to, uniformly), the other writes nothing. On the task
"always answer Positive", with the labels reversed as the corruption, that head ranks first, the function vector is
its mean output, and added to the zero-shot runs it answers the task."""

import dataclasses

import pandas as pd
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from iclgd_lens.analysis.heads.function_vectors import (
    _last_position_run,
    corrupted_demos,
    function_vector,
    function_vector_accuracy,
    indirect_effects,
    ranking_agreement,
)
from iclgd_lens.core.episodes import build_episode
from iclgd_lens.core.recording import PrefixRun
from tests.analysis.test_lenses import ARCHS
from tests.helpers import make_tokenizer, tiny_model, toy_task

POSITIVE, NEGATIVE = 6, 5  # the toy tokenizer's " Positive" and " Negative"


def constructed_model() -> HookedTransformer:
    """One attention-only layer, one-hot embeddings and unembeddings; head 0 attends uniformly and writes
    (#Positive − #Negative) / position along unembed(Positive) − unembed(Negative); head 1 writes nothing."""
    tokenizer = make_tokenizer()
    vocab = len(tokenizer)
    cfg = HookedTransformerConfig(
        n_layers=1,
        d_model=vocab,
        n_heads=2,
        d_head=2,
        d_vocab=vocab,
        n_ctx=256,
        attn_only=True,
        normalization_type=None,
        positional_embedding_type="standard",
        act_fn="relu",
        dtype=torch.float64,
        device="cpu",
    )
    model = HookedTransformer(cfg, tokenizer)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.W_E.copy_(torch.eye(vocab, dtype=torch.float64))
        model.W_U.copy_(torch.eye(vocab, dtype=torch.float64))
        attn = model.blocks[0].attn
        attn.W_V[0, POSITIVE, 0], attn.W_V[0, NEGATIVE, 0] = 1.0, -1.0
        attn.W_O[0, 0, POSITIVE], attn.W_O[0, 0, NEGATIVE] = 20.0, -20.0
    return model


def always_positive_episode(model):
    task = toy_task()
    train = [dict(row, label=1) for row in task.train[:-1]] + [dict(task.train[-1], label=0)]
    positive = dataclasses.replace(
        task, name="always-positive", train=train, eval=[dict(r, label=1) for r in task.eval]
    )
    return build_episode(positive, model.tokenizer, model.cfg.n_ctx, k=8, seed=0, n_eval=6)


def test_the_head_that_writes_the_task_ranks_first_and_its_vector_answers_it():
    model = constructed_model()
    episode = always_positive_episode(model)
    assert set(episode.demo_labels) == {1}
    reversed_demos = corrupted_demos(episode, 0, "reversed")
    assert all(demo[-1] == NEGATIVE for demo in reversed_demos)
    effects, mean_z = indirect_effects(model, episode, seed=0, corruption="reversed", batch_size=4)
    assert effects[0, 0] > 0.5 and effects[0, 1] == 0  # the writing head lifts p(Positive); the other does nothing
    vector, heads = function_vector(model, effects, mean_z, n_heads=1)
    assert heads == [(0, 0)]
    torch.testing.assert_close(vector, mean_z[0, 0] @ model.W_O[0, 0].detach())
    correct = function_vector_accuracy(model, episode, vector, batch_size=4)
    assert correct.shape == (6, 2) and correct.mean() == 1.0  # entering the layer or after it: the task's answer
    without = function_vector_accuracy(model, episode, torch.zeros_like(vector), batch_size=4)
    assert without.mean() == 0.0  # zero-shot alone ties, and the tie goes to class 0 (Negative)


def test_the_shuffled_corruption_permutes_the_shown_labels():
    model = constructed_model()
    episode = build_episode(toy_task(), model.tokenizer, model.cfg.n_ctx, k=10, seed=3, n_eval=2)
    shuffled = corrupted_demos(episode, 3, "shuffled")
    shown = [{POSITIVE: 1, NEGATIVE: 0}[demo[-1]] for demo in shuffled]
    assert sorted(shown) == sorted(episode.demo_labels) and shown != list(episode.demo_labels)
    assert [d[:-1] for d in shuffled] == [d[:-1] for d in episode.demos]


def test_ranking_agreement_by_hand():
    effects = torch.tensor([[0.9, 0.1], [0.5, 0.0]], dtype=torch.float64)
    heads = pd.DataFrame(
        {
            "layer": [0, 0, 1, 1, 0],
            "head": ["0", "1", "0", "1", "all"],
            "method": ["gd"] * 5,
            "abs_logodds_change": [0.2, 0.9, 0.8, 0.1, 5.0],
        }
    )
    row = ranking_agreement(effects, heads, top=2).iloc[0]
    assert row.overlap == 1 and row.chance_overlap == pytest.approx(1.0)  # {(0,0),(1,0)} against {(0,1),(1,0)}
    # ranks (1 = lowest) 4, 2, 3, 1 against 2, 4, 3, 1: Σd² = 8, rho = 1 − 6·8 / (4·15) = 0.2
    assert row.spearman == pytest.approx(0.2) and row.ranked_by == "exact"
    # the default attribution verifies the estimate's top heads only: every head is ranked by its estimate then
    verified = heads.assign(
        abs_logodds_change=[0.2, 0.9, float("nan"), float("nan"), 5.0],
        abs_logodds_change_atp=[0.2, 0.9, 0.8, 0.1, 5.0],
    )
    row = ranking_agreement(effects, verified, top=2).iloc[0]
    assert row.ranked_by == "estimate" and row.overlap == 1 and row.spearman == pytest.approx(0.2)


@pytest.mark.parametrize("arch", [*ARCHS, "alibi"])
def test_the_prefix_cached_runs_equal_whole_prompt_forwards(arch):
    """The demonstrations' keys and values computed once, each batch of queries after them (right-padded, a patch at
    each row's last position): the logits there equal a whole-prompt forward per query with the same patch, and every
    layer's z the unpatched forward's (a run reads z before its own patch)."""
    model = tiny_model(**(dict(positional="alibi") if arch == "alibi" else ARCHS[arch]))
    episode = build_episode(toy_task(), model.tokenizer, model.cfg.n_ctx, k=6, seed=1, n_eval=5)
    value = torch.randn(model.cfg.d_head, generator=torch.Generator().manual_seed(0))

    def patch(rows, last):
        def hook(z, hook):
            z = z.clone()
            z[rows, last, 1] = value
            return z

        return [("blocks.1.attn.hook_z", hook)]

    prefix_run = PrefixRun.of(model, episode.icl_prefix)
    logits, z = _last_position_run(model, prefix_run, episode.queries, patch, batch_size=2)
    unpatched, _ = _last_position_run(model, prefix_run, episode.queries)
    assert not torch.allclose(logits, unpatched, atol=1e-4)  # the patch matters
    for i, query in enumerate(episode.queries):
        whole = torch.tensor([[*episode.icl_prefix, *query]])
        with torch.no_grad(), model.hooks(patch(torch.tensor([0]), torch.tensor([whole.shape[1] - 1]))):
            expected = model(whole)[0, -1].double()
        _, cache = model.run_with_cache(whole, names_filter=lambda name: name.endswith("hook_z"))
        torch.testing.assert_close(logits[i], expected, atol=1e-5, rtol=0)
        for layer in range(model.cfg.n_layers):  # z as the run reads it: before its own patch
            reference = cache[f"blocks.{layer}.attn.hook_z"][0, -1].double()
            torch.testing.assert_close(z[layer][i], reference, atol=1e-5, rtol=0)
