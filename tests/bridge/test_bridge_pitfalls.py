"""TransformerLens 4's known pitfalls, pinned where they touch what the toolkit measures (`make test-tl4`):

- position ids under padding (TransformerLens #1609: the bridge once took positions from the token index, not the
  attention mask, so a left-padded row rotated by the wrong angles): the toolkit right-pads; both a right-padded row
  and, on the installed version, a left-padded row with its mask give the unpadded forward's logits;
- compatibility-mode hook aliases on post-norm blocks (#1317: an alias could fire on the tensor before the post-norm):
  on a Gemma-3-shaped checkpoint `hook_attn_out` and `hook_mlp_out`, the names the recording and the lenses read, are
  exactly what each block adds to the residual stream;
- qk-norm (Gemma 3): the bridge's hook_q / hook_k come before it and its config does not say the model has one;
  Kendall's geometry applies transformers' own norm, equal to that module's output in a separately loaded model;
- gradients of z (the review of #1750: `retain_grad` on `hook_z`'s tensor does nothing on the bridge): attribution
  patching never relies on it: it differentiates with respect to a zero added to z in the forward hook, and those
  gradients equal central differences of the bridge's own runs.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from iclgd_lens.backend import BRIDGE
from tests.bridge.test_cross_backend import REFERENCE

pytestmark = pytest.mark.skipif(not BRIDGE, reason="TransformerLens 4 only: make test-tl4")
LLAMA = REFERENCE / "llama-gqa" / "model"  # rotary positions: a wrong position id changes the logits


def test_padding_keeps_each_rows_positions():
    from iclgd_lens import load_model

    model = load_model(LLAMA, device="cpu")
    long, short = [1, 4, 9, 12, 3, 7, 20], [1, 5, 8, 2]
    pad = [0] * (len(long) - len(short))
    with torch.no_grad():
        alone = model(torch.tensor([short]))[0, -1]
        right = model(torch.tensor([long, short + pad]))[1, len(short) - 1]  # the toolkit's batching
        mask = torch.tensor([[1] * len(long), [0] * len(pad) + [1] * len(short)])
        left = model(torch.tensor([long, pad + short]), attention_mask=mask)[1, -1]
        shifted = model(torch.tensor([pad + short]))[0, -1]  # left padding without a mask: other positions
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    assert (shifted - alone).abs().max() > 1e-3  # the positions matter on this model, so the checks above can fail


@pytest.fixture(scope="module")
def gemma3_folder(tmp_path_factory):
    """A tiny Gemma 3 checkpoint (pre- and post-norms with non-trivial scales, qk-norm, one key-value head, a
    4-token sliding window) written by the installed transformers, with the Llama reference's tokenizer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=8, max_position_embeddings=128,
                              sliding_window=4, layer_types=["sliding_attention", "full_attention"])  # fmt: skip
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("gemma3")
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(LLAMA / name, folder)
    return folder


def test_the_hook_names_the_toolkit_reads_are_what_each_block_adds_after_its_post_norms(gemma3_folder):
    from iclgd_lens import load_model
    from iclgd_lens.core.hooks import hook_name

    model = load_model(gemma3_folder, device="cpu")
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([[1, 4, 9, 12, 3, 7, 20, 5]]))
    for layer in range(model.cfg.n_layers):
        pre, mid, post = (cache[hook_name(f"resid_{p}", layer)] for p in ("pre", "mid", "post"))
        torch.testing.assert_close(cache[hook_name("attn_out", layer)], mid - pre, atol=1e-5, rtol=0)
        torch.testing.assert_close(cache[hook_name("mlp_out", layer)], post - mid, atol=1e-5, rtol=0)
        # the post-norm changes the output: reading before it would differ
        assert (cache[f"blocks.{layer}.ln1_post.hook_in"] - (mid - pre)).abs().max() > 1e-3


