"""Two-level bootstrap intervals and paired verdicts for every similarity metric of a sweep.

A metric's mean in one run is a mean over layers of per-layer means over queries of per-query values (SimAM's
per-query value is its mean over heads), each step skipping undefined (NaN) values as `metrics.reduce` does; a
task's number is the mean over runs. A bootstrap draw resamples the *runs* with replacement, then the queries with
replacement within each drawn run, and recomputes exactly that statistic: the interval covers both the run-to-run
variance (seed, demonstrations, their order) and the query sampling.

One `Resampling` per task serves every setting, method, baseline and metric: the same draw picks the same runs and
the same queries for all of them, so a difference (trained − baseline) is paired and its interval is the interval of
the per-draw differences.

With few runs the plain percentile interval of a mean is too narrow (it uses the runs' spread as if it were the
population's and a normal quantile where Student's t belongs). The interval is Hesterberg's *expanded percentile*
interval (Hesterberg 2015, "What teachers should know about the bootstrap", section 5.1): the percentiles are taken
at the tail α'/2 = Φ(−√(R/(R−1)) · t_{R−1, 1−α/2}) for R runs, which matches a t interval's width for normal data.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from scipy.stats import norm, t
from torch import Tensor

from iclgd_lens.core.metrics import alpha
from iclgd_lens.core.results import Result
from iclgd_lens.core.scoring import similarities

DRAWS = 4000  # enough draws for the expanded tails at 5 runs (α'/2 ≈ 0.001: 4 draws beyond each end)
LEVEL = 0.95
SEED = 0  # fixed: the same result folders give the same intervals
MIN_RUNS = 5  # fewer runs than this: no verdict ("too few runs")
SIMILARITIES = ("simaou_norm", "simaou", "simam", "simam_delta", "simam_before", "random_simaou")

ABOVE, BELOW, NO_DIFFERENCE, TOO_FEW_RUNS = "above", "below", "no difference shown", "too few runs"


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


def statistic(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """One run's metric for each row of `counts` (weights per query, [..., n]): layer means over defined queries,
    then the mean over layers with a defined value. With all-ones counts this is `metrics.reduce`'s mean."""
    defined = ~np.isnan(values)
    totals = counts @ np.where(defined, values, 0.0)  # [..., layer]
    weights = counts @ defined.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_layer = totals / weights  # NaN where a layer has no defined value in the draw
        layer_defined = ~np.isnan(per_layer)
        return np.where(layer_defined, per_layer, 0.0).sum(-1) / layer_defined.sum(-1)


@dataclass(frozen=True)
class Resampling:
    """The draws of one task: `runs[d, s]` is the run in slot s of draw d (R slots, runs drawn with replacement),
    `counts[d, s, i]` how often query i of that run is drawn (queries resampled within each slot)."""

    runs: np.ndarray  # [draws, R] int
    counts: np.ndarray  # [draws, R, n] float64

    @classmethod
    def draw(cls, n_runs: int, n_queries: int, draws: int = DRAWS, seed: int = SEED) -> Resampling:
        rng = np.random.default_rng(seed)
        runs = rng.integers(0, n_runs, size=(draws, n_runs))
        counts = rng.multinomial(n_queries, np.full(n_queries, 1.0 / n_queries), size=(draws, n_runs))
        return cls(runs, counts.astype(np.float64))

    @property
    def n_runs(self) -> int:
        return self.runs.shape[1]

    def statistics(self, per_run: list[np.ndarray]) -> np.ndarray:
        """[draws]: the mean over a draw's slots of each slot's run statistic (slots whose statistic is undefined
        are skipped, as the mean over runs skips undefined runs). `per_run[r]`: run r's [n, layer] values."""
        if len(per_run) != self.n_runs:
            raise ValueError(f"{len(per_run)} runs given, the resampling was drawn for {self.n_runs}")
        slots = np.full(self.runs.shape, np.nan)
        for run, values in enumerate(per_run):
            if values.shape[0] != self.counts.shape[2]:
                raise ValueError(f"run {run} has {values.shape[0]} queries, the resampling {self.counts.shape[2]}: "
                                 "every run of a task must score the same number of queries")  # fmt: skip
            picked = self.runs == run
            slots[picked] = statistic(values, self.counts[picked])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a draw with no defined slot: NaN, dropped in `interval`
            return np.nanmean(slots, axis=1)


def tail(n_runs: int, level: float = LEVEL) -> float:
    """The expanded percentile interval's lower tail probability for `n_runs` runs (module docstring)."""
    if n_runs < 2:
        return math.nan
    return float(norm.cdf(-math.sqrt(n_runs / (n_runs - 1)) * t.ppf(1 - (1 - level) / 2, n_runs - 1)))


def percentile_interval(draws: np.ndarray, low_tail: float) -> tuple[float, float]:
    """The [low_tail, 1 − low_tail] quantiles of the defined bootstrap draws; NaN without any (or a NaN tail)."""
    draws = draws[~np.isnan(draws)]
    if draws.size == 0 or math.isnan(low_tail):
        return math.nan, math.nan
    low, high = np.quantile(draws, [low_tail, 1 - low_tail])
    return float(low), float(high)


def interval(draws: np.ndarray, n_runs: int) -> tuple[float, float]:
    """The expanded percentile interval of a statistic's bootstrap draws; NaN with one run or no defined draw."""
    return percentile_interval(draws, tail(n_runs))


def verdict(difference: tuple[float, float], n_runs: int) -> str:
    """`above` / `below` when the paired difference's interval excludes 0, `no difference shown` when it contains
    0, `too few runs` below MIN_RUNS runs; "n/a" when the interval is undefined."""
    if n_runs < MIN_RUNS:
        return TOO_FEW_RUNS
    low, high = difference
    if math.isnan(low) or math.isnan(high):
        return "n/a"
    return ABOVE if low > 0 else BELOW if high < 0 else NO_DIFFERENCE
