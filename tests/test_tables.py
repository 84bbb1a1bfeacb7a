"""Bootstrap intervals and the baseline comparison, against independent computations."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from iclgd_lens.analysis import bootstrap
from iclgd_lens.analysis.tables import _above_baselines
from iclgd_lens.metrics import reduce


def with_nans(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=generator, dtype=torch.float64)
    values[torch.rand(shape, generator=generator) < 0.2] = math.nan
    values[:, 1] = math.nan  # one layer with no defined value at all
    return values


@pytest.mark.parametrize("shape", [(7, 3), (7, 3, 4)])
def test_unit_weights_give_the_metric_mean(shape):
    """The bootstrap statistic with every query once is exactly metrics.reduce's mean (NaN skipped at each step)."""
    values = with_nans(shape, seed=len(shape))
    per_query = bootstrap.per_query(values)
    assert bootstrap.statistic(per_query, np.ones((1, shape[0])))[0] == pytest.approx(reduce(values)["mean"], abs=1e-12)


def test_statistic_of_a_resample_equals_the_mean_of_the_repeated_rows():
    values = bootstrap.per_query(with_nans((6, 3), seed=5))
    counts = np.array([[2, 0, 1, 0, 3, 0]], dtype=float)
    repeated = np.repeat(values, counts[0].astype(int), axis=0)
    assert bootstrap.statistic(values, counts)[0] == pytest.approx(reduce(torch.from_numpy(repeated))["mean"])


def test_interval_brackets_the_mean_and_collapses_without_variation():
    rng = np.random.default_rng(0)
    runs = [rng.normal(0.3, 0.1, (40, 4)), rng.normal(0.3, 0.1, (50, 4))]
    counts = bootstrap.run_counts([40, 50])
    low, high = bootstrap.interval(runs, counts)
    mean = np.mean([run.mean() for run in runs])
    assert low < mean < high and high - low < 0.1
    constant = [np.full((40, 4), 0.25), np.full((50, 4), 0.25)]
    assert bootstrap.interval(constant, counts) == pytest.approx((0.25, 0.25))
    assert all(math.isnan(v) for v in bootstrap.interval([np.full((40, 4), math.nan)], counts[:1]))


def test_counts_are_seeded_and_shared():
    first, second = bootstrap.run_counts([10, 20]), bootstrap.run_counts([10, 20])
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert first[0].shape == (bootstrap.DRAWS, 10) and (first[1].sum(1) == 20).all()


def test_above_baselines_needs_the_whole_interval_above_every_baseline():
    rows = [
        # task, model, method, metric, mean, std, runs, ci_low, ci_high
        ("t", "trained", "gd", "simaou", 0.5, 0.1, 3, 0.40, 0.60),
        ("t", "no_training", "gd", "simaou", 0.2, 0.1, 3, 0.10, 0.30),
        ("t", "trained_embeddings", "gd", "simaou", 0.3, 0.1, 3, 0.20, 0.41),  # overlaps: not above
        ("t", "trained", "gd", "simam", 0.5, 0.1, 3, 0.40, 0.60),
        ("t", "no_training", "gd", "simam", 0.2, 0.1, 3, 0.10, 0.30),
        ("t", "trained_embeddings", "gd", "simam", 0.3, 0.1, 3, 0.20, 0.39),
        ("t", "trained", "gd", "simam_delta", 0.5, 0.1, 3, math.nan, math.nan),
        ("t", "trained", "gd", "acc_icl", 0.9, 0.0, 3, math.nan, math.nan),
        ("t", "trained", "gd", "random_simaou", 0.5, 0.1, 3, 0.40, 0.60),  # a baseline itself: not compared
    ]
    table = pd.DataFrame(
        rows, columns=["task", "model", "method", "metric", "mean", "std", "runs", "ci_low", "ci_high"]
    )
    assert _above_baselines(table) == ["no", "", "", "yes", "", "", "n/a", "", ""]
