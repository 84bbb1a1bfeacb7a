"""The chained implicit patch against independent computations: the zero-shot forward under every layer's patch
gives ICL's logits at the query (float64, 1e-8), through hooks and through weights edited by hand; the unchained
per-layer patches do not."""

import copy

import pytest
import torch

from iclgd_lens.analysis.implicit_patch import chained_patch, icl_targets
from iclgd_lens.core.episodes import build_episode
from tests.analysis.test_lenses import ARCHS
from tests.helpers import make_tokenizer, tiny_model, toy_task


def prompts(model, query: int = 0) -> tuple[list[int], list[int]]:
    episode = build_episode(toy_task(), make_tokenizer(), model.cfg.n_ctx, k=6, seed=2, n_eval=4)
    return [*episode.icl_prefix, *episode.queries[query]], [episode.bos, *episode.queries[query]]


def relative_gap(logits: torch.Tensor, target: torch.Tensor) -> float:
    return float((logits - target).detach().abs().max() / target.detach().abs().max())


def edited(model, patches):
    """A copy of the model with every layer's materialised patch added to its weights."""
    copy_ = copy.deepcopy(model)
    with torch.no_grad():
        for layer, patch in enumerate(patches):
            block = copy_.blocks[layer]
            for name, change in patch.materialise().items():
                module, weight = name.split(".")
                parameter = getattr(getattr(block, module), weight)
                parameter += change.to(parameter.dtype)
    return copy_


@pytest.mark.parametrize("arch", ARCHS, ids=list(ARCHS))
def test_the_chained_patch_reproduces_icl_and_the_unchained_one_does_not(arch):
    model = tiny_model(dtype=torch.float64, **ARCHS[arch])
    for query in (0, 3):
        icl, zs = prompts(model, query)
        target = icl_targets(model, icl)["logits"]
        patches, logits = chained_patch(model, icl, zs)
        assert relative_gap(logits, target) < 1e-8
        # the same patches written into the weights, run as a plain zero-shot forward
        with torch.no_grad():
            plain = edited(model, patches)(torch.tensor([zs]))[0, -1].double()
        assert relative_gap(plain, target) < 1e-8
        _, unchained = chained_patch(model, icl, zs, chained=False)
        assert relative_gap(unchained, target) > 1e-4
        zs_logits = model(torch.tensor([zs]))[0, -1].double()
        assert relative_gap(zs_logits, target) > 1e-3  # the context changed the answer's logits to begin with
    post_norm = arch == "gemma3-like"
    assert all((p.gamma is not None) == post_norm and (p.h is None) == post_norm for p in patches)
    assert all(not p.a for p in patches) == (arch == "neox-like")  # parallel blocks: u is ICL's already
