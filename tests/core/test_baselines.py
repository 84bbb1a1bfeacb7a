"""The untrained baselines: which parameters each keeps, seeded draws, and the fairseq init's bounds."""

import math

import pytest
import torch

from iclgd_lens.core.baselines import untrained_copy
from tests.helpers import tiny_model


def test_no_training_baseline_reinitialises_every_weight():
    model = tiny_model()
    fresh = untrained_copy(model, "no_training", seed=1)
    again = untrained_copy(model, "no_training", seed=1)
    other = untrained_copy(model, "no_training", seed=2)
    trained = dict(model.named_parameters())
    for name, p in fresh.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        torch.testing.assert_close(p, dict(again.named_parameters())[name])  # seeded
        if leaf.startswith("W_"):
            assert not torch.equal(p, trained[name]) and not torch.equal(p, dict(other.named_parameters())[name])
            assert p.std() > 0
        else:
            assert torch.equal(p, torch.ones_like(p) if leaf == "w" else torch.zeros_like(p)), name
    # the trained model is untouched and the global RNG state is restored
    torch.testing.assert_close(dict(tiny_model().named_parameters())["blocks.0.attn.W_K"], trained["blocks.0.attn.W_K"])


def test_trained_embeddings_baseline_keeps_embeddings_norms_and_unembedding():
    model = tiny_model()
    fresh = untrained_copy(model, "trained_embeddings", seed=1)
    trained = dict(model.named_parameters())
    kept = {"embed.W_E", "pos_embed.W_pos", "unembed.W_U", "unembed.b_U", "ln_final.w", "ln_final.b"}
    kept |= {f"blocks.{l}.{ln}.{p}" for l in range(2) for ln in ("ln1", "ln2") for p in "wb"}
    for name, p in fresh.named_parameters():
        assert torch.equal(p, trained[name]) == (name in kept), name
    with pytest.raises(ValueError, match="unknown baseline"):
        untrained_copy(model, "random", seed=0)


@pytest.mark.parametrize("init", ["transformer_lens", "fairseq"])
def test_trained_norms_baseline_keeps_norms_only(init):
    model = tiny_model()
    fresh = untrained_copy(model, "trained_norms", seed=1, init=init)
    trained = dict(model.named_parameters())
    for name, p in fresh.named_parameters():
        is_norm = name.rsplit(".", 1)[-1] in ("w", "b")
        assert torch.equal(p, trained[name]) == is_norm, name


def test_fairseq_init_follows_the_reference_scheme():
    model = tiny_model(d_model=64, n_heads=4, d_head=16, d_mlp=256)
    fresh = {n: p.detach() for n, p in untrained_copy(model, "no_training", seed=0, init="fairseq").named_parameters()}
    d, d_mlp = 64, 256

    def uniform_bound(name):  # a U(-b, b) sample: max |x| just below b, std b / sqrt(3)
        x = fresh[name].detach()
        return float(x.abs().max()), float(x.std() * math.sqrt(3))

    def xavier(fan_in, fan_out, gain):
        return gain * math.sqrt(6 / (fan_in + fan_out))

    expectations = {
        "blocks.0.attn.W_Q": xavier(d, d, 2**-0.5),
        "blocks.1.attn.W_V": xavier(d, d, 2**-0.5),
        "blocks.0.attn.W_O": xavier(d, d, 1.0),
        "blocks.0.mlp.W_in": d**-0.5,
        "blocks.0.mlp.W_out": d_mlp**-0.5,
        "blocks.0.attn.b_K": d**-0.5,
        "blocks.0.mlp.b_out": d_mlp**-0.5,
    }
    for name, bound in expectations.items():
        largest, spread = uniform_bound(name)
        assert largest <= bound and largest > 0.9 * bound and spread == pytest.approx(bound, rel=0.1), name
    assert torch.equal(fresh["blocks.0.attn.b_O"], torch.zeros_like(fresh["blocks.0.attn.b_O"]))
    assert float(fresh["embed.W_E"].std()) == pytest.approx(d**-0.5, rel=0.1)
    assert torch.equal(fresh["blocks.0.ln1.w"], torch.ones(d))
