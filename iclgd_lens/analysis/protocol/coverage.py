"""How often the sweeps' bootstrap intervals cover the truth, measured on simulated sweeps of the crossed design.

A simulated sweep has the protocol's structure: every run scores the same queries, and a per-query, per-layer value
is  μ + a_run + b_query + c_run,query + e_run,query,layer  with independent run, query, interaction and layer
effects (normal, or skewed: centred exponentials of the same standard deviations). The estimand is μ, the mean over
the population of runs and queries. `coverage` draws many such sweeps, takes each one's interval exactly as
`tables` does (`bootstrap.Resampling`, same draws and seed, `bootstrap.interval`) and counts how often it covers μ,
with the Monte Carlo standard error of that share. `scripts/coverage.py`'s table (docs/reproduction.md) and
tests/analysis/test_coverage.py both run it at the sweeps' setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from iclgd_lens.analysis.protocol import bootstrap

EFFECTS = ("normal", "skewed")


@dataclass(frozen=True)
class Effects:
    """Standard deviations of the simulated effects (defaults: query effects dominate, as in the committed sweeps,
    where the per-query spread of a similarity is several times its run-to-run spread)."""

    run: float = 0.01
    query: float = 0.20
    interaction: float = 0.10
    layer: float = 0.05
    shape: str = "normal"  # or "skewed"

    def draw(self, rng: np.random.Generator, sd: float, size: tuple[int, ...]) -> np.ndarray:
        if self.shape == "normal":
            return rng.normal(0.0, sd, size)
        if self.shape == "skewed":
            return sd * (rng.exponential(1.0, size) - 1.0)  # mean 0, sd `sd`, skewness 2
        raise ValueError(f"unknown effect shape {self.shape!r}; choose from {list(EFFECTS)}")


def simulate(
    effects: Effects, sweeps: int, n_runs: int, n_queries: int, n_layers: int, mean: float, seed: int
) -> list[np.ndarray]:
    """Per run, the [sweeps, n_queries, n_layers] values of `sweeps` independent simulated sweeps."""
    rng = np.random.default_rng(seed)
    runs = effects.draw(rng, effects.run, (sweeps, n_runs, 1, 1))
    queries = effects.draw(rng, effects.query, (sweeps, 1, n_queries, 1))
    interaction = effects.draw(rng, effects.interaction, (sweeps, n_runs, n_queries, 1))
    layers = effects.draw(rng, effects.layer, (sweeps, n_runs, n_queries, n_layers))
    values = mean + runs + queries + interaction + layers
    return [values[:, run] for run in range(n_runs)]


@dataclass(frozen=True)
class Coverage:
    share: float  # of the simulated sweeps whose interval covers the true mean
    mc_error: float  # its Monte Carlo standard error
    width: float  # the intervals' mean width
    sweeps: int


def coverage(
    effects: Effects = Effects(),
    *,
    crossed: bool = True,
    n_runs: int = 5,
    n_queries: int = 64,
    n_layers: int = 2,
    draws: int = bootstrap.DRAWS,
    sweeps: int = 1000,
    seed: int = 0,
) -> Coverage:
    """The share of `sweeps` simulated crossed sweeps whose interval (`crossed` or the nested resampling) covers
    the true mean; the defaults are the committed sweeps' setting (5 runs, 64 queries, the tables' draws and
    seed)."""
    mean = 0.3
    per_run = simulate(effects, sweeps, n_runs, n_queries, n_layers, mean, seed)
    resampling = bootstrap.Resampling.draw(n_runs, n_queries, draws, bootstrap.SEED, crossed=crossed)
    statistics = resampling.statistics(per_run)  # [sweeps, draws]
    intervals = np.array([bootstrap.interval(row, n_runs) for row in statistics])
    covered = (intervals[:, 0] <= mean) & (mean <= intervals[:, 1])
    share = float(covered.mean())
    return Coverage(
        share, math.sqrt(share * (1 - share) / sweeps), float(np.mean(intervals[:, 1] - intervals[:, 0])), sweeps
    )
