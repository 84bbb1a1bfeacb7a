"""Bootstrap intervals and the baseline comparison, against independent computations."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from iclgd_lens.analysis.protocol import bootstrap
from iclgd_lens.analysis.protocol.tables import methods_table, verdicts_table
from iclgd_lens.core.metrics import reduce


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
    runs = [rng.normal(0.3, 0.1, (40, 4)) for _ in range(5)]
    resampling = bootstrap.Resampling.draw(5, 40)
    low, high = bootstrap.interval(resampling.statistics(runs), 5)
    mean = np.mean([run.mean() for run in runs])
    assert low < mean < high and high - low < 0.1
    constant = [np.full((40, 4), 0.25)] * 5
    assert bootstrap.interval(resampling.statistics(constant), 5) == pytest.approx((0.25, 0.25))
    undefined = [np.full((40, 4), math.nan)] * 5
    assert all(math.isnan(v) for v in bootstrap.interval(resampling.statistics(undefined), 5))
    assert all(math.isnan(v) for v in bootstrap.interval(resampling.statistics(runs[:1] * 5), 1))  # one run


def test_a_draw_is_the_mean_over_its_drawn_runs_of_each_runs_resampled_statistic():
    """Recomputed by hand for one draw: repeat each slot's run's queries by their counts, take metrics.reduce's mean,
    average over slots (a run drawn twice counts twice)."""
    runs = [bootstrap.per_query(with_nans((6, 3), seed=s)) for s in (1, 2, 3)]
    resampling = bootstrap.Resampling.draw(3, 6, draws=20, seed=4)
    statistics = resampling.statistics(runs)
    draw = int(np.argmax([len(set(r)) < 3 for r in resampling.runs]))  # a draw that repeats a run
    by_hand = [
        reduce(torch.from_numpy(np.repeat(runs[run], resampling.counts[draw, slot].astype(int), axis=0)))["mean"]
        for slot, run in enumerate(resampling.runs[draw])
    ]
    assert len(set(resampling.runs[draw])) < 3
    assert statistics[draw] == pytest.approx(np.mean(by_hand), abs=1e-12)


def test_resampling_is_seeded_and_checks_its_runs():
    first, second = bootstrap.Resampling.draw(4, 10), bootstrap.Resampling.draw(4, 10)
    assert np.array_equal(first.runs, second.runs) and np.array_equal(first.counts, second.counts)
    assert first.counts.shape == (bootstrap.DRAWS, 4, 10) and (first.counts.sum(-1) == 10).all()
    with pytest.raises(ValueError, match="3 runs given"):
        first.statistics([np.zeros((10, 2))] * 3)
    with pytest.raises(ValueError, match="same number of queries"):
        first.statistics([np.zeros((10, 2))] * 3 + [np.zeros((9, 2))])


def _within_run_interval(runs: list[np.ndarray], draws: int, rng) -> tuple[float, float]:
    """The toolkit's former interval: each run's queries resampled on their own, the mean over runs, plain 2.5-97.5
    percentiles; the runs themselves are never resampled."""
    statistics = np.mean(
        [
            bootstrap.statistic(v, rng.multinomial(len(v), np.full(len(v), 1 / len(v)), size=draws).astype(float))
            for v in runs
        ],
        axis=0,
    )
    return tuple(np.percentile(statistics, [2.5, 97.5]))


def test_nested_interval_covers_the_true_mean_when_runs_score_different_queries():
    """200 simulated sweeps of 10 runs, each scoring its own queries (the nested design), with a known between-run
    (sd 0.1) and within-run (sd 0.2) variance: the nested interval must cover the true mean at least 90 % of the
    time; the former within-run interval fails the same test (so this test can fail). The crossed design's coverage
    at the sweeps' setting: test_coverage.py."""
    rng = np.random.default_rng(0)
    true_mean, n_runs, n_queries, layers, sweeps = 0.3, 10, 20, 2, 200
    covered = former = 0
    for sweep in range(sweeps):
        run_means = rng.normal(true_mean, 0.1, n_runs)
        runs = [rng.normal(m, 0.2, (n_queries, layers)) for m in run_means]
        resampling = bootstrap.Resampling.draw(n_runs, n_queries, draws=1000, seed=sweep, crossed=False)
        low, high = bootstrap.interval(resampling.statistics(runs), n_runs)
        covered += low <= true_mean <= high
        low, high = _within_run_interval(runs, 1000, rng)
        former += low <= true_mean <= high
    assert covered / sweeps >= 0.90, covered
    assert former / sweeps < 0.90, former


