"""The one read-out computes what the model's own forward computes; every hook point the toolkit names exists."""

import pytest
import torch

from iclgd_lens.core.hooks import HOOK_POINTS, block_prefix, hook_filter, hook_name, parameter_layer, parameter_name
from iclgd_lens.core.readout import Readout
from tests.helpers import tiny_model

ARCHS = {
    "gpt2-like": dict(),
    "llama-like": dict(
        normalization_type="RMS", positional="rotary", gated_mlp=True, act_fn="silu", n_key_value_heads=2
    ),
    "neox-like": dict(positional="rotary", parallel_attn_mlp=True),
    "no-final-norm": dict(normalization_type=None),
}


@pytest.mark.parametrize("arch", ARCHS, ids=list(ARCHS))
def test_readout_of_the_last_residual_is_bit_identical_to_the_forward(arch):
    """GD's loss reads logits through Readout: they must be model(tokens), to the bit. At this width and vocabulary
    `resid @ W_U + b_U`, the same product by another kernel, already differs in the last bits on CPU."""
    model = tiny_model(**ARCHS[arch], d_model=256, d_head=64, d_mlp=256, d_vocab=4096)
    tokens = torch.randint(2, model.cfg.d_vocab, (3, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(tokens)
        resid = model(tokens, stop_at_layer=model.cfg.n_layers)
        assert torch.equal(Readout(model)(resid), expected)


def test_readout_of_stacked_layers_equals_one_readout_per_layer():
    """LCGD reads every layer's exit in one call: the same numbers as one read-out per layer."""
    model = tiny_model()
    resid = torch.randn(model.cfg.n_layers, 2, 5, model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    readout = Readout(model)
    with torch.no_grad():
        stacked = readout(resid)
        for layer in range(model.cfg.n_layers):
            torch.testing.assert_close(stacked[layer], readout(resid[layer]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS, ids=list(ARCHS))
def test_every_hook_point_exists_in_every_layer(arch):
    """Pins the backend names the toolkit relies on (TransformerLens 3's HookedTransformer)."""
    model = tiny_model(**ARCHS[arch])
    names = set(model.hook_dict)
    # Points the toolkit reads only where the architecture has them: a gated MLP's linear branch, and the residual
    # between attention and MLP (absent where they run in parallel, whose MLP reads the block input).
    absent = {"mlp_pre_linear"} if not model.cfg.gated_mlp else set()
    absent |= {"resid_mid"} if model.cfg.parallel_attn_mlp else set()
    for point, template in HOOK_POINTS.items():
        if "{layer}" not in template or point in absent:
            continue
        for layer in range(model.cfg.n_layers):
            assert hook_name(point, layer) in names, (point, layer)
    if model.cfg.positional_embedding_type == "standard":  # learned absolute positions
        assert hook_name("pos_embed") in names
    assert [n for n in model.hook_dict if hook_filter("z")(n)] == [hook_name("z", l) for l in range(model.cfg.n_layers)]
    with pytest.raises(KeyError, match="unknown hook point 'zz'"):
        hook_name("zz", 0)


def test_parameter_names_are_the_models_own():
    model = tiny_model()
    params = dict(model.named_parameters())
    for layer in range(model.cfg.n_layers):
        for local in ("attn.W_K", "attn.b_V", "attn.W_O", "mlp.W_in", "ln1.w"):
            assert parameter_name(local, layer) in params
            assert parameter_layer(parameter_name(local, layer)) == layer
        assert all(n.startswith(block_prefix(layer)) == (parameter_layer(n) == layer) for n in params if "blocks" in n)
