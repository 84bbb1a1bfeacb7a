"""Each metric against values computed by hand on small tensors."""

import math

import pytest
import torch

from iclgd_lens.core import metrics as M

ICL = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])  # [n=2, layer=1, d=2]
ZS = torch.tensor([[[0.0, 0.0]], [[0.0, 1.0]]])
FT = torch.tensor([[[1.0, 1.0]], [[1.0, 1.0]]])


def test_simaou_by_hand():
    # example 0: cos((1,0), (1,1)) = 1/sqrt2; example 1: cos((0,1), (1,0)) = 0
    values = M.simaou(ICL, ZS, FT)
    torch.testing.assert_close(values, torch.tensor([[1 / math.sqrt(2)], [0.0]], dtype=torch.float64))
    reduced = M.reduce(values)
    assert reduced["mean"] == pytest.approx(0.5 / math.sqrt(2))
    assert reduced["per_layer"] == pytest.approx([0.5 / math.sqrt(2)])


def test_simaou_norm_by_hand():
    # example 0: h_ZS = 0 cannot be normalised; example 1: normalised icl1 = zs1 = (0, 1), a zero update.
    # Exact arithmetic: both undefined (NaN). Reference arithmetic (x / (|x| + eps), dot / (|a||b| + eps)):
    # zs0 stays 0, cos((1,0), (1,1)/sqrt2) = 1/sqrt2; the zero update scores 0.
    assert M.simaou_norm(ICL, ZS, FT).isnan().all()
    values = M.simaou_norm(ICL, ZS, FT, eps=M.REFERENCE_EPS)
    torch.testing.assert_close(values, torch.tensor([[1 / math.sqrt(2)], [0.0]], dtype=torch.float64))


def test_cosine_is_scale_invariant_and_nan_for_zero_vectors():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=generator), torch.randn(5, 7, generator=generator)
    expected = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
    for scale in (1.0, 1e-8, 1e-20, 1e20):
        torch.testing.assert_close(M.cosine(a * scale, b * scale), expected)
    # The old clamp of |a||b| at 1e-12 shrank such small updates towards 0:
    assert M.cosine(a * 1e-8, b * 1e-8, eps=1e-12).abs().max() < 0.5 * expected.abs().max()
    zero = torch.zeros(7)
    assert M.cosine(zero, b[0]).isnan() and M.cosine(a[0], zero).isnan() and M.cosine(zero, zero).isnan()
    assert M.cosine(zero, b[0], eps=M.REFERENCE_EPS) == 0


def test_means_skip_nan_at_each_step_and_count_defined_values():
    nan = math.nan
    values = torch.tensor(  # [n=2, layer=2, head=2]
        [[[1.0, nan], [nan, nan]], [[3.0, 5.0], [nan, nan]]], dtype=torch.float64
    )
    # layer 0: heads -> ex0 1 (one defined), ex1 4 -> examples 2.5; layer 1: nothing defined -> NaN, skipped
    reduced = M.reduce(values)
    assert reduced["per_layer"][0] == 2.5 and math.isnan(reduced["per_layer"][1])
    assert reduced["mean"] == 2.5 and (reduced["defined"], reduced["total"]) == (3, 8)
    per_head = M.per_head(values)
    assert per_head[0] == [2.0, 5.0] and all(math.isnan(v) for v in per_head[1])
    assert math.isnan(M.reduce(torch.full((2, 3), nan))["mean"])


def test_zero_update_is_undefined_not_zero():
    # FT equal to ZS at example 1: SimAOU there is NaN and the mean is example 0's alone.
    ft = FT.clone()
    ft[1] = ZS[1]
    values = M.simaou(ICL, ZS, ft)
    assert values[1].isnan().all()
    assert M.reduce(values)["mean"] == pytest.approx(1 / math.sqrt(2))
    assert M.reduce(M.simaou(ICL, ZS, ft, eps=M.REFERENCE_EPS))["mean"] == pytest.approx(0.5 / math.sqrt(2))


