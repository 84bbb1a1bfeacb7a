"""Two-level bootstrap intervals and paired verdicts for every similarity metric of a sweep.

A metric's mean in one run is a mean over layers of per-layer means over queries of per-query values (SimAM's
per-query value is its mean over heads), each step skipping undefined (NaN) values as `metrics.reduce` does; a
task's number is the mean over runs. A bootstrap draw resamples the *runs* with replacement and the queries with
replacement, and recomputes exactly that statistic: the interval covers both the run-to-run variance (seed,
demonstrations, their order) and the query sampling. How the queries are resampled follows the design the data has:
- **crossed** (every run scores the same evaluation queries, as the papers' protocol does): one query resample per
  draw, shared by all the runs of that draw. Resampling each run's queries on its own would treat a query's effect,
  which every run shares, as independent noise per run and divide its variance by the number of runs (intervals
  that cover too rarely; `tests/analysis/test_coverage.py` measures both schemes);
- **nested** (runs score different queries): the queries are resampled within each drawn run.

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

from iclgd_lens.core.results import Result
from iclgd_lens.core.scoring import alpha_values, excluded_layers, similarities

DRAWS = 4000  # enough draws for the expanded tails at 5 runs (α'/2 ≈ 0.001: 4 draws beyond each end)
LEVEL = 0.95
SEED = 0  # fixed: the same result folders give the same intervals
MIN_RUNS = 5  # fewer runs than this: no verdict ("too few runs")
SIMILARITIES = ("simaou_norm", "simaou", "simam", "simam_delta", "simam_before", "random_simaou")

ABOVE, BELOW, NO_DIFFERENCE, TOO_FEW_RUNS = "above", "below", "no difference shown", "too few runs"
BORDERLINE = "borderline"


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
    eps, dtype = result.scoring_arithmetic
    values = similarities(zs, icl, ft, result.config["seed"], eps, excluded_layers(zs, (icl, ft), eps, dtype))
    out = {name: per_query(values[name]) for name in SIMILARITIES}
    if method == "lcgd" and prefix + "gd" in result.records:
        gd = result.records[prefix + "gd"]
        out["alpha"] = per_query(alpha_values(zs, ft, gd, eps, excluded_layers(zs, (ft, gd), eps, dtype)))
    return out


def statistic(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """One run's metric for each row of `counts` (weights per query, [k, n]): layer means over defined queries,
    then the mean over layers with a defined value; [..., k] for `values` [..., n, layer]. With all-ones counts
    this is `metrics.reduce`'s mean."""
    defined = ~np.isnan(values)
    totals = counts @ np.where(defined, values, 0.0)  # [..., k, layer]
    weights = counts @ defined.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_layer = totals / weights  # NaN where a layer has no defined value in the draw
        layer_defined = ~np.isnan(per_layer)
        return np.where(layer_defined, per_layer, 0.0).sum(-1) / layer_defined.sum(-1)


