"""Bootstrap confidence intervals over queries for every similarity metric.

A metric's mean is a mean over layers of per-layer means over queries of per-query values (SimAM's per-query value
is its mean over heads), each step skipping undefined (NaN) values as `metrics.reduce` does. A bootstrap draw
resamples the queries of a run with replacement and recomputes exactly that statistic. Over several runs each run
is resampled on its own and the draw's statistic is the mean over runs: the interval then covers the query sampling
within runs, while the sample std over runs (reported beside it) covers the runs.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from iclgd_lens.metrics import alpha
from iclgd_lens.results import Result
from iclgd_lens.scoring import similarities

DRAWS = 1000
LEVEL = 0.95
SEED = 0  # fixed: the same result folders give the same intervals
SIMILARITIES = ("simaou_norm", "simaou", "simam", "simam_delta", "simam_before", "random_simaou")


def per_query(values: Float[Tensor, "n layer"] | Float[Tensor, "n layer head"]) -> np.ndarray:
    """[n, layer] float64: heads averaged (NaN-skipping) within each query and layer."""
    values = values.double()
    if values.dim() == 3:
        defined = ~values.isnan()
        values = torch.where(defined, values, 0.0).sum(-1) / defined.sum(-1)  # 0/0 -> NaN: no defined head
    return values.numpy()


def query_values(result: Result, model: str = "model", method: str = "gd") -> dict[str, np.ndarray]:
    """Per-query, per-layer values of every similarity of `method` on `model` ("model" or a baseline's name),
    recomputed from the saved records; "alpha" too for LCGD when GD was run."""
    prefix = "" if model == "model" else f"{model}/"
    zs, icl, ft = (result.records[prefix + s] for s in ("zs", "icl", method))
    eps = 1e-20 if result.config.get("arithmetic") == "reference" else None
    values = similarities(zs, icl, ft, result.config["seed"], eps)
    out = {name: per_query(values[name]) for name in SIMILARITIES}
    if method == "lcgd" and prefix + "gd" in result.records:
        out["alpha"] = per_query(alpha(ft.scores, result.records[prefix + "gd"].scores, zs.scores, zs.query_len, eps))
    return out


def resample_counts(n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[draws, n]: how often each query appears in each bootstrap resample."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float64)


def statistic(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The metric's mean for each row of `counts` (weights per query): layer means over defined queries, then the
    mean over layers with a defined value. With all-ones counts this is `metrics.reduce`'s mean."""
    defined = ~np.isnan(values)
    totals = counts @ np.where(defined, values, 0.0)  # [draws, layer]
    weights = counts @ defined.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_layer = totals / weights  # NaN where a layer has no defined value in the draw
        layer_defined = ~np.isnan(per_layer)
        return np.where(layer_defined, per_layer, 0.0).sum(-1) / layer_defined.sum(-1)


def interval(runs: list[np.ndarray], counts: list[np.ndarray]) -> tuple[float, float]:
    """The LEVEL percentile interval of the mean over runs, each run resampled with its own counts."""
    draws = np.mean([statistic(v, c) for v, c in zip(runs, counts)], axis=0)
    draws = draws[~np.isnan(draws)]
    if draws.size == 0:
        return float("nan"), float("nan")
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def run_counts(n_queries: list[int]) -> list[np.ndarray]:
    """One seeded resampling per run, shared by every metric and setting of that run (they see the same queries)."""
    rng = np.random.default_rng(SEED)
    return [resample_counts(n, DRAWS, rng) for n in n_queries]
