"""The implicit-update and task-vector lenses over one or more results (runs of one model and task): per-layer means
with intervals, and paired verdicts of the model against each untrained baseline.

A measure's value in one run is its mean over queries at a layer (NaN-skipping); over runs, the mean of the runs'
values. Its interval is a bootstrap that resamples what varies: with one run the queries (the interval covers the
queries only), with several the runs and the queries, one query resample shared by the runs of a draw (the runs score
the same queries, which `check_same_design` checks: the crossed design of `bootstrap.Resampling`, with the expanded
percentile interval; it covers run-to-run variance and query sampling). A measure that is one number per layer and
run (the mean update's cosine) gets an interval from two runs on, over runs.

The paired verdict compares the model with a baseline on the same queries of the same runs: the difference of the
measure's mean over layers, its interval from the same draws, and `above` / `below` / `no difference shown`, or
`too few runs` below `bootstrap.MIN_RUNS` runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
import pandas as pd
from torch import Tensor

from iclgd_lens.analysis.bootstrap import LEVEL, Resampling, interval, percentile_interval, statistic, verdict
from iclgd_lens.analysis.implicit_update import implicit_values, path_values
from iclgd_lens.analysis.lens_nulls import check_null_result, other_task_subject, random_scales
from iclgd_lens.analysis.lens_runs import SubjectRuns, subject_runs
from iclgd_lens.analysis.patch_transfer import check_sources, transfer_values
from iclgd_lens.analysis.tables import check_poolable
from iclgd_lens.analysis.task_vectors import shift_values, task_vector_values
from iclgd_lens.backend import LensModel
from iclgd_lens.core.episodes import Episode
from iclgd_lens.core.results import Result, cross_pair_name

RunValues = dict[str, dict[str, np.ndarray]]  # subject -> measure -> [n or 1, layer or point]
QUERY_DRAWS, QUERY_SEED = 4000, 0
# The measures the paired verdicts compare (method-specific ones are named per method).
VERDICT_MEASURES = ("implicit_cos_{m}", "implicit_abs_cos_{m}", "shift_cos_{m}", "shift_abs_cos_{m}", "tv_correct",
                    "transfer_gain_patch_mean")  # fmt: skip


def lens_values(
    model: LensModel,
    result: Result,
    baselines: Sequence[str] | None = None,
    batch_size: int | None = None,
    path: bool = False,
    null: Result | None = None,
    transfer: int | None = None,
) -> RunValues:
    """Every lens measure on the model and each baseline of `result`, and on the model under each of its label
    controls ("model [shuffled]", compared like a baseline) and their cross pairs ("model [ICL true, FT shuffled]":
    the measures that set ICL against a method, `method_measures`): subject -> measure -> values. The model also
    carries the random-direction scale of each cosine (`lens_nulls.random_scales`). `null`: a result of another
    task on the same model, whose methods' updates make the structured null "model [FT on <task>]"
    (`lens_nulls`). `path`: also the path over demonstrations (`implicit_update.path_values`: k more ICL runs and k
    trainings per method and subject). `transfer`: also the mean chained implicit patch of that many source queries
    on the other queries, against each method's update (`patch_transfer`), on the model and each baseline."""
    batch_size = batch_size or result.config.get("batch_size", 8)
    if null is not None:
        check_null_result(result, null, model)
    if transfer is not None:
        check_sources(result.episode, transfer)
    values: RunValues = {}
    trained: dict[str, SubjectRuns] = {}  # labels ("true" or a control's kind) -> the trained model's runs
    sources = [(result, baselines, "true")] + [(control, [], kind) for kind, control in result.controls.items()]
    for source, names, labels in sources:
        for subject in subject_runs(model, source, names):
            measures = implicit_values(subject, source.episode, batch_size)
            measures |= task_vector_values(subject, source.episode, batch_size)
            if path:
                measures |= path_values(subject, source.episode, batch_size)
            if transfer is not None and labels == "true":
                measures |= transfer_values(subject, source.episode, transfer, batch_size)
            suffix = "" if labels == "true" else f" [{labels}]"
            values[subject.name + suffix] = {name: value.numpy() for name, value in measures.items()}
            if subject.name == "model":
                trained[labels] = subject
    values["model"] |= random_scales(model)
    constructed = [(cross_pair(trained, kind, icl), (result if icl == "true" else control).episode)
                   for kind, control in result.controls.items() for icl in ("true", kind)]  # fmt: skip
    if null is not None:
        constructed.append((other_task_subject(trained["true"], result, null, batch_size), result.episode))
    for subject, episode in constructed:
        values[subject.name] = {name: v.numpy() for name, v in method_measures(subject, episode, batch_size).items()}
    return values


