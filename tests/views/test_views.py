"""Views and plots from saved result folders (plus the model for on-demand patterns)."""

import pytest
import torch

from iclgd_lens import Result
from iclgd_lens.analysis.heads.patterns import record_patterns
from iclgd_lens.views.attention import attention_view, score_change_view
from iclgd_lens.views.plots import head_heatmaps, per_layer_plot, save_figure


def test_patterns_match_a_full_forward_and_collapse_by_sums(tiny, saved):
    result = Result.load(saved / "s0")
    collapsed = record_patterns(tiny, result, query=2)
    full = record_patterns(tiny, result, query=2, collapse=False)
    episode = result.episode
    n_q = collapsed.n_query_tokens
    assert n_q == len(episode.queries[2]) and collapsed.layers == [0, 1]
    for setting in ("zs", "icl", "gd", "lcgd"):
        rows = collapsed.attention[setting][:, :, -n_q:, :]
        torch.testing.assert_close(rows.sum(-1), torch.ones_like(rows.sum(-1)))  # every query row sums to one
    # independent: the ICL pattern of the whole prompt from run_with_cache
    tokens = torch.tensor([[*episode.icl_prefix, *episode.queries[2]]])
    _, cache = tiny.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    expected = cache["pattern", 1][0, :, -n_q:, :]  # [head, query rows, every key]
    torch.testing.assert_close(full.attention["icl"][1, :, -n_q:, :], expected)
    # a demonstration's column is the sum of its tokens' and separator's columns
    spans = [len(d) + len(episode.separator) for d in episode.demos]
    start = 1
    for j, length in enumerate(spans):
        summed = full.attention["icl"][..., -n_q:, start : start + length].sum(-1)
        torch.testing.assert_close(collapsed.attention["icl"][..., -n_q:, 1 + j], summed)
        start += length
    assert collapsed.attention["zs"][..., 1 : 1 + len(spans)].abs().sum() == 0  # no demonstrations in ZS
    assert collapsed.tokens[:2] == ["<bos>", "[demo 1]"] and len(collapsed.tokens) == 1 + len(spans) + n_q


def test_views_from_a_saved_folder(tiny, saved):
    result = Result.load(saved / "s0")
    changes = score_change_view(result, query=1)  # no model: ids as token labels
    assert changes.body.count('class="circuitsvis"') == 2 * 3  # layers x (ICL, GD, LCGD)
    html = attention_view(record_patterns(tiny, result, 1))._repr_html_()
    assert html.count("<script>var CircuitsVis") == 0 and html.count("var CircuitsVis=") == 1  # the bundle once
    assert html.count('class="circuitsvis"') == 2 * 4 and "AttentionHeads" in html
    with pytest.raises(ValueError, match="out of range"):
        score_change_view(result, query=99)


def test_plots_from_saved_folders(saved, tmp_path):
    results = [Result.load(saved / f"s{seed}") for seed in (0, 1)]
    for name, fig in (
        ("curves.svg", per_layer_plot(results, "simam_delta")),
        ("heads.png", head_heatmaps(results[0], methods=("gd", "lcgd", "no_training/gd"))),
    ):
        save_figure(fig, tmp_path / name)
        assert (tmp_path / name).stat().st_size > 5000
    svg = (tmp_path / "curves.svg").read_text()
    assert "synth-sst2" in svg and "<dc:date>" not in svg  # no timestamp: the same data gives the same file