def test_below_resolution_flags_updates_smaller_than_the_relative_threshold():
    zs = torch.tensor([[3.0, 4.0], [3.0, 4.0]])  # |zs| = 5
    update = torch.tensor([[4e-6, 0.0], [6e-6, 0.0]])  # 0.8e-6 and 1.2e-6 of |zs|
    assert M.below_resolution(update, zs, M.resolution(torch.float32)).tolist() == [True, False]
    assert M.resolution(torch.float16) == M.resolution(torch.bfloat16) == 1e-3


def test_f2t_by_hand():
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    zs = torch.tensor([1, 0, 1, 1, 0, 1])  # wrong on 0, 1, 3, 4, 5
    ft = torch.tensor([0, 1, 1, 1, 1, 0])  # of those right on 0, 1, 4, 5
    icl = torch.tensor([0, 0, 1, 0, 1, 0])  # of those right on 0, 4, 5
    assert M.f2t(zs, ft, icl, labels).tolist() == [True, False, False, False, True, True]


def test_noise_updates_score_positive_only_when_normalised():
    """The known flaw: ICL and FT outputs that are the ZS output plus independent noise (norm sqrt(3)|h_ZS|)
    score 0.25 in SimAOU_norm but 0 in SimAOU."""
    generator = torch.Generator().manual_seed(0)
    n, d = 400, 4096
    zs = torch.randn(n, 1, d, generator=generator)

    def noise():
        return math.sqrt(3) * torch.randn(n, 1, d, generator=generator)

    icl, ft = zs + noise(), zs + noise()
    assert M.reduce(M.simaou_norm(icl, zs, ft))["mean"] == pytest.approx(0.25, abs=0.01)
    assert M.reduce(M.simaou(icl, zs, ft))["mean"] == pytest.approx(0.0, abs=0.01)


