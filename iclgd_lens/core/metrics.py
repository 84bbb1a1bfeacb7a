"""The papers' ICL-vs-GD metrics as pure tensor functions (no model access).

Inputs are what a Record holds at the recorded position. Every similarity returns its per-example values
[n, layer] or [n, layer, head]; `reduce` takes those to per-layer and mean numbers with the papers' reductions
(heads, then examples, then layers).

Two arithmetics (docs/reference/metrics.md, "Metric arithmetic"):
- exact (`eps=None`, the toolkit's): a cosine is scale-invariant and NaN where either vector is zero (the
  similarity of an update that did not happen is undefined); reductions skip NaN at each step and count what
  they kept;
- reference (`eps=REFERENCE_EPS`): dot / (|a||b| + eps) as the reference code computes it, so a zero vector
  scores 0 and is averaged in.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

REFERENCE_EPS = 1e-20
# Relative size below which an update measures float rounding rather than a change (docs/reference/metrics.md).
RESOLUTION = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-3, torch.float64: 1e-15}


def cosine(a: Float[Tensor, "... d"], b: Float[Tensor, "... d"], eps: float | None = None) -> Float[Tensor, ...]:
    """Cosine similarity along the last dimension, in float64.

    eps=None: each vector is divided by its own norm first (no product of norms that could underflow), so
    scaling either input changes nothing; NaN where either vector is zero. eps given: dot / (|a||b| + eps)."""
    a, b = a.double(), b.double()
    a_norm, b_norm = a.norm(dim=-1), b.norm(dim=-1)
    if eps is not None:
        return (a * b).sum(-1) / (a_norm * b_norm + eps)
    unit_dot = ((a / a_norm.unsqueeze(-1)) * (b / b_norm.unsqueeze(-1))).sum(-1)
    return torch.where((a_norm > 0) & (b_norm > 0), unit_dot, math.nan)


def l2_normalise(x: Float[Tensor, "... d"], eps: float | None = None) -> Float[Tensor, "... d"]:
    """x / |x| in float64; a zero vector gives NaN (eps=None) or stays zero (eps given: x / (|x| + eps))."""
    x = x.double()
    norm = x.norm(dim=-1, keepdim=True)
    return x / (norm if eps is None else norm + eps)


def simaou(
    icl: Float[Tensor, "n layer d"],
    zs: Float[Tensor, "n layer d"],
    ft: Float[Tensor, "n layer d"],
    normalise: bool = False,
    eps: float | None = None,
) -> Float[Tensor, "n layer"]:
    """SimAOU (Revisited): cos(h_ICL − h_ZS, h_FT − h_ZS) of attention outputs. With `normalise`, each h is
    L2-normalised first: Dai et al.'s "SimAOU" (here `simaou_norm`). Also per head, given [n, layer, head, d]."""
    icl, zs, ft = (l2_normalise(h, eps) if normalise else h.double() for h in (icl, zs, ft))
    return cosine(icl - zs, ft - zs, eps)


def simaou_norm(icl: Tensor, zs: Tensor, ft: Tensor, eps: float | None = None) -> Tensor:
    """Dai et al.'s SimAOU: `simaou` on L2-normalised attention outputs. Biased: ICL and FT outputs that are
    h_ZS plus independent noise score 0.25 (noise norm sqrt(3)·|h_ZS|) up to 0.5 (larger noise); SimAOU scores 0."""
    return simaou(icl, zs, ft, normalise=True, eps=eps)


def random_simaou(
    icl: Float[Tensor, "n layer d"],
    zs: Float[Tensor, "n layer d"],
    seed: int = 0,
    normalise: bool = True,
    eps: float | None = None,
) -> Float[Tensor, "n layer"]:
    """Dai's random-update baseline: cos(h_ICL − h_ZS, r), r ~ U[0, 1) elementwise (the reference code). The
    attention outputs are normalised as in Dai's SimAOU, whose table it sits beside."""
    generator = torch.Generator().manual_seed(seed)
    r = torch.rand(icl.shape, generator=generator, dtype=torch.float64)
    icl, zs = (l2_normalise(h, eps) if normalise else h.double() for h in (icl, zs))
    return cosine(icl - zs, r, eps)


def key_mask(query_len: Int[Tensor, " n"], n_keys: int) -> Bool[Tensor, "n 1 1 key"]:
    """True on each example's first query_len keys (its own tokens up to the recorded position)."""
    return (torch.arange(n_keys)[None, :] < query_len[:, None])[:, None, None, :]


def masked_cosine(
    a: Float[Tensor, "n layer head key"],
    b: Float[Tensor, "n layer head key"],
    query_len: Int[Tensor, " n"],
    eps: float | None = None,
) -> Float[Tensor, "n layer head"]:
    """Cosine over each example's first query_len keys (padding beyond is ignored, whatever it holds)."""
    mask = key_mask(query_len, a.shape[-1])
    return cosine(torch.where(mask, a, 0.0), torch.where(mask, b, 0.0), eps)


