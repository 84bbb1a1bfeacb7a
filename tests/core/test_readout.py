"""`core/readout.py`: the one read-out computes what the model's own forward computes."""

import pytest
import torch

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