def test_kendall_reads_queries_and_keys_after_gemmas_qk_norm(gemma3_folder):
    """The bridge's hook_q / hook_k are q_proj's and k_proj's outputs, before Gemma's qk-norm, and its config says
    no qk-norm: Kendall's `content` applies transformers' own norm, and equals what a separately loaded
    transformers model's q_norm / k_norm output (captured by forward hooks on those modules)."""
    from transformers import AutoModelForCausalLM

    from iclgd_lens import load_model
    from iclgd_lens.analysis.heads.kendall import content
    from iclgd_lens.core.hooks import hook_name

    model = load_model(gemma3_folder, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(gemma3_folder, local_files_only=True).eval()
    tokens = torch.tensor([[1, 4, 9, 12, 3, 7, 20, 5]])
    normed = {}
    for layer, block in enumerate(hf.model.layers):
        for kind in ("q", "k"):
            norm = getattr(block.self_attn, f"{kind}_norm")
            norm.register_forward_hook(lambda module, args, out, key=(layer, kind): normed.__setitem__(key, out))
    with torch.no_grad():
        hf(tokens)
        _, cache = model.run_with_cache(tokens)
    for layer in range(model.cfg.n_layers):
        for kind in ("q", "k"):
            raw = cache[hook_name(kind, layer)][0]  # [pos, head, d_head]
            expected = normed[layer, kind][0].transpose(0, 1)  # transformers normalises [head, pos, d_head]
            assert (raw - expected).abs().max() > 1e-3  # the norm matters here
            torch.testing.assert_close(content(model, layer, raw, kind), expected, atol=1e-5, rtol=0)


def test_attribution_gradients_of_z_equal_central_differences_on_the_bridge():
    from iclgd_lens import compare, load_model
    from tests.helpers import check_estimate_is_the_derivative, toy_task

    model = load_model(LLAMA, device="cpu")
    episode = compare(model, toy_task(), k=4, n_eval=4, baselines=(), methods=("gd",), progress=False).episode
    check_estimate_is_the_derivative(model, episode)


def test_attribution_patching_agrees_with_transformer_lens_node_scores():
    """Where both apply (one head's z replaced by another prompt's of the same length, the metric a class-logit
    contrast at the prediction position), the toolkit's first-order estimate per head is TransformerLens 4's
    node-level attribution patching (`attn_head_out` nodes, summed over positions): both are (z_clean − z_corrupt)
    · ∂metric/∂z on the corrupt run."""
    import dataclasses

    from transformer_lens.tools.analysis.attribution_patching import Node, attribution_patch

    from iclgd_lens import load_model
    from iclgd_lens.core.episodes import build_episode
    from iclgd_lens.core.hooks import hook_name
    from iclgd_lens.core.zs_batch import ZSBatch
    from tests.helpers import toy_task

    model = load_model(LLAMA, device="cpu")
    episode = build_episode(toy_task(), model.tokenizer, model.cfg.n_ctx, k=2, n_eval=2)
    clean, corrupt = (3, 9, 14, 22, 6), (3, 11, 17, 25, 6)  # same length: positions align
    episode = dataclasses.replace(episode, queries=(corrupt,), labels=(0,))
    firsts = [tokens[0] for tokens in episode.label_tokens]
    batch = ZSBatch(model, episode, [0], gradients=True)
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([[episode.bos, *clean]]))

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits.reshape(-1, logits.shape[-2], logits.shape[-1])[0, -1]
        return last[firsts[1]] - last[firsts[0]]

    scores = attribution_patch(model, torch.tensor([[episode.bos, *clean]]), torch.tensor([[episode.bos, *corrupt]]),
                               metric).node_scores  # fmt: skip
    for layer in range(model.cfg.n_layers):
        terms = batch.estimate(layer, cache[hook_name("z", layer)].to(batch.z[layer].dtype))  # [head, batch, class]
        ours = (terms[..., 1] - terms[..., 0])[:, 0]
        theirs = torch.tensor([sum(score for node, score in scores.items()
                                   if node.kind == "attn_head_out" and node.layer == layer and node.head == head)
                               for head in range(model.cfg.n_heads)])  # fmt: skip
        assert Node("attn_head_out", 1, layer, 0) in scores
        torch.testing.assert_close(ours.double(), theirs.double(), atol=1e-4 * float(theirs.abs().max()), rtol=0)
        assert theirs.abs().max() > 1e-4


def test_the_prefix_runs_once_and_its_cache_respects_a_sliding_window(gemma3_folder):
    """The recording's shared prefix on the bridge (transformers' own cache, copied per batch): on Gemma 3 with a
    4-token sliding window and a 14-token prefix, every recorded activation and label log-probability equals one
    whole-prompt forward per query, and the first block sees the prefix once and then the queries alone."""
    from iclgd_lens import Prompts, load_model, record

    model = load_model(gemma3_folder, device="cpu")
    prefix = [1, 4, 9, 12, 3, 7, 20, 5, 31, 17, 8, 40, 2, 11]
    queries, labels = [[6, 13, 21], [15, 22], [30, 33, 19, 27]], [[10], [14, 23]]
    seen = []
    with model.hooks([("blocks.0.hook_resid_pre", lambda t, hook: seen.append(t.shape[1]))]):
        rec = record(model, Prompts(queries, labels, prefix), batch_size=2)
    assert seen[0] == len(prefix) and max(seen[1:]) <= max(len(q) + 1 for q in queries), seen
    for i, query in enumerate(queries):
        tokens = torch.tensor([prefix + query])
        at = len(prefix) + len(query) - 1
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens)
            logits = model(torch.tensor([prefix + query + labels[1]]))[0].log_softmax(-1)
        for layer in range(model.cfg.n_layers):
            torch.testing.assert_close(
                rec.attn_out[i, layer], cache[f"blocks.{layer}.hook_attn_out"][0, at], atol=1e-5, rtol=0
            )
            scores = cache[f"blocks.{layer}.attn.hook_attn_scores"][0, :, at, len(prefix) : at + 1]
            torch.testing.assert_close(rec.scores[i, layer, :, : len(query)], scores, atol=1e-5, rtol=0)
        expected = torch.stack([logits[at + j, t] for j, t in enumerate(labels[1])]).mean()
        torch.testing.assert_close(rec.label_logprobs[i, 1], expected, atol=1e-5, rtol=0)


def test_a_cache_the_model_drops_is_refused(monkeypatch):
    """transformers 5.25 drops the key-value cache TransformerLens 4.3's bridge passes to GPT-2 and Llama models
    (renamed `cache`): the prefix run checks that the cache holds the prefix and refuses with the fix otherwise."""
    from iclgd_lens import load_model
    from iclgd_lens.core import recording

    model = load_model(LLAMA, device="cpu")
    assert recording.PrefixRun.of(model, [1, 4, 9]).cache.get_seq_length() == 3  # the installed versions fill it
    monkeypatch.setattr(recording, "final_residual", lambda model, tokens, **kwargs: None)  # as 5.25 does
    with pytest.raises(RuntimeError, match=r"0 of 3 prefix tokens.*transformers>=5.9,<5.24"):
        recording.PrefixRun.of(model, [1, 4, 9])
