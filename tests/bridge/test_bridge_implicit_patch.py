"""The chained implicit patch on TransformerLens 4 (TransformerBridge), against independent computations on the tiny
Hugging Face checkpoints of tests/bridge/reference: the zero-shot run under every layer's patch gives ICL's logits at
the query, through the bridge's hooks and through transformers' own MLP weights edited by hand (in each layout); the
unchained per-layer patches do not. tests/analysis/test_implicit_patch.py proves the same on HookedTransformer in
float64; test_cross_backend.py compares the two backends' patches."""

from __future__ import annotations

import pytest
import torch

from iclgd_lens.backend import BRIDGE
from tests.bridge.test_bridge import bridge, edited
from tests.bridge.test_cross_backend import CHECKPOINTS, model_folder
from tests.helpers import toy_task

pytestmark = pytest.mark.skipif(not BRIDGE, reason="TransformerLens 4 only: make test-tl4")


def relative_gap(logits: torch.Tensor, target: torch.Tensor) -> float:
    return float((logits - target).abs().max() / target.abs().max())


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_the_chained_patch_gives_icl_logits_through_hooks_and_edited_weights(checkpoint):
    from iclgd_lens import build_episode
    from iclgd_lens.analysis.lenses.implicit_patch import as_delta, chained_patch, icl_targets

    folder = model_folder(checkpoint)
    model = bridge(folder)
    episode = build_episode(toy_task(), model.tokenizer, model.cfg.n_ctx, k=6, seed=2, n_eval=4)
    for query in (0, 3):
        icl, zs = [*episode.icl_prefix, *episode.queries[query]], [episode.bos, *episode.queries[query]]
        target = icl_targets(model, icl)["logits"]
        patches, logits = chained_patch(model, icl, zs)
        assert relative_gap(logits, target) < 1e-5  # float32 checkpoints
        with torch.no_grad():
            weights = as_delta(model, {layer: patch.materialise() for layer, patch in enumerate(patches)})
            plain = edited(folder, weights)(torch.tensor([zs])).logits[0, -1].double()
        assert relative_gap(plain, target) < 1e-5
        _, unchained = chained_patch(model, icl, zs, chained=False)
        assert relative_gap(unchained, target) > 1e-3
        with torch.no_grad():
            assert relative_gap(model(torch.tensor([zs]))[0, -1].double(), target) > 1e-3  # the context matters
    assert all(not p.a for p in patches) == model.cfg.parallel_attn_mlp  # NeoX's parallel blocks: no input patch
