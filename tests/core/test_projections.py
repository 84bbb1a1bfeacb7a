"""Attention projections laid out once give TransformerLens' own outputs bit for bit, follow in-place edits of the
weights, keep a trained weight's gradient, and are really the path the recording and the fits take."""

import pytest
import torch

from iclgd_lens.backend import BRIDGE
from iclgd_lens.core import projections
from iclgd_lens.core.finetuning import fit
from iclgd_lens.core.methods import MethodContext
from iclgd_lens.core.projections import projections_laid_out_once
from iclgd_lens.core.recording import Prompts, record
from tests.core.test_recording import ARCHS
from tests.helpers import tiny_model

pytestmark = pytest.mark.skipif(BRIDGE, reason="TransformerLens 3's attention projections only")

TOKENS = torch.tensor([[1, 5, 9, 2, 7, 3, 8, 4, 6, 10], [2, 4, 6, 8, 10, 1, 3, 5, 7, 9]])


@torch.no_grad()
def activations(model) -> dict[str, torch.Tensor]:
    logits, cache = model.run_with_cache(
        TOKENS, names_filter=lambda name: name.endswith(("hook_q", "hook_k", "hook_v", "hook_z"))
    )
    return {"logits": logits, **cache}


# (architecture, weights laid out per layer): W_Q, W_K, W_V (grouped-query attention: its unrepeated _W_K and
# _W_V); with `ungroup_grouped_query_attention` W_K and W_V are repeated into a new tensor on every forward, and
# caching them would keep one copy per call (and could match a freed tensor's id): W_Q only.
CASES = {name: (arch, 3) for name, arch in ARCHS.items()} | {
    "llama-like-ungrouped": (ARCHS["llama-like"] | dict(ungroup_grouped_query_attention=True), 1)
}


@pytest.mark.parametrize("arch, per_layer", CASES.values(), ids=CASES.keys())
def test_laid_out_once_is_bit_identical(arch, per_layer):
    model = tiny_model(**arch)
    plain = activations(model)
    with projections_laid_out_once():
        first, again = activations(model), activations(model)  # the second forward reuses the layouts
        laid_out = len(projections._laid_out)
    for name, tensor in plain.items():
        assert torch.equal(first[name], tensor), name
        assert torch.equal(again[name], tensor), name
    assert laid_out == per_layer * model.cfg.n_layers


def test_an_in_place_edit_inside_the_block_is_seen():
    model = tiny_model()
    with projections_laid_out_once():
        activations(model)
        with torch.no_grad():
            model.blocks[1].attn.W_K.mul_(1.5)  # bumps the version counter
            model.blocks[0].attn.b_V.add_(0.25)
        edited = activations(model)
    assert all(torch.equal(edited[name], tensor) for name, tensor in activations(model).items())


def test_a_weight_that_takes_a_gradient_keeps_transformer_lens_path():
    model = tiny_model()

    def gradient() -> torch.Tensor:
        model.zero_grad()
        model(TOKENS, return_type="loss").backward()
        return model.blocks[0].attn.W_Q.grad.clone()

    expected = gradient()
    with projections_laid_out_once():
        assert torch.equal(gradient(), expected)
        assert projections._laid_out == {}  # nothing was cached for weights that take gradients


def test_the_library_is_restored_after_the_block_even_on_an_error():
    from transformer_lens.components import abstract_attention, grouped_query_attention
    from transformer_lens.utilities.attention import simple_attn_linear

    with pytest.raises(RuntimeError), projections_laid_out_once():
        with projections_laid_out_once():  # re-entrant: the inner block shares the outer one's layouts
            assert abstract_attention.simple_attn_linear is not simple_attn_linear
        assert projections._laid_out is not None
        raise RuntimeError("inside")
    assert abstract_attention.simple_attn_linear is simple_attn_linear
    assert grouped_query_attention.simple_attn_linear is simple_attn_linear
    assert projections._laid_out is None


def test_recording_and_fits_run_through_the_laid_out_projections(monkeypatch):
    """Guards the speed-up itself: a TransformerLens release that stopped calling `simple_attn_linear` by its module
    name would leave the recording and the fits on the per-call copy without any test failing otherwise."""
    calls = []
    inner = projections._laid_out_attn_linear

    def counted(*args):
        calls.append(projections._laid_out is not None)
        return inner(*args)

    monkeypatch.setattr(projections, "_laid_out_attn_linear", counted)
    model = tiny_model()
    record(model, Prompts([[5, 6, 7], [8, 9]], [[3], [4]], prefix=[1, 2]))
    assert calls and all(calls)
    calls.clear()
    fit(model, [[5, 6, 7, 3], [8, 9, 4]], 1, MethodContext(1e-2), "lcgd")
    assert calls and all(calls)