@dataclass(frozen=True)
class Resampling:
    """The draws of one task: `runs[d, s]` is the run in slot s of draw d (R slots, runs drawn with replacement),
    `counts[d, s, i]` how often query i is drawn in that slot: the same for every slot of a draw when `crossed`
    (every run scores the same queries), drawn for each slot on its own when nested (module docstring)."""

    runs: np.ndarray  # [draws, R] int
    counts: np.ndarray  # [draws, R, n] float64 (a read-only broadcast of [draws, 1, n] when crossed)
    crossed: bool = True

    @classmethod
    def draw(
        cls, n_runs: int, n_queries: int, draws: int = DRAWS, seed: int = SEED, *, crossed: bool = True
    ) -> Resampling:
        rng = np.random.default_rng(seed)
        runs = rng.integers(0, n_runs, size=(draws, n_runs))
        uniform = np.full(n_queries, 1.0 / n_queries)
        if crossed:
            shared = rng.multinomial(n_queries, uniform, size=(draws, 1)).astype(np.float64)
            return cls(runs, np.broadcast_to(shared, (draws, n_runs, n_queries)), crossed=True)
        counts = rng.multinomial(n_queries, uniform, size=(draws, n_runs))
        return cls(runs, counts.astype(np.float64), crossed=False)

    @property
    def design(self) -> str:
        return "crossed" if self.crossed else "nested"

    @property
    def n_runs(self) -> int:
        return self.runs.shape[1]

    def statistics(self, per_run: list[np.ndarray]) -> np.ndarray:
        """[..., draws]: the mean over a draw's slots of each slot's run statistic (slots whose statistic is
        undefined are skipped, as the mean over runs skips undefined runs). `per_run[r]`: run r's [..., n, layer]
        values (leading dimensions, such as simulated sweeps, are kept)."""
        if len(per_run) != self.n_runs:
            raise ValueError(f"{len(per_run)} runs given, the resampling was drawn for {self.n_runs}")
        batch = per_run[0].shape[:-2]
        slots = np.full((*batch, *self.runs.shape), np.nan)
        for run, values in enumerate(per_run):
            if values.shape[-2] != self.counts.shape[2]:
                raise ValueError(
                    f"run {run} has {values.shape[-2]} queries, the resampling {self.counts.shape[2]}: every run of "
                    "a task must score the same number of queries"
                )
            picked = self.runs == run
            slots[..., picked] = statistic(values, self.counts[picked])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a draw with no defined slot: NaN, dropped in `interval`
            return np.nanmean(slots, axis=-1)


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


def p_value(draws: np.ndarray, n_runs: int) -> float:
    """The two-sided p-value of "the statistic is 0" that agrees with `interval`: the level at which the expanded
    interval's nearer end touches 0 (`tail` inverted at the share of draws on the far side of 0). No draw beyond 0
    bounds the share by half a draw, so p has a floor (`smallest_p`). NaN with one run or no defined draw."""
    draws = draws[~np.isnan(draws)]
    if draws.size == 0 or n_runs < 2:
        return math.nan
    share = max(min(float((draws <= 0).mean()), float((draws >= 0).mean())), 0.5 / draws.size)
    return _p_of_share(share, n_runs)


def smallest_p(n_runs: int, draws: int = DRAWS) -> float:
    """The smallest p-value `p_value` can give with `n_runs` runs and `draws` draws (every draw on one side of 0)."""
    return _p_of_share(0.5 / draws, n_runs) if n_runs >= 2 else math.nan


def _p_of_share(share: float, n_runs: int) -> float:
    expansion = math.sqrt(n_runs / (n_runs - 1))
    return min(1.0, float(2 * t.sf(-norm.ppf(share) / expansion, n_runs - 1)))


def is_borderline(draws: np.ndarray, n_runs: int) -> bool:
    """True when 0 lies within the Monte Carlo error of an end of the expanded interval: the band of the draws'
    quantiles at that end's tail ± 1.96 binomial standard errors of a share of the draws (the order statistics a
    new bootstrap seed could have put there). Such a verdict could flip with the seed."""
    draws = draws[~np.isnan(draws)]
    low_tail = tail(n_runs)
    if draws.size == 0 or math.isnan(low_tail):
        return False
    spread = 1.96 * math.sqrt(low_tail * (1 - low_tail) / draws.size)
    for end in (low_tail, 1 - low_tail):
        low, high = np.quantile(draws, [max(end - spread, 0.0), min(end + spread, 1.0)])
        if low <= 0 <= high:
            return True
    return False


def verdict(difference: tuple[float, float], n_runs: int, borderline: bool = False) -> str:
    """`above` / `below` when the paired difference's interval excludes 0, `no difference shown` when it contains
    0, `borderline` when an end lies within the bootstrap's Monte Carlo error of 0 (`is_borderline`: counted
    neither way), `too few runs` below MIN_RUNS runs; "n/a" when the interval is undefined."""
    if n_runs < MIN_RUNS:
        return TOO_FEW_RUNS
    low, high = difference
    if math.isnan(low) or math.isnan(high):
        return "n/a"
    if borderline:
        return BORDERLINE
    return ABOVE if low > 0 else BELOW if high < 0 else NO_DIFFERENCE
