"""`core/hooks.py`: every hook point the toolkit names exists in every layer; parameter names are the model's."""

import pytest

from iclgd_lens.core.hooks import HOOK_POINTS, block_prefix, hook_filter, hook_name, parameter_layer, parameter_name
from tests.core.test_readout import ARCHS
from tests.helpers import tiny_model


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
