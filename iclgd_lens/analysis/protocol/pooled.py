"""Per-layer means with intervals and paired verdicts over one or more runs of one task, for measures kept per query:
the lenses' and Kendall's.

A measure's value in one run is its mean over queries at a layer (NaN-skipping); over runs, the mean of the runs'
values. Its interval is a bootstrap that resamples what varies: with one run the queries (the interval covers the
queries only), with several the runs and the queries, one query resample shared by the runs of a draw (the runs score
the same queries: the crossed design of `bootstrap.Resampling`, with the expanded percentile interval; it covers
run-to-run variance and query sampling). A measure that is one number per layer and run gets an interval from two
runs on, over runs. The paired verdict compares the model with every other subject on the same queries of the same
runs: the difference of the measure's mean over layers, its interval from the same draws, and `above` / `below` /
`no difference shown`, or `too few runs` below `bootstrap.MIN_RUNS` runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from iclgd_lens.analysis.protocol.bootstrap import LEVEL, Resampling, interval, percentile_interval, statistic, verdict

RunValues = dict[str, dict[str, np.ndarray]]  # subject -> measure -> [n or 1, layer or point]
QUERY_DRAWS, QUERY_SEED = 4000, 0


def per_layer_table(runs: Sequence[RunValues]) -> pd.DataFrame:
    """One row per (measure, subject, layer): mean, low, high, what the interval covers, and the runs."""
    rows = []
    subjects = list(runs[0])
    for subject in subjects:
        for measure in runs[0][subject]:
            per_run = [run[subject][measure] for run in runs]
            for layer in range(per_run[0].shape[1]):
                column = [values[:, [layer]] for values in per_run]
                mean, (low, high), covers = mean_and_interval(column)
                rows.append(
                    {
                        "measure": measure,
                        "subject": subject,
                        "layer": layer,
                        "mean": mean,
                        "low": low,
                        "high": high,
                        "covers": covers,
                        "runs": len(runs),
                    }
                )
    return pd.DataFrame(rows)


def paired_table(runs: Sequence[RunValues], measures: Sequence[str]) -> pd.DataFrame:
    """Model − every other subject of each of `measures`' mean over layers, paired by run and query (`measures`
    a subject lacks are left out for it)."""
    rows = []
    for baseline in [s for s in runs[0] if s != "model"]:
        for measure in [m for m in measures if m in runs[0][baseline] and m in runs[0]["model"]]:
            difference = [run["model"][measure] - run[baseline][measure] for run in runs]
            # both sides on the (query, layer) pairs defined in both, so that model − baseline is the difference
            model = [np.where(np.isnan(d), np.nan, run["model"][measure]) for d, run in zip(difference, runs)]
            base = [np.where(np.isnan(d), np.nan, run[baseline][measure]) for d, run in zip(difference, runs)]
            diff_mean, diff_interval, covers = mean_and_interval(difference)
            rows.append(
                {
                    "measure": measure,
                    "baseline": baseline,
                    "model": _mean(model),
                    "baseline_value": _mean(base),
                    "difference": diff_mean,
                    "low": diff_interval[0],
                    "high": diff_interval[1],
                    "covers": covers,
                    "verdict": verdict(diff_interval, len(runs)),
                    "runs": len(runs),
                }
            )
    return pd.DataFrame(rows)


def pooled_file(folder: Path, name: str, command: str) -> Path:
    """`folder`/`name`, a table that `iclgd-lens command` writes; a clear error where it is missing."""
    path = Path(folder) / name
    if not path.is_file():
        raise ValueError(f"{path} does not exist: not a folder written by `iclgd-lens {command}`")
    return path


def measure_layers(per_layer: pd.DataFrame, measure: str, where: str) -> pd.DataFrame:
    """`measure`'s rows of a `per_layer_table` (as read back from its CSV) for every subject that has it, the model
    first and the others as found: columns layer, subject, mean, low, high. `where` names the file in the error
    for a measure the table lacks."""
    rows = per_layer[per_layer["measure"] == measure]
    if rows.empty:
        known = ", ".join(sorted(set(per_layer["measure"])))
        raise ValueError(f"{where} has no measure {measure!r}; it has: {known}")
    subjects = sorted(dict.fromkeys(rows["subject"]), key=lambda s: s != "model")
    ordered = pd.concat([rows[rows["subject"] == s] for s in subjects])
    return ordered[["layer", "subject", "mean", "low", "high"]].reset_index(drop=True)


def _mean(per_run: list[np.ndarray]) -> float:
    """The mean over runs of each run's `statistic` (mean over layers of per-layer query means); NaN when no run
    defines it."""
    ones = np.ones((1, per_run[0].shape[0]))
    with np.errstate(invalid="ignore"):
        means = np.array([statistic(values, ones)[0] for values in per_run])
    return float(np.nanmean(means)) if not np.isnan(means).all() else float("nan")


def mean_and_interval(per_run: list[np.ndarray]) -> tuple[float, tuple[float, float], str]:
    """`_mean`, its interval, and what the interval covers."""
    mean = _mean(per_run)
    n_queries = per_run[0].shape[0]
    if len(per_run) > 1:
        draws = _resampling(len(per_run), n_queries).statistics(per_run)
        return mean, interval(draws, len(per_run)), "runs and queries"
    if n_queries == 1:
        return mean, (float("nan"), float("nan")), "none (one value per run: give several runs)"
    with np.errstate(invalid="ignore"):
        draws = statistic(per_run[0], _query_counts(n_queries))
    return mean, percentile_interval(draws, (1 - LEVEL) / 2), "queries"


@cache
def _resampling(n_runs: int, n_queries: int) -> Resampling:
    """One draw per design, shared by every measure, subject and layer (so that differences are paired)."""
    return Resampling.draw(n_runs, n_queries)


@cache
def _query_counts(n_queries: int) -> np.ndarray:
    """[draws, n] bootstrap counts over the queries of one run, shared likewise."""
    rng = np.random.default_rng(QUERY_SEED)
    return rng.multinomial(n_queries, np.full(n_queries, 1.0 / n_queries), size=QUERY_DRAWS).astype(np.float64)
