"""The cached-prefix, right-padded, batched recording equals a plain full forward of each whole prompt."""

import pytest
import torch

from iclgd_lens.core.episodes import build_episode
from iclgd_lens.core.recording import Prompts, record, record_offset
from iclgd_lens.core.shared_prefix import shared_prefix_supported
from tests.helpers import GEMMA3_LIKE, assert_float32_close, bundled_neox, tiny_model, toy_task


def full_forward_reference(model, prefix, query, label_tokens, position):
    """Independent computation: one whole prompt at a time through run_with_cache, no KV cache, no padding."""
    offset = record_offset(query, label_tokens, position)
    at = len(prefix) + offset
    out = {"attn_out": [], "z": [], "scores": []}
    logprobs = []
    for c, label in enumerate(label_tokens):
        tokens = torch.tensor([[*prefix, *query, *label]])
        logits, cache = model.run_with_cache(tokens)
        lp = logits[0].log_softmax(-1)
        logprobs.append(torch.stack([lp[len(prefix) + len(query) - 1 + j, t] for j, t in enumerate(label)]).mean())
        if c == 0:
            for l in range(model.cfg.n_layers):
                out["attn_out"].append(cache[f"blocks.{l}.hook_attn_out"][0, at])
                out["z"].append(cache[f"blocks.{l}.attn.hook_z"][0, at])
                out["scores"].append(_reference_scores(model, cache, l, at, len(prefix)))
    return {k: torch.stack(v) for k, v in out.items()}, torch.stack(logprobs), at


def _reference_scores(model, cache, layer, at, start):
    """Pre-softmax scores of position `at` to keys start..at; for ALiBi rebuilt from q, k and the bias
    slope_h·(key - query) (slopes 2^(-8(h+1)/n_heads)), not read from TransformerLens, whose cached ALiBi bias
    is shifted by a per-query constant that depends on earlier calls."""
    if model.cfg.positional_embedding_type != "alibi":
        return cache[f"blocks.{layer}.attn.hook_attn_scores"][0, :, at, start : at + 1]
    q = cache[f"blocks.{layer}.attn.hook_q"][0, at]  # [head, d_head]
    k = cache[f"blocks.{layer}.attn.hook_k"][0, start : at + 1]  # [key, head, d_head]
    n = model.cfg.n_heads
    slopes = torch.tensor([2.0 ** (-8 * (h + 1) / n) for h in range(n)])
    distance = torch.arange(start, at + 1) - at
    return torch.einsum("hd,khd->hk", q, k) / model.cfg.d_head**0.5 + slopes[:, None] * distance[None, :]


ARCHS = {
    "gpt2-like": dict(),
    "llama-like": dict(
        normalization_type="RMS", positional="rotary", gated_mlp=True, act_fn="silu", n_key_value_heads=2
    ),
    "alibi": dict(positional="alibi"),  # the bundled tiny-icl's position scheme (and Bloom's)
    "gemma3-like": GEMMA3_LIKE,  # prompts longer than its sliding window: the cached prefix must honour the window
    # per-head results (use_attn_result) are not reproduced by shared_prefix: TransformerLens' forward on the
    # broadcast cache
    "fallback": dict(normalization_type="RMS", positional="rotary", n_key_value_heads=2, use_attn_result=True),
}


@pytest.mark.parametrize("position", ["prediction", "first_option"])
@pytest.mark.parametrize("arch", [*ARCHS.values(), "tiny-icl-neox"], ids=[*ARCHS.keys(), "tiny-icl-neox"])
def test_cached_icl_equals_full_forward(position, arch):
    model = bundled_neox() if arch == "tiny-icl-neox" else tiny_model(**arch)
    # Multi-token labels exercise the per-class rows and the mean log-prob.
    task = toy_task(labels=("Negative", "Positive Mixed"))
    episode = build_episode(task, model.tokenizer, model.cfg.n_ctx, k=6, n_eval=7)
    for prefix in (episode.icl_prefix, episode.zs_prefix):
        rec = record(model, Prompts(episode.queries, episode.label_tokens, prefix, position, pad_token=5), batch_size=3)
        for i, query in enumerate(episode.queries):
            ref, logprobs, at = full_forward_reference(model, prefix, query, episode.label_tokens, position)
            n = int(rec.query_len[i])
            assert n == at - len(prefix) + 1
            assert int(rec.position[i]) == at
            assert_float32_close(rec.attn_out[i], ref["attn_out"], trained=arch == "tiny-icl-neox")
            assert_float32_close(rec.z[i], ref["z"], trained=arch == "tiny-icl-neox")
            assert_float32_close(rec.scores[i, :, :, :n], ref["scores"], trained=arch == "tiny-icl-neox")
            assert (rec.scores[i, :, :, n:] == 0).all()
            assert_float32_close(rec.label_logprobs[i], logprobs, trained=arch == "tiny-icl-neox")


def test_batching_and_order_do_not_change_records():
    model = tiny_model()
    episode = build_episode(toy_task(), model.tokenizer, model.cfg.n_ctx, k=4, n_eval=9)
    one = record(model, Prompts.of(episode, episode.icl_prefix), batch_size=1)
    many = record(model, Prompts.of(episode, episode.icl_prefix), batch_size=4)
    for name, tensor in one.tensors().items():
        torch.testing.assert_close(tensor, many.tensors()[name], atol=1e-5, rtol=0)


def test_icl_changes_what_is_recorded():
    """Guard against a prefix silently ignored: ICL and ZS records must differ."""
    model = tiny_model()
    episode = build_episode(toy_task(), model.tokenizer, model.cfg.n_ctx, k=4, n_eval=3)
    zs = record(model, Prompts.of(episode, episode.zs_prefix))
    icl = record(model, Prompts.of(episode, episode.icl_prefix))
    assert (zs.attn_out - icl.attn_out).abs().max() > 1e-3


def test_a_qk_norm_over_the_whole_projection_keeps_transformerlens_forward():
    """OLMo 2's qk-norm (all heads' queries normalised together) is not the per-head one the shared prefix computes,
    so such a model falls back to TransformerLens' own forward."""
    model = tiny_model(**GEMMA3_LIKE)
    assert shared_prefix_supported(model)
    model.cfg.original_architecture = "Olmo2ForCausalLM"
    assert not shared_prefix_supported(model)


@pytest.mark.parametrize("name", ARCHS)
def test_each_architecture_takes_the_path_it_is_tested_on(name, monkeypatch):
    """The shared-prefix attention serves every architecture above but the fallback: TransformerLens' own forward
    runs for the prefix only (one call per layer), never for the query batches; the fallback runs it for both."""
    from transformer_lens.components.abstract_attention import AbstractAttention

    model = tiny_model(**ARCHS[name])
    assert shared_prefix_supported(model) == (name != "fallback")
    own_forward, calls = AbstractAttention.forward, []

    def counted(self, *args, **kwargs):
        calls.append(1)
        return own_forward(self, *args, **kwargs)

    monkeypatch.setattr(AbstractAttention, "forward", counted)
    episode = build_episode(toy_task(), model.tokenizer, model.cfg.n_ctx, k=4, n_eval=6)
    record(model, Prompts.of(episode, episode.icl_prefix), batch_size=3)
    batches = 2
    assert len(calls) == model.cfg.n_layers * (1 if name != "fallback" else 1 + batches)
    assert not any("forward" in vars(block.attn) for block in model.blocks)  # TransformerLens' forward restored
