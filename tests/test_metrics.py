"""Each metric against values computed by hand on small tensors."""

import math

import pytest
import torch

from iclgd_lens import metrics as M

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
    # normalised: icl1=(0,1), zs1=(0,1) -> zero update -> cosine 0; example 0: zs=0 stays 0,
    # icl0=(1,0), ft0=(1,1)/sqrt2 -> cos((1,0),(1,1)/sqrt2) = 1/sqrt2
    values = M.simaou_norm(ICL, ZS, FT)
    torch.testing.assert_close(values, torch.tensor([[1 / math.sqrt(2)], [0.0]], dtype=torch.float64))


def test_noise_updates_score_positive_only_when_normalised():
    """The known flaw: ICL and FT outputs that are the ZS output plus independent noise (norm sqrt(3)|h_ZS|)
    score 0.25 in SimAOU_norm but 0 in SimAOU."""
    generator = torch.Generator().manual_seed(0)
    n, d = 400, 4096
    zs = torch.randn(n, 1, d, generator=generator)
    noise = lambda: math.sqrt(3) * torch.randn(n, 1, d, generator=generator)
    icl, ft = zs + noise(), zs + noise()
    assert M.reduce(M.simaou_norm(icl, zs, ft))["mean"] == pytest.approx(0.25, abs=0.01)
    assert M.reduce(M.simaou(icl, zs, ft))["mean"] == pytest.approx(0.0, abs=0.01)


def test_random_simaou_is_seeded_uniform_noise():
    a = M.random_simaou(ICL, ZS, seed=3)
    b = M.random_simaou(ICL, ZS, seed=3)
    torch.testing.assert_close(a, b)
    r = torch.rand(ICL.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = M.cosine(M.l2_normalise(ICL.double()) - M.l2_normalise(ZS.double()), r)
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
    assert M.reduce(values) == {"mean": 2.0, "per_layer": [3.0, 1.0]}
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
