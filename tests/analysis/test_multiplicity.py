"""The multiplicity policy: Holm and Benjamini-Hochberg against hand-worked decisions, p-values that agree with the
intervals, borderline verdicts, and the primary family of a verdicts table."""

import math

import numpy as np
import pandas as pd
import pytest

from iclgd_lens.analysis.protocol import bootstrap, multiplicity
from iclgd_lens.analysis.protocol.tables import VERDICT_COLUMNS


def test_holm_and_bh_on_hand_worked_p_values():
    p = np.array([0.01, 0.04, 0.03, 0.005, math.nan])
    # Holm, m = 4 defined: sorted 0.005, 0.01, 0.03, 0.04 -> 4·0.005, 3·0.01, 2·0.03, max(0.06, 1·0.04)
    assert multiplicity.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02, math.nan], nan_ok=True)
    # at 5 %: Holm rejects 0.005 (0.005 < 0.05 / 4) and 0.01 (< 0.05 / 3), then stops at 0.03 (> 0.05 / 2)
    assert list(multiplicity.holm(p) < 0.05) == [True, False, False, True, False]
    # BH: 0.005·4/1 = 0.02, 0.01·4/2 = 0.02, 0.03·4/3 = 0.04, 0.04·4/4 = 0.04 -> every defined one at 5 %
    assert multiplicity.benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02, math.nan], nan_ok=True)


def test_p_value_agrees_with_the_interval():
    rng = np.random.default_rng(3)
    for shift in np.linspace(-0.02, 0.02, 41):
        draws = rng.normal(shift, 0.006, bootstrap.DRAWS)
        low, high = bootstrap.interval(draws, 5)
        excludes = low > 0 or high < 0
        p = bootstrap.p_value(draws, 5)
        if abs(p - 0.05) > 0.005:  # away from the edge, where the quantile's interpolation decides
            assert excludes == (p < 0.05), (shift, p, low, high)
    assert bootstrap.p_value(np.full(100, np.nan), 5) != bootstrap.p_value(np.full(100, np.nan), 5)  # NaN


def test_p_value_floor_and_what_five_runs_can_reach():
    all_above = np.linspace(0.1, 0.2, bootstrap.DRAWS)
    assert bootstrap.p_value(all_above, 5) == pytest.approx(bootstrap.smallest_p(5))
    assert 0.03 < bootstrap.smallest_p(5) < 0.05 / 1  # one test at 5 runs: reachable
    assert bootstrap.smallest_p(5) * 3 > 0.05  # Holm over three baselines at 5 runs: not
    assert bootstrap.smallest_p(10) * 3 < 0.05  # at 10 runs: reachable


def test_an_interval_end_within_monte_carlo_error_of_zero_is_borderline():
    lower_tail = bootstrap.tail(5)
    draws = np.sort(np.random.default_rng(0).normal(0.01, 0.002, bootstrap.DRAWS))
    clear = bootstrap.interval(draws, 5)
    assert clear[0] > 0 and not bootstrap.is_borderline(draws, 5)
    assert bootstrap.verdict(clear, 5, bootstrap.is_borderline(draws, 5)) == "above"
    edge = draws - np.quantile(draws, lower_tail)  # the lower end exactly at 0 ...
    edge += 1e-9  # ... and just above it: the raw interval excludes 0
    low, high = bootstrap.interval(edge, 5)
    assert low > 0 and bootstrap.is_borderline(edge, 5)
    assert bootstrap.verdict((low, high), 5, bootstrap.is_borderline(edge, 5)) == "borderline"


def _row(task, method, metric, baseline, verdict, p, runs=10):
    values = dict(
        task=task,
        method=method,
        metric=metric,
        baseline=baseline,
        trained=0.2,
        baseline_mean=0.1,
        difference=0.1,
        diff_low=0.01,
        diff_high=0.2,
        runs=runs,
        verdict=verdict,
        p_value=p,
        norm_ratio=1.0,
    )
    return [values[c] for c in VERDICT_COLUMNS]


def test_adjust_holms_each_primary_family_and_labels_the_rest_exploratory():
    rows = [
        _row("t", "gd", "simaou_norm", "no_training", "above", 0.004),
        _row("t", "gd", "simaou_norm", "trained_norms", "above", 0.02),  # Holm: 2·0.02 = 0.04 < 0.05, kept
        _row("t", "gd", "simaou_norm", "trained_embeddings", "below", 0.03),  # 1·0.03 but step-down max 0.04: kept
        _row("t", "lcgd", "simaou_norm", "no_training", "above", 0.02),  # 3·0.02 = 0.06: not shown after adjusting
        _row("t", "lcgd", "simaou_norm", "trained_norms", "borderline", 0.049),
        _row("t", "lcgd", "simaou_norm", "trained_embeddings", "no difference shown", 0.5),
        _row("t", "gd", "simam_delta", "no_training", "above", 0.001),  # another metric: exploratory
        _row("t", "lcgd", "simaou_norm", "gd", "above", 0.001),  # LCGD against GD: exploratory
    ]
    adjusted = multiplicity.adjust(pd.DataFrame(rows, columns=VERDICT_COLUMNS))
    assert list(adjusted.family) == ["primary"] * 6 + ["exploratory"] * 2
    assert adjusted.adjusted_p[:3].tolist() == pytest.approx([0.012, 0.04, 0.04])
    assert list(adjusted.adjusted_verdict) == [
        "above",
        "above",
        "below",
        "no difference shown",
        "borderline",
        "no difference shown",
        "",
        "",
    ]
    assert math.isnan(adjusted.adjusted_p[6])


def test_adjust_says_too_few_runs_where_holm_cannot_be_met():
    rows = [
        _row("t", "gd", "simaou_norm", b, "above", bootstrap.smallest_p(5), runs=5)
        for b in ("no_training", "trained_norms", "trained_embeddings")
    ]
    adjusted = multiplicity.adjust(pd.DataFrame(rows, columns=VERDICT_COLUMNS))
    assert set(adjusted.adjusted_verdict) == {"too few runs"}