def test_verdicts_on_hand_made_runs():
    rng = np.random.default_rng(1)
    n = 30

    def paired(shift: float, n_runs: int) -> tuple[tuple[float, float], int]:
        baseline = [rng.normal(rng.normal(0.2, 0.1), 0.05, (n, 3)) for _ in range(n_runs)]
        trained = [b + rng.normal(shift, 0.02) + rng.normal(0, 0.05, b.shape) for b in baseline]
        resampling = bootstrap.Resampling.draw(n_runs, n)
        return bootstrap.interval(resampling.statistics(trained) - resampling.statistics(baseline), n_runs), n_runs

    assert bootstrap.verdict(*paired(0.1, 6)) == "above"  # a clear paired effect, far below the run-to-run spread
    assert bootstrap.verdict(*paired(-0.1, 6)) == "below"
    # equal means, independent run noise on each side
    unpaired = [[rng.normal(rng.normal(0.2, 0.1), 0.05, (n, 3)) for _ in range(6)] for _ in range(2)]
    resampling = bootstrap.Resampling.draw(6, n)
    difference = bootstrap.interval(resampling.statistics(unpaired[0]) - resampling.statistics(unpaired[1]), 6)
    assert bootstrap.verdict(difference, 6) == "no difference shown"
    assert bootstrap.verdict(*paired(0.1, 3)) == "too few runs"
    assert bootstrap.verdict((math.nan, math.nan), 6) == "n/a"


def test_expanded_tail_matches_a_t_interval():
    """Hesterberg's expanded percentile: for normal data its interval has the t interval's width."""
    assert bootstrap.tail(10) == pytest.approx(0.00856, abs=2e-5)
    assert bootstrap.tail(1_000_000) == pytest.approx(0.025, abs=1e-4)
    assert math.isnan(bootstrap.tail(1))


def test_verdicts_table_compares_only_update_similarities_against_each_baseline():
    summary_rows, draws = [], {}
    for model, shift in (("trained", 0.3), ("no_training", 0.0), ("trained_norms", 0.29)):
        for metric in ("simaou", "simam", "simam_before"):
            summary_rows.append(("t", model, "gd", metric, shift, 0.01, 5, math.nan, math.nan))
            spread = np.linspace(-0.01, 0.01, 4001)  # trained_norms' draws move against the trained model's
            draws[("t", model, "gd", metric)] = shift + (-spread if model == "trained_norms" else spread)
    summary = pd.DataFrame(
        summary_rows, columns=["task", "model", "method", "metric", "mean", "std", "runs", "ci_low", "ci_high"]
    )
    verdicts = verdicts_table(summary, draws).set_index("baseline")
    assert set(verdicts.metric) == {"simaou"}  # SimAM after and before FT measure no update
    assert verdicts.loc["no_training", "verdict"] == "above"
    assert verdicts.loc["no_training", "difference"] == pytest.approx(0.3)
    assert verdicts.loc["trained_norms", "verdict"] == "no difference shown"  # differences -0.01 .. 0.03
    draws[("t", "trained_norms", "gd", "simaou")] = 0.29 + np.linspace(-0.01, 0.01, 4001)  # paired: always +0.01
    assert verdicts_table(summary, draws).set_index("baseline").loc["trained_norms", "verdict"] == "above"


def test_lcgd_is_set_against_gd_on_the_trained_model_paired():
    summary_rows, draws = [], {}
    spread = np.linspace(-0.05, 0.05, 4001)
    for method, mean, sign in (("gd", 0.2, 1), ("lcgd", 0.22, 1)):
        for metric in ("simaou", "simam"):
            summary_rows.append(("t", "trained", method, metric, mean, 0.05, 5, math.nan, math.nan))
            draws[("t", "trained", method, metric)] = mean + sign * spread  # wide, but the same draws on both sides
    summary_rows.append(("t", "trained", "lcgd", "alpha", 0.4, 0.1, 5, math.nan, math.nan))
    draws[("t", "trained", "lcgd", "alpha")] = 0.4 + spread
    summary = pd.DataFrame(
        summary_rows, columns=["task", "model", "method", "metric", "mean", "std", "runs", "ci_low", "ci_high"]
    )
    rows = methods_table(summary, draws)
    assert list(rows.metric) == ["simaou"]  # SimAM after FT measures no update; alpha has no GD counterpart
    row = rows.iloc[0]
    assert (row.method, row.baseline, row.verdict) == ("lcgd", "gd", "above")  # +0.02 in every paired draw
    assert row.difference == pytest.approx(0.02) and row.diff_low == pytest.approx(0.02)
