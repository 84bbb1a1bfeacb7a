"""Deltas through hooks equal edited weights and the recorded attention output is the edited model's; update norms
and trained parameters. (GD against plain SGD and LCGD against an explicit per-layer loss: test_finetuning.py.)"""

import copy

import pytest
import torch

from iclgd_lens.core.deltas import PARAMETER_GROUPS, Delta, trained_parameters
from iclgd_lens.core.episodes import build_episode
from iclgd_lens.core.recording import Prompts, derives_attn_out, record
from tests.helpers import GEMMA3_LIKE, assert_float32_close, bias_free, bundled_neox, tiny_model, toy_task

ARCHS = {
    "gpt2-like": dict(),
    "llama-like": dict(
        normalization_type="RMS", positional="rotary", gated_mlp=True, act_fn="silu", n_key_value_heads=2
    ),
    "neox-like": dict(positional="rotary", parallel_attn_mlp=True),
    "gemma3-like": GEMMA3_LIKE,
}


def random_delta(model, groups, scale=0.05, seed=0):
    delta = Delta.zeros(model, trained_parameters(model, groups, biases="all"))
    generator = torch.Generator().manual_seed(seed)
    for t in delta.tensors.values():
        t.copy_(scale * torch.randn(t.shape, generator=generator))
    return delta


def edited_copy(model, delta):
    edited = copy.deepcopy(model)
    params = dict(edited.named_parameters())
    with torch.no_grad():
        for name, change in delta.tensors.items():
            params[name].add_(change)
    return edited


def episode_tokens(model, n=3):
    episode = build_episode(toy_task(), model.tokenizer, model.cfg.n_ctx, k=n, n_eval=2)
    return episode, [torch.tensor([[episode.bos, *d]]) for d in episode.demos]


@pytest.mark.parametrize("arch", [*ARCHS, "tiny-icl-neox"])
@pytest.mark.parametrize("groups", [("k", "v"), ("q",), ("o",), ("mlp",), ("mlp_in",), tuple(PARAMETER_GROUPS)])
def test_hooks_equal_edited_weights(arch, groups):
    model = bundled_neox() if arch == "tiny-icl-neox" else tiny_model(**ARCHS[arch])
    delta = random_delta(model, groups)
    if model.cfg.use_normalization_before_and_after and {"o", "mlp"} & set(groups):
        # No hook point sits between Gemma's attention / MLP output and its post-norm: refused, never misapplied.
        with pytest.raises(ValueError, match="no hook point sits between those outputs and their norms"):
            delta.hooks(model)
        return
    _, batches = episode_tokens(model)
    edited = edited_copy(model, delta)
    for tokens in batches:
        with model.hooks(delta.hooks(model)):
            hooked = model(tokens)
        expected = edited(tokens)
        assert (expected - model(tokens)).abs().max() > 1e-3  # the delta matters
        assert_float32_close(hooked, expected, trained=arch == "tiny-icl-neox")


def test_a_post_mlp_norm_scale_change_through_hooks_equals_the_edited_scale():
    """Gemma's post-MLP norm writes n·w; a change of w (the chained implicit patch's output there) through hooks
    equals the edited weight, with an MLP input change beside it."""
    model = tiny_model(**ARCHS["gemma3-like"])
    generator = torch.Generator().manual_seed(1)
    delta = Delta(
        {
            "blocks.1.ln2_post.w": torch.randn(model.cfg.d_model, generator=generator),
            "blocks.0.mlp.W_in": 0.1 * torch.randn(model.cfg.d_model, model.cfg.d_mlp, generator=generator),
        }
    )
    _, batches = episode_tokens(model)
    edited = edited_copy(model, delta)
    for tokens in batches:
        with model.hooks(delta.hooks(model)):
            hooked = model(tokens)
        assert (edited(tokens) - model(tokens)).abs().max() > 1e-3
        torch.testing.assert_close(hooked, edited(tokens), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS, ids=list(ARCHS))
