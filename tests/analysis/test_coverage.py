"""The sweeps' bootstrap intervals cover the truth at the setting the sweeps use (5 runs, 64 queries, the tables'
draws and seed), on simulated crossed data; the former nested resampling fails the same test (so it can fail).

1,000 simulated sweeps each: the Monte Carlo standard error of a coverage near 95 % is 0.7 points."""

import pytest

from iclgd_lens.analysis.protocol import bootstrap
from iclgd_lens.analysis.protocol.coverage import Effects, coverage

pytestmark = pytest.mark.slow

MIXES = {
    "queries dominate": Effects(run=0.01, query=0.20, interaction=0.10),
    "balanced": Effects(run=0.05, query=0.10, interaction=0.10),
    "runs dominate": Effects(run=0.10, query=0.05, interaction=0.05),
}


@pytest.mark.parametrize("mix", list(MIXES))
def test_crossed_intervals_cover_at_least_93_percent_for_normal_effects(mix):
    measured = coverage(MIXES[mix])
    assert measured.sweeps == 1000 and measured.mc_error < 0.01
    assert measured.share >= 0.93, measured


def test_the_nested_scheme_undercovers_crossed_data():
    nested = coverage(MIXES["queries dominate"], crossed=False)
    crossed = coverage(MIXES["queries dominate"])
    assert nested.share < 0.93 <= crossed.share, (nested, crossed)
    assert nested.width < crossed.width  # the query term divided by the number of runs


def test_a_crossed_draw_resamples_the_same_queries_in_every_slot():
    crossed = bootstrap.Resampling.draw(5, 64)
    nested = bootstrap.Resampling.draw(5, 64, crossed=False)
    assert (crossed.counts == crossed.counts[:, :1]).all() and crossed.design == "crossed"
    assert not (nested.counts == nested.counts[:, :1]).all() and nested.design == "nested"
    assert (crossed.counts.sum(-1) == 64).all()