def simam(
    icl: Float[Tensor, "n layer head key"],
    other: Float[Tensor, "n layer head key"],
    query_len: Int[Tensor, " n"],
    eps: float | None = None,
) -> Float[Tensor, "n layer head"]:
    """SimAM (Dai): cos(m_ICL, m_X) of pre-softmax scores to the query's own tokens. `simam_before` passes
    m_ZS, `simam` (after finetuning) passes m_FT."""
    return masked_cosine(icl, other, query_len, eps)


def simam_before(icl: Tensor, zs: Tensor, query_len: Tensor, eps: float | None = None) -> Tensor:
    return simam(icl, zs, query_len, eps)


def simam_delta(
    icl: Float[Tensor, "n layer head key"],
    zs: Float[Tensor, "n layer head key"],
    ft: Float[Tensor, "n layer head key"],
    query_len: Int[Tensor, " n"],
    eps: float | None = None,
) -> Float[Tensor, "n layer head"]:
    """SimAM∆ (Revisited): cos(m_ICL − m_ZS, m_FT − m_ZS)."""
    icl, zs, ft = icl.double(), zs.double(), ft.double()
    return masked_cosine(icl - zs, ft - zs, query_len, eps)


def alpha(
    lcgd: Float[Tensor, "n layer head key"],
    gd: Float[Tensor, "n layer head key"],
    zs: Float[Tensor, "n layer head key"],
    query_len: Int[Tensor, " n"],
    eps: float | None = None,
) -> Float[Tensor, "n layer head"]:
    """α (Revisited App. B.1): SimAM∆ between the LCGD and GD updates, cos(m_LCGD − m_ZS, m_GD − m_ZS)."""
    return simam_delta(lcgd, zs, gd, query_len, eps)


def head_outputs(
    z: Float[Tensor, "n layer head d_head"], W_O: Float[Tensor, "layer head d_head d_model"]
) -> Float[Tensor, "n layer head d_model"]:
    """Each head's contribution to the attention output (z·W_O, without the shared bias)."""
    return torch.einsum("nlhe,lhed->nlhd", z.double(), W_O.double())


def accuracy(pred: Int[Tensor, " n"], labels: Int[Tensor, " n"]) -> float:
    return float((pred == labels).double().mean())


def rec2ftp(
    zs_pred: Int[Tensor, " n"], ft_pred: Int[Tensor, " n"], icl_pred: Int[Tensor, " n"], labels: Int[Tensor, " n"]
) -> float:
    """Rec2FTP (Dai): among queries FT gets right and ZS gets wrong, the percentage ICL also gets right
    (NaN when there is no such query)."""
    fixed_by_ft = (ft_pred == labels) & (zs_pred != labels)
    if not fixed_by_ft.any():
        return float("nan")
    return 100.0 * float((icl_pred[fixed_by_ft] == labels[fixed_by_ft]).double().mean())


def f2t(
    zs_pred: Int[Tensor, " n"], ft_pred: Int[Tensor, " n"], icl_pred: Int[Tensor, " n"], labels: Int[Tensor, " n"]
) -> Bool[Tensor, " n"]:
    """The reference code's f2t subset: queries ZS gets wrong while both FT and ICL get them right."""
    return (zs_pred != labels) & (ft_pred == labels) & (icl_pred == labels)


def _nanmean(values: Tensor, dim: int) -> Tensor:
    """Mean over `dim` of the defined (non-NaN) values; NaN where none is defined."""
    defined = ~values.isnan()
    total = torch.where(defined, values, 0.0).sum(dim)
    count = defined.sum(dim)
    return torch.where(count > 0, total / count.clamp_min(1), math.nan)


def reduce(values: Float[Tensor, "n layer"] | Float[Tensor, "n layer head"]) -> dict:
    """Papers' reductions: mean over heads (if any), then examples, then layers, each skipping NaN ->
    {mean, per_layer, defined, total}: `defined` of the `total` (example, layer[, head]) values entered."""
    values = values.double()
    per_example = _nanmean(values, -1) if values.ndim == 3 else values
    per_layer = _nanmean(per_example, 0)
    return {
        "mean": float(_nanmean(per_layer, 0)),
        "per_layer": [float(v) for v in per_layer],
        "defined": int((~values.isnan()).sum()),
        "total": values.numel(),
    }


def per_head(values: Float[Tensor, "n layer head"]) -> list[list[float]]:
    """Mean over examples of the defined values -> [layer][head]."""
    return _nanmean(values.double(), 0).tolist()


def resolution(dtype: torch.dtype) -> float:
    """The relative update size below which a `dtype` recording cannot tell an update from rounding."""
    return RESOLUTION[dtype]


def below_resolution(
    update: Float[Tensor, "... d"], reference: Float[Tensor, "... d"], relative: float
) -> Bool[Tensor, ...]:
    """True where |update| < relative · |reference|: an update too small to be told from float rounding."""
    return update.double().norm(dim=-1) < relative * reference.double().norm(dim=-1)


def logodds(logprobs: Float[Tensor, "n class"], labels: Int[Tensor, " n"]) -> Float[Tensor, " n"]:
    """log p(y) − log Σ_{c≠y} p(c) per query."""
    logprobs = logprobs.double()
    correct = logprobs.gather(1, labels[:, None])[:, 0]
    others = logprobs.masked_fill(torch.nn.functional.one_hot(labels, logprobs.shape[1]).bool(), float("-inf"))
    return correct - others.logsumexp(1)
