"""The untrained baselines on TransformerLens 4 (`make test-tl4`), against HookedTransformer's definition: which
parameters each keeps is decided on transformers' modules and checked here against HookedTransformer's own
classification of the same parameters by name (core.baselines' _is_norm / _is_embedding_or_norm); the re-drawn
matrices have 3.x's scale, the biases are 0, every norm is neutral, the draw is seeded, and the model is untouched;
the float16 copy fp16-mixed training runs on holds the model's weights."""

from __future__ import annotations

import math

import pytest
import torch

from iclgd_lens.backend import BRIDGE
from tests.bridge.test_cross_backend import ARCHITECTURES, REFERENCE

pytestmark = pytest.mark.skipif(not BRIDGE, reason="TransformerLens 4 only: make test-tl4")
BASELINES = ("no_training", "trained_norms", "trained_embeddings")


@pytest.fixture(params=ARCHITECTURES, scope="module")
def model(request):
    from iclgd_lens import load_model

    return load_model(REFERENCE / request.param / "model", device="cpu")


def tl_parameters(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.tl_parameters().items()}


@pytest.mark.parametrize("baseline", BASELINES)
def test_keeps_what_hooked_transformer_keeps_and_redraws_the_rest(model, baseline):
    from iclgd_lens.core.baselines import _is_embedding_or_norm, _is_norm, untrained_copy

    trained = tl_parameters(model)
    fresh = tl_parameters(untrained_copy(model, baseline, seed=3))
    keeps = {"no_training": lambda name: False, "trained_norms": _is_norm, "trained_embeddings": _is_embedding_or_norm}[
        baseline
    ]
    scale = 0.8 / math.sqrt(model.cfg.d_model)  # HookedTransformer's default for GPT-2, Llama and GPT-NeoX configs
    assert set(fresh) == set(trained)
    for name, tensor in fresh.items():
        leaf = name.rsplit(".", 1)[-1]
        if keeps(name):
            assert torch.equal(tensor, trained[name]), name
        elif leaf.startswith("W_"):
            assert not torch.equal(tensor, trained[name]), name
            assert abs(float(tensor.std()) / scale - 1) < 0.15, (
                f"{name}: std {float(tensor.std()):.3f}, not {scale:.3f}"
            )
        else:  # biases 0 and norm gains 1, as HookedTransformer's init_weights leaves them
            assert torch.equal(tensor, torch.full_like(tensor, 1.0 if leaf == "w" else 0.0)), name


def test_output_embedding_drawn_apart_from_the_input_one(model):
    from iclgd_lens.core.baselines import untrained_copy

    fresh = tl_parameters(untrained_copy(model, "no_training", seed=3))
    assert not torch.allclose(fresh["unembed.W_U"], fresh["embed.W_E"].T)


def test_norms_are_neutral_on_transformers_modules(model):
    """Every normalisation module of a no_training copy returns its input normalised and unscaled."""
    from iclgd_lens.core.baselines import untrained_copy

    fresh = untrained_copy(model, "no_training", seed=3).original_model
    x = torch.randn(3, model.cfg.d_model) * 5 + 2
    norms = [m for m in fresh.modules() if "norm" in type(m).__name__.lower() and list(m.parameters(recurse=False))]
    assert norms
    for norm in norms:
        centred = isinstance(norm, torch.nn.LayerNorm)
        expected = (x - x.mean(-1, keepdim=True)) if centred else x
        expected = expected / expected.pow(2).mean(-1, keepdim=True).add(norm.eps if centred else 0).sqrt()
        with torch.no_grad():
            assert torch.allclose(norm(x), expected, atol=1e-4), type(norm).__name__


def test_seeded_and_the_model_untouched(model):
    from iclgd_lens.core.baselines import untrained_copy

    before = tl_parameters(model)
    first, again = (tl_parameters(untrained_copy(model, "trained_norms", seed=3)) for _ in range(2))
    other = tl_parameters(untrained_copy(model, "trained_norms", seed=4))
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["blocks.0.attn.W_Q"], other["blocks.0.attn.W_Q"])
    assert all(torch.equal(before[name], tensor) for name, tensor in tl_parameters(model).items())


def test_fairseq_init_draws_the_references_distributions(model):
    """Read back in TransformerLens' layout, every parameter of a fairseq baseline has the distribution
    `_fairseq_init` gives its HookedTransformer twin: Q/K/V and W_O xavier-uniform (bound reached, std bound/√3),
    MLP matrices and biases U(±1/√fan_in), b_O 0, embeddings N(0, 1/d_model), the unembedding tied where the
    checkpoint ties it, norms neutral; seeded."""
    from iclgd_lens.core.baselines import untrained_copy

    cfg = model.cfg
    d, heads = cfg.d_model, cfg.n_heads * cfg.d_head
    kv = (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head
    bounds = {"W_Q": 2**-0.5 * math.sqrt(6 / (d + heads)), "W_O": math.sqrt(6 / (heads + d))}
    bounds |= {"W_K": 2**-0.5 * math.sqrt(6 / (d + kv)), "W_V": 2**-0.5 * math.sqrt(6 / (d + kv))}
    bounds |= {"W_in": d**-0.5, "W_gate": d**-0.5, "W_out": cfg.d_mlp**-0.5, "b_in": d**-0.5, "b_out": cfg.d_mlp**-0.5}
    bounds |= {"b_Q": d**-0.5, "b_K": d**-0.5, "b_V": d**-0.5}
    fresh = tl_parameters(untrained_copy(model, "no_training", seed=3, init="fairseq"))
    trained = tl_parameters(model)
    assert not torch.equal(
        fresh["blocks.0.attn.W_Q"],
        tl_parameters(untrained_copy(model, "no_training", 4, "fairseq"))["blocks.0.attn.W_Q"],
    )
    for name, tensor in fresh.items():
        leaf = name.rsplit(".", 1)[-1].lstrip("_")
        if leaf in bounds and (tensor != 0).any():  # a bias the checkpoint lacks stays zero
            bound = bounds[leaf]
            assert tensor.abs().max() <= bound * (1 + 1e-6), name
            if tensor.numel() >= 256:
                assert tensor.abs().max() > 0.9 * bound and abs(tensor.std() / (bound / math.sqrt(3)) - 1) < 0.2, name
        elif leaf in ("W_E", "W_pos") or (
            leaf == "W_U" and not torch.equal(trained["unembed.W_U"], trained["embed.W_E"].T)
        ):
            assert abs(tensor.std() * math.sqrt(d) - 1) < 0.2, name
        elif leaf == "W_U":
            assert torch.equal(tensor, fresh["embed.W_E"].T)
        elif leaf == "w":
            assert bool((tensor == 1).all()), name
        else:
            assert bool((tensor == 0).all()), name  # b_O, norm biases, b_U


def test_half_copy_holds_the_weights_in_float16(model):
    from iclgd_lens.core.baselines import half_copy

    before = tl_parameters(model)
    half = tl_parameters(half_copy(model))
    assert set(half) == set(before)
    assert all(torch.equal(before[name].half(), tensor) for name, tensor in half.items())
    assert all(torch.equal(before[name], tensor) for name, tensor in tl_parameters(model).items())