def test_the_recorded_attention_output_is_the_edited_models(arch):
    """`record` derives attn_out from z, W_O + ΔW_O and b_O + Δb_O (except under Gemma's post-attention norm, where it
    reads the hook): equal to the edited model's own hook_attn_out at the recorded position."""
    model = tiny_model(**ARCHS[arch])
    post_normed = model.cfg.use_normalization_before_and_after
    assert derives_attn_out(model) is not post_normed
    delta = random_delta(model, ("q", "k", "v") if post_normed else tuple(PARAMETER_GROUPS))
    episode, _ = episode_tokens(model)
    recorded = record(model, Prompts.of(episode, episode.icl_prefix), delta)
    edited = edited_copy(model, delta)
    for i, query in enumerate(episode.queries):
        _, cache = edited.run_with_cache(torch.tensor([[*episode.icl_prefix, *query]]))
        expected = torch.stack([cache["attn_out", layer][0, recorded.position[i]] for layer in range(2)])
        torch.testing.assert_close(recorded.attn_out[i], expected, atol=1e-5, rtol=0)


def test_delta_on_a_subset_of_layers():
    model = tiny_model()
    delta = random_delta(model, ("k", "v")).restricted([1])
    assert delta.layers() == [1]
    _, (tokens, *_) = episode_tokens(model)
    with model.hooks(delta.hooks(model)):
        hooked = model(tokens)
    torch.testing.assert_close(hooked, edited_copy(model, delta)(tokens), atol=1e-5, rtol=0)


def test_trained_parameters_keep_the_checkpoints_biases_only():
    assert trained_parameters(tiny_model()) == ("attn.W_K", "attn.b_K", "attn.W_V", "attn.b_V")
    model = bias_free(tiny_model(**ARCHS["llama-like"]))
    assert trained_parameters(model) == ("attn.W_K", "attn.W_V")  # zero biases: the checkpoint has none
    assert trained_parameters(model, ("k", "v"), "all") == ("attn.W_K", "attn.b_K", "attn.W_V", "attn.b_V")
    with torch.no_grad():
        model.blocks[1].attn._b_K[0, 3] = 0.1  # one trained value in one layer: the bias exists
    assert trained_parameters(model) == ("attn.W_K", "attn.b_K", "attn.W_V")
    assert set(Delta.zeros(model, trained_parameters(model)).tensors) == {
        f"blocks.{layer}.attn.{name}" for layer in range(model.cfg.n_layers) for name in ("_W_K", "_b_K", "_W_V")
    }
    # gated: W_gate too; the helper's MLP biases are non-zero, hence the checkpoint's
    assert trained_parameters(model, ("mlp",)) == ("mlp.W_in", "mlp.b_in", "mlp.W_gate", "mlp.W_out", "mlp.b_out")
    assert trained_parameters(model, ("mlp_in",)) == ("mlp.W_in", "mlp.W_gate")  # the input weights alone
    assert trained_parameters(tiny_model(), ("mlp_in",)) == ("mlp.W_in",)  # a plain MLP has no W_gate


def test_update_norms_per_layer_and_parameter():
    model = tiny_model()
    delta = random_delta(model, ("k", "v"))
    norms = delta.norms(model.cfg.n_layers)
    for layer in range(model.cfg.n_layers):
        tensors = [t for n, t in delta.tensors.items() if n.startswith(f"blocks.{layer}.")]
        expected = torch.cat([t.double().flatten() for t in tensors]).norm()
        assert norms["per_layer"][layer] == pytest.approx(float(expected), rel=1e-12)
        assert norms["by_parameter"]["attn.W_K"][layer] == pytest.approx(
            float(delta.tensors[f"blocks.{layer}.attn.W_K"].double().norm()), rel=1e-12
        )
    all_values = torch.cat([t.double().flatten() for t in delta.tensors.values()])
    assert norms["total"] == pytest.approx(float(all_values.norm()), rel=1e-12)


def test_bad_groups_and_parameters_are_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="unknown parameter groups \\['kv'\\]"):
        trained_parameters(model, ["kv"])
    with pytest.raises(ValueError, match="unknown parameters \\['attn.W_k'\\]"):
        Delta.zeros(model, ["attn.W_k"])