def test_random_simaou_is_seeded_uniform_noise():
    icl, zs = ICL + 0.5, ZS + 0.5  # no zero vector
    a = M.random_simaou(icl, zs, seed=3)
    torch.testing.assert_close(a, M.random_simaou(icl, zs, seed=3))
    r = torch.rand(icl.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def unit(x):
        return x.double() / x.double().norm(dim=-1, keepdim=True)

    expected = torch.nn.functional.cosine_similarity(unit(icl) - unit(zs), r, dim=-1)
    torch.testing.assert_close(a, expected)


SCORES_ICL = torch.tensor([[[[1.0, 2.0, 9.0]]], [[[3.0, 0.0, 0.0]]]])  # [n=2, layer=1, head=1, key=3]
SCORES_ZS = torch.tensor([[[[2.0, 1.0, -9.0]]], [[[1.0, 0.0, 5.0]]]])
SCORES_FT = torch.tensor([[[[2.0, 3.0, 7.0]]], [[[2.0, 0.0, 1.0]]]])
QUERY_LEN = torch.tensor([2, 1])  # keys beyond are padding and must be ignored


def test_simam_before_and_after_by_hand():
    # before: ex0 cos((1,2),(2,1)) = 4/5; ex1 cos((3),(1)) = 1
    before = M.simam_before(SCORES_ICL, SCORES_ZS, QUERY_LEN)
    torch.testing.assert_close(before[:, 0, 0], torch.tensor([0.8, 1.0], dtype=torch.float64))
    # after: ex0 cos((1,2),(2,3)) = 8/(sqrt5*sqrt13); ex1 = 1
    after = M.simam(SCORES_ICL, SCORES_FT, QUERY_LEN)
    torch.testing.assert_close(after[:, 0, 0], torch.tensor([8 / math.sqrt(65), 1.0], dtype=torch.float64))


def test_simam_delta_and_alpha_by_hand():
    # ex0: icl-zs = (-1, 1), ft-zs = (0, 2) -> 1/sqrt2; ex1: (2) vs (1) -> 1
    delta = M.simam_delta(SCORES_ICL, SCORES_ZS, SCORES_FT, QUERY_LEN)
    torch.testing.assert_close(delta[:, 0, 0], torch.tensor([1 / math.sqrt(2), 1.0], dtype=torch.float64))
    # alpha(lcgd=ICL scores, gd=FT scores) is SimAM∆ with the roles of the two updates
    alpha = M.alpha(SCORES_ICL, SCORES_FT, SCORES_ZS, QUERY_LEN)
    torch.testing.assert_close(alpha, delta)
    assert M.reduce(delta)["mean"] == pytest.approx((1 / math.sqrt(2) + 1) / 2)


def test_reduce_means_heads_then_examples_then_layers():
    values = torch.tensor([[[1.0, 3.0], [0.0, 0.0]], [[3.0, 5.0], [2.0, 2.0]]])  # [n=2, layer=2, head=2]
    # heads: ex0 (2, 0), ex1 (4, 2) -> examples: (3, 1) -> mean 2
    assert M.reduce(values) == {"mean": 2.0, "per_layer": [3.0, 1.0], "defined": 8, "total": 8}
    assert M.per_head(values) == [[2.0, 4.0], [1.0, 1.0]]


def test_head_outputs_sum_to_attention_output_minus_bias():
    z = torch.randn(3, 2, 4, 5)
    W_O = torch.randn(2, 4, 5, 6)
    heads = M.head_outputs(z, W_O)
    expected = torch.einsum("nlhe,lhed->nld", z.double(), W_O.double())
    torch.testing.assert_close(heads.sum(2), expected)


def test_rec2ftp_and_accuracy_by_hand():
    labels = torch.tensor([0, 1, 1, 0, 1])
    zs = torch.tensor([1, 0, 0, 0, 0])  # wrong on 0, 1, 2, 4
    ft = torch.tensor([0, 1, 0, 0, 1])  # fixes 0, 1, 4
    icl = torch.tensor([0, 0, 1, 1, 1])  # of those, right on 0 and 4
    assert M.rec2ftp(zs, ft, icl, labels) == pytest.approx(200 / 3)
    assert M.accuracy(icl, labels) == pytest.approx(0.6)
    assert math.isnan(M.rec2ftp(labels, labels, icl, labels))


def test_per_head_similarities_in_chunks_equal_all_queries_at_once(monkeypatch):
    """scoring computes per-head outputs a chunk of queries at a time (memory); the values must not change."""
    from iclgd_lens.core import scoring
    from iclgd_lens.core.recording import Record

    g = torch.Generator().manual_seed(0)
    n, layers, heads, d_head, d_model = 7, 2, 3, 4, 5

    def rec():
        z = torch.randn(n, layers, heads, d_head, generator=g)
        scores = torch.randn(n, layers, heads, 2, generator=g)
        attn_out, label_logprobs = torch.randn(n, layers, d_model, generator=g), torch.randn(n, 2, generator=g)
        return Record(attn_out, z, scores, torch.full((n,), 2), label_logprobs, torch.zeros(n, dtype=torch.long))

    zs, icl, ft = rec(), rec(), rec()
    W_O, ft_W_O = torch.randn(layers, heads, d_head, d_model, generator=g), torch.randn(layers, heads, d_head, d_model)
    monkeypatch.setattr(scoring, "HEAD_CHUNK", 3)  # chunks of 3, 3 and 1 queries
    chunked = scoring.head_similarities(zs, icl, ft, W_O, ft_W_O, eps=None)
    h_zs, h_icl, h_ft = M.head_outputs(zs.z, W_O), M.head_outputs(icl.z, W_O), M.head_outputs(ft.z, ft_W_O)
    torch.testing.assert_close(chunked["simaou"], M.simaou(h_icl, h_zs, h_ft), rtol=0, atol=1e-12)
    torch.testing.assert_close(chunked["simaou_norm"], M.simaou_norm(h_icl, h_zs, h_ft), rtol=0, atol=1e-12)
    assert chunked["simaou"].shape == (n, layers, heads)
