"""A Gemma-3-shaped model (post-norms, qk-norm, one key-value head, sliding-window layers) through the whole
toolkit: compare, attribution, Kendall and the attention views; the groups it cannot train are refused."""

import pytest

from iclgd_lens import compare
from iclgd_lens.analysis.heads.attribution import attribution_table
from iclgd_lens.analysis.heads.kendall import kendall_table
from iclgd_lens.analysis.heads.patterns import record_patterns
from iclgd_lens.views.attention import attention_view, score_change_view
from tests.helpers import GEMMA3_LIKE, tiny_model, toy_task


@pytest.fixture(scope="module")
def gemma_result():
    model = tiny_model(**GEMMA3_LIKE)
    result = compare(model, toy_task(), k=6, n_eval=6, lr=0.05, baselines=("no_training",), progress=False)
    return model, result


def test_compare_scores_every_metric(gemma_result):
    model, result = gemma_result
    assert result.config["trained_parameters"] == ["attn.W_K", "attn.b_K", "attn.W_V", "attn.b_V"]
    assert set(result.deltas["gd"].tensors) == {
        f"blocks.{l}.attn._{w}" for l in (0, 1) for w in ("W_K", "b_K", "W_V", "b_V")
    }
    summary = result.summary()
    assert summary.loc["simaou", "gd"] == summary.loc["simaou", "gd"]  # defined
    assert summary.shape[1] == 4  # gd, lcgd and both on no_training


def test_attribution_kendall_and_views_run(gemma_result):
    model, result = gemma_result
    heads, totals = attribution_table(model, result, batch_size=3)
    assert set(heads["method"]) == {"gd", "lcgd"} and "patch_restored" in heads.columns
    assert totals["icl"] == totals["icl"] and totals["zs"] == totals["zs"]  # defined
    kendall = kendall_table(model, result, "gd", 3)
    assert len(kendall) > 0
    assert "<div" in str(attention_view(record_patterns(model, result, query=0)))
    assert "<div" in str(score_change_view(result, query=0, tokenizer=model.tokenizer))


def test_output_and_mlp_groups_are_refused_before_training():
    with pytest.raises(ValueError, match="no hook point sits between those outputs and their norms"):
        compare(tiny_model(**GEMMA3_LIKE), toy_task(), k=2, n_eval=2, groups=("o",), baselines=(), progress=False)
