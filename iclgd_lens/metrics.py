"""The papers' ICL-vs-GD metrics as pure tensor functions (no model access).

Inputs are what a Record holds at the recorded position. Every similarity returns its per-example values
[n, layer] or [n, layer, head]; `reduce` takes those to per-layer and mean numbers with the papers' reductions
(heads, then examples, then layers).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

EPS = 1e-12


def cosine(a: Float[Tensor, "... d"], b: Float[Tensor, "... d"]) -> Float[Tensor, "..."]:
    """Cosine similarity along the last dimension (0 where a vector is zero)."""
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(EPS)


def l2_normalise(x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def simaou(
    icl: Float[Tensor, "n layer d"],
    zs: Float[Tensor, "n layer d"],
    ft: Float[Tensor, "n layer d"],
    normalise: bool = False,
) -> Float[Tensor, "n layer"]:
    """SimAOU (Revisited): cos(h_ICL − h_ZS, h_FT − h_ZS) of attention outputs. With `normalise`, each h is
    L2-normalised first: Dai et al.'s "SimAOU" (here `simaou_norm`). Also per head, given [n, layer, head, d]."""
    if normalise:
        icl, zs, ft = l2_normalise(icl), l2_normalise(zs), l2_normalise(ft)
    return cosine(icl - zs, ft - zs)


def simaou_norm(icl: Tensor, zs: Tensor, ft: Tensor) -> Tensor:
    """Dai et al.'s SimAOU: `simaou` on L2-normalised attention outputs. Biased: ICL and FT outputs that are
    h_ZS plus independent noise score 0.25 (noise norm sqrt(3)·|h_ZS|) up to 0.5 (larger noise); SimAOU scores 0."""
    return simaou(icl, zs, ft, normalise=True)


def random_simaou(
    icl: Float[Tensor, "n layer d"], zs: Float[Tensor, "n layer d"], seed: int = 0, normalise: bool = True
) -> Float[Tensor, "n layer"]:
    """Dai's random-update baseline: cos(h_ICL − h_ZS, r), r ~ U[0, 1) elementwise (the reference code). The
    attention outputs are normalised as in Dai's SimAOU, whose table it sits beside."""
    generator = torch.Generator().manual_seed(seed)
    r = torch.rand(icl.shape, generator=generator, dtype=torch.float64)
    if normalise:
        icl, zs = l2_normalise(icl.double()), l2_normalise(zs.double())
    return cosine(icl - zs, r)


def masked_cosine(
    a: Float[Tensor, "n layer head key"], b: Float[Tensor, "n layer head key"], query_len: Int[Tensor, "n"]
) -> Float[Tensor, "n layer head"]:
    """Cosine over each example's first query_len keys (padding beyond is ignored, whatever it holds)."""
    mask = torch.arange(a.shape[-1])[None, :] < query_len[:, None]  # [n, key]
    mask = mask[:, None, None, :]
    return cosine(torch.where(mask, a, 0.0), torch.where(mask, b, 0.0))


def simam(
    icl: Float[Tensor, "n layer head key"], other: Float[Tensor, "n layer head key"], query_len: Int[Tensor, "n"]
) -> Float[Tensor, "n layer head"]:
    """SimAM (Dai): cos(m_ICL, m_X) of pre-softmax scores to the query's own tokens. `simam_before` passes
    m_ZS, `simam` (after finetuning) passes m_FT."""
    return masked_cosine(icl, other, query_len)


def simam_before(icl: Tensor, zs: Tensor, query_len: Tensor) -> Tensor:
    return simam(icl, zs, query_len)


def simam_delta(
    icl: Float[Tensor, "n layer head key"],
    zs: Float[Tensor, "n layer head key"],
    ft: Float[Tensor, "n layer head key"],
    query_len: Int[Tensor, "n"],
) -> Float[Tensor, "n layer head"]:
    """SimAM∆ (Revisited): cos(m_ICL − m_ZS, m_FT − m_ZS)."""
    return masked_cosine(icl - zs, ft - zs, query_len)


def alpha(
    lcgd: Float[Tensor, "n layer head key"],
    gd: Float[Tensor, "n layer head key"],
    zs: Float[Tensor, "n layer head key"],
    query_len: Int[Tensor, "n"],
) -> Float[Tensor, "n layer head"]:
    """α (Revisited App. B.1): SimAM∆ between the LCGD and GD updates, cos(m_LCGD − m_ZS, m_GD − m_ZS)."""
    return simam_delta(lcgd, zs, gd, query_len)


def head_outputs(
    z: Float[Tensor, "n layer head d_head"], W_O: Float[Tensor, "layer head d_head d_model"]
) -> Float[Tensor, "n layer head d_model"]:
    """Each head's contribution to the attention output (z·W_O, without the shared bias)."""
    return torch.einsum("nlhe,lhed->nlhd", z.double(), W_O.double())


def accuracy(pred: Int[Tensor, "n"], labels: Int[Tensor, "n"]) -> float:
    return float((pred == labels).double().mean())


def rec2ftp(
    zs_pred: Int[Tensor, "n"], ft_pred: Int[Tensor, "n"], icl_pred: Int[Tensor, "n"], labels: Int[Tensor, "n"]
) -> float:
    """Rec2FTP (Dai): among queries FT gets right and ZS gets wrong, the percentage ICL also gets right
    (NaN when there is no such query)."""
    fixed_by_ft = (ft_pred == labels) & (zs_pred != labels)
    if not fixed_by_ft.any():
        return float("nan")
    return 100.0 * float((icl_pred[fixed_by_ft] == labels[fixed_by_ft]).double().mean())


def reduce(values: Float[Tensor, "n layer"] | Float[Tensor, "n layer head"]) -> dict:
    """Papers' reductions: mean over heads (if any), then examples, then layers -> {mean, per_layer}."""
    if values.ndim == 3:
        values = values.mean(-1)
    per_layer = values.mean(0)
    return {"mean": float(per_layer.mean()), "per_layer": [float(v) for v in per_layer]}


def per_head(values: Float[Tensor, "n layer head"]) -> list[list[float]]:
    """Mean over examples -> [layer][head]."""
    return values.mean(0).tolist()