def cross_pair(trained: dict[str, SubjectRuns], kind: str, icl: str) -> SubjectRuns:
    """The trained model with ICL's side on `icl`'s labels ("true" or `kind`) and the methods on the other's
    (`Result.crossed` for the similarity metrics). `trained`: the trained model's runs per labels."""
    icl_side, method_side = (trained["true"], trained[kind]) if icl == "true" else (trained[kind], trained["true"])
    readings = {setting: icl_side.readings[setting] for setting in ("zs", "icl")}
    readings |= {method: method_side.readings[method] for method in method_side.deltas}
    return SubjectRuns(f"model [{cross_pair_name(kind, icl)}]", icl_side.model, method_side.deltas, readings,
                       method_side.contexts)  # fmt: skip


def method_measures(subject: SubjectRuns, episode: Episode, batch_size: int) -> dict[str, Tensor]:
    """The measures that set ICL against a method (the implicit update's cosines and norm ratio, the residual
    shift's), for a subject whose ICL side is measured already (a cross pair, the structured null); `episode`: its
    ICL side's."""
    measures = implicit_values(subject, episode, batch_size, exact=False) | shift_values(subject)
    return {name: value for name, value in measures.items() if any(name.endswith(f"_{m}") for m in subject.deltas)}


def check_same_design(named: Sequence[tuple[str, Result]]) -> None:
    """Runs pooled by the lenses: one model and task, one design, the same queries, each run once
    (`tables.check_poolable`). `named`: (folder, result) pairs."""
    tasks = list(dict.fromkeys(result.config["task"] for _, result in named))
    if len(tasks) > 1:
        raise ValueError(
            f"the results are of tasks {tasks}: the lenses pool the runs of one task; give one task's runs"
        )
    check_poolable(named, queries=True)


def per_layer_table(runs: Sequence[RunValues]) -> pd.DataFrame:
    """One row per (measure, subject, layer): mean, low, high, what the interval covers, and the runs."""
    rows = []
    subjects = list(runs[0])
    for subject in subjects:
        for measure in runs[0][subject]:
            per_run = [run[subject][measure] for run in runs]
            for layer in range(per_run[0].shape[1]):
                column = [values[:, [layer]] for values in per_run]
                mean, (low, high), covers = _mean_and_interval(column)
                rows.append({"measure": measure, "subject": subject, "layer": layer, "mean": mean, "low": low,
                             "high": high, "covers": covers, "runs": len(runs)})  # fmt: skip
    return pd.DataFrame(rows)


def verdict_measures(methods: Sequence[str]) -> list[str]:
    """The lenses' verdict measures (VERDICT_MEASURES) for these methods."""
    measures = [m.format(m=method) for m in VERDICT_MEASURES for method in methods if "{m}" in m]
    return measures + [m for m in VERDICT_MEASURES if "{m}" not in m]


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
            diff_mean, diff_interval, covers = _mean_and_interval(difference)
            rows.append({"measure": measure, "baseline": baseline, "model": _mean(model),
                         "baseline_value": _mean(base), "difference": diff_mean,
                         "low": diff_interval[0], "high": diff_interval[1], "covers": covers,
                         "verdict": verdict(diff_interval, len(runs)), "runs": len(runs)})  # fmt: skip
    return pd.DataFrame(rows)


def _mean(per_run: list[np.ndarray]) -> float:
    """The mean over runs of each run's `statistic` (mean over layers of per-layer query means); NaN when no run
    defines it."""
    ones = np.ones((1, per_run[0].shape[0]))
    with np.errstate(invalid="ignore"):
        means = np.array([statistic(values, ones)[0] for values in per_run])
    return float(np.nanmean(means)) if not np.isnan(means).all() else float("nan")


def _mean_and_interval(per_run: list[np.ndarray]) -> tuple[float, tuple[float, float], str]:
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
