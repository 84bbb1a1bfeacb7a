"""A sweep's result folders -> the papers' tables, per-layer figure data, bootstrap intervals and verdicts.

One long table (`summary.csv`) holds every number: per task, model ("trained" or a baseline), method and metric,
the mean over runs, the sample std over runs (ddof 1; undefined with one run) and, for every similarity, the 95 %
two-level bootstrap interval (runs, then queries within runs; `bootstrap`). `verdicts.csv` sets each trained-model
similarity of an update beside the same number on every untrained baseline as a paired difference with its interval
and a verdict, and LCGD's beside GD's on the trained model (baseline "gd"). `views.reproduction` lays them out in
the papers' tables. A run with a label control adds the trained model under it as one more column ("trained
[shuffled]"), compared with the trained model like a baseline. Deterministic (plan order, seeded bootstrap): the
same result folders always give the same
numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from iclgd_lens.analysis.protocol import bootstrap, multiplicity
from iclgd_lens.analysis.protocol.plan import Run
from iclgd_lens.analysis.protocol.sweep import lr_file, run_folder
from iclgd_lens.core.results import Result, cross_pair_name

TRAINED = "trained"
BASELINE_LR_SOURCES = {"matched": "matched", "searched": "searched", "paper": "trained model's"}  # lr.csv's source
SIMILARITIES = (*bootstrap.SIMILARITIES, "alpha")


def load_results(out: Path, plan: list[Run]) -> dict[str, list[Result]]:
    """task -> the finished runs' results, in plan order (missing runs are left out)."""
    results: dict[str, list[Result]] = {}
    for run in plan:
        folder = run_folder(out, run)
        if (folder / "result.json").is_file():
            results.setdefault(run.task, []).append(Result.load(folder))
    return results


# What the runs pooled into one interval must share: one design, measured the same way on the same subjects.
POOLED_DESIGN = (
    "model",
    "task",
    "k",
    "n_eval",
    "methods",
    "baselines",
    "groups",
    "baseline_lr",
    "lr_lcgd_rule",
    "demonstration_labels",
    "position",
)


def check_poolable(named: Sequence[tuple[str, Result]], queries: bool = False) -> None:
    """Refuse, with the folders and what differs, runs that would be pooled wrongly: one run given twice (it would
    count as two independent runs), or runs of one task that differ in design or label controls (`queries`: also
    in their evaluation queries, for a crossed bootstrap). `named`: (folder, result) pairs."""
    seen: dict[tuple, str] = {}
    first_of_task: dict[str, tuple[str, Result]] = {}
    for name, result in named:
        config = result.config
        first_name, first = first_of_task.setdefault(config["task"], (name, result))
        differ = [
            f"{key} {config.get(key)!r} against {first.config.get(key)!r}"
            for key in POOLED_DESIGN
            if config.get(key) != first.config.get(key)
        ]
        if sorted(result.controls) != sorted(first.controls):
            differ.append(f"label controls {sorted(result.controls)} against {sorted(first.controls)}")
        if queries and result.episode.query_rows != first.episode.query_rows:
            differ.append("evaluation queries")
        if differ:
            raise ValueError(
                f"{name!r} and {first_name!r} are runs of one task that differ in {'; '.join(differ)}: "
                "only runs of one design are pooled; give runs of one design (or compare them apart)"
            )
        run = (config["task"], config["seed"], config["permutation"])
        if run in seen:
            raise ValueError(
                f"{seen[run]!r} and {name!r} are the same run (task {run[0]}, seed {run[1]}, permutation "
                f"{run[2]}): pooled twice it would count as two independent runs; give each run once"
            )
        seen[run] = name


def _subjects(result: Result) -> list[tuple[str, Callable[[Result], Result], str]]:
    """(table label, the run's result holding it, its scores' key) for the trained model, each baseline, and the
    trained model under each label control ("trained [shuffled]": compared like a baseline, paired by run and
    query)."""
    subjects = [(TRAINED if m == "model" else m, _itself, m) for m in ["model", *result.config["baselines"]]]
    for kind in result.controls:
        subjects.append((control_label(kind), partial(_control, kind=kind), "model"))
        subjects += [
            (cross_label(kind, icl), partial(Result.crossed, kind=kind, icl=icl), "model") for icl in ("true", kind)
        ]
    return subjects


def control_label(kind: str) -> str:
    return f"{TRAINED} [{kind}]"


CROSS_PREFIX = f"{TRAINED} [ICL "  # every cross pair's label begins so (`cross_pair_name`)
# Metrics with no ICL in them: a cross pair differs from the trained model (or its control) on ICL's side only, so it
# equals one of them exactly there, and a verdict against it is an identity (α against "ICL shuffled, FT true": 0).
NO_ICL = ("alpha",)


def cross_label(kind: str, icl: str) -> str:
    """A cross pair's column (`Result.crossed`): "trained [ICL true, FT shuffled]"."""
    return f"{TRAINED} [{cross_pair_name(kind, icl)}]"


def _itself(result: Result) -> Result:
    return result


def _control(result: Result, kind: str) -> Result:
    return result.controls[kind]


def _scored_similarities(label: str, method: str, metrics: dict) -> tuple[str, ...]:
    """The similarities a subject's `method` is scored on (`metrics`: one run's): α for LCGD only, where the result
    has it; and no metric without ICL (`NO_ICL`) for a cross pair, which equals the trained model or its control
    there exactly, so that its means, intervals and verdicts would be copies or identities."""
    return tuple(
        metric
        for metric in SIMILARITIES
        if not (metric == "alpha" and (method != "lcgd" or "alpha" not in metrics))
        and not (metric in NO_ICL and label.startswith(CROSS_PREFIX))
    )


def _mean_std(values: list[float]) -> tuple[float, float]:
    array = np.array(values, dtype=np.float64)
    defined = array[~np.isnan(array)]
    mean = float(defined.mean()) if defined.size else math.nan
    std = float(defined.std(ddof=1)) if defined.size > 1 else math.nan
    return mean, std


def summary_table(results: dict[str, list[Result]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The long table (task, model, method, metric, mean, std, runs, ci_low, ci_high) and the paired comparisons
    (`verdicts_table`). Every interval is the two-level bootstrap's (`bootstrap`): runs and queries resampled."""
    rows, draws, designs = [], {}, {}
    for task, runs in results.items():
        first = runs[0]
        # One resampling per task, shared by every model, method and metric: comparisons are paired.
        resampling = bootstrap.Resampling.draw(len(runs), len(first.labels), crossed=same_queries(runs))
        designs[task] = resampling.design
        for label, pick, model in _subjects(first):
            picked = [pick(r) for r in runs]  # once: a cross pair is scored when picked
            for method in first.methods:
                per_run = [bootstrap.query_values(r, model, method) for r in picked]
                metrics = [r.scores[model].metrics for r in picked]
                for metric in _scored_similarities(label, method, metrics[0]):
                    means = [m["alpha"]["mean"] if metric == "alpha" else m[method][metric]["mean"] for m in metrics]
                    statistics = resampling.statistics([v[metric] for v in per_run])
                    draws[(task, label, method, metric)] = statistics
                    low, high = bootstrap.interval(statistics, len(runs))
                    rows.append((task, label, method, metric, *_mean_std(means), len(runs), low, high))
                rows.append(
                    (
                        task,
                        label,
                        method,
                        "rec2ftp",
                        *_mean_std([m[method]["rec2ftp"] for m in metrics]),
                        len(runs),
                        math.nan,
                        math.nan,
                    )
                )
                norms = [r.scores[model].update_norm.get(method, {}).get("total", math.nan) for r in picked]
                rows.append((task, label, method, "update_norm", *_mean_std(norms), len(runs), math.nan, math.nan))
                for setting in ("zs", "icl", method):
                    accuracies = [r.scores[model].accuracy[setting] for r in picked]
                    name = f"acc_{'ft' if setting == method else setting}"
                    rows.append((task, label, method, name, *_mean_std(accuracies), len(runs), math.nan, math.nan))
    columns = ["task", "model", "method", "metric", "mean", "std", "runs", "ci_low", "ci_high"]
    table = with_norm_ratios(pd.DataFrame(rows, columns=columns))
    table["bootstrap"] = table["task"].map(designs)
    verdicts = pd.concat([verdicts_table(table, draws), methods_table(table, draws)], ignore_index=True)
    return table, multiplicity.adjust(verdicts)


def same_queries(runs: list[Result]) -> bool:
    """Every run scored the same evaluation queries (a crossed design: `bootstrap.Resampling`)."""
    return len({tuple(r.episode.query_rows) for r in runs}) == 1


def with_norm_ratios(summary: pd.DataFrame) -> pd.DataFrame:
    """`summary` with `norm_ratio` on every row: the subject's mean update norm ‖ΔW‖ for that method over the
    trained model's for the same method and task (1 for the trained model; NaN where either is undefined), so that
    each cell says at what update size it was measured."""
    norms = summary[summary["metric"] == "update_norm"].set_index(["task", "model", "method"])["mean"]
    trained = {(task, method): value for (task, model, method), value in norms.items() if model == TRAINED}
    ratio = [
        norms.get((task, model, method), math.nan) / trained.get((task, method), math.nan)
        for task, model, method in zip(summary["task"], summary["model"], summary["method"])
    ]
    return summary.assign(norm_ratio=ratio)


COMPARED = ("simaou_norm", "simaou", "simam_delta", "alpha")  # similarities of an update (not SimAM after/before FT)
VERDICT_COLUMNS = [
    "task",
    "method",
    "metric",
    "baseline",
    "trained",
    "baseline_mean",
    "difference",
    "diff_low",
    "diff_high",
    "runs",
    "verdict",
    "p_value",
    "norm_ratio",
]


def _paired_row(
    index: pd.DataFrame,
    draws: dict,
    task: str,
    method: str,
    metric: str,
    mine: tuple[str, str],
    theirs: tuple[str, str],
    baseline: str,
) -> dict:
    """A verdict row: the (model, method) `mine` against `theirs` on one task and metric, the paired difference
    (mean over runs of the per-run differences), its two-level bootstrap interval from the same draws on both sides,
    `bootstrap.verdict` (borderline where the Monte Carlo error reaches 0), the p-value that agrees with the
    interval, and `norm_ratio`: `theirs`' update norm over `mine`'s (the update sizes being compared)."""
    ours, other = index.loc[(task, *mine, metric)], index.loc[(task, *theirs, metric)]
    n_runs = int(ours["runs"])
    paired = draws[(task, *mine, metric)] - draws[(task, *theirs, metric)]
    difference = bootstrap.interval(paired, n_runs)
    borderline = bootstrap.is_borderline(paired, n_runs)
    return {
        "task": task,
        "method": method,
        "metric": metric,
        "baseline": baseline,
        "trained": ours["mean"],
        "baseline_mean": other["mean"],
        "difference": ours["mean"] - other["mean"],
        "diff_low": difference[0],
        "diff_high": difference[1],
        "runs": n_runs,
        "verdict": bootstrap.verdict(difference, n_runs, borderline),
        "p_value": bootstrap.p_value(paired, n_runs),
        "norm_ratio": _norm(index, task, theirs) / _norm(index, task, mine),
    }


def _norm(index: pd.DataFrame, task: str, subject: tuple[str, str]) -> float:
    """The (model, method)'s mean update norm over runs; NaN where the summary has none."""
    key = (task, *subject, "update_norm")
    return float(index.loc[key, "mean"]) if key in index.index else math.nan


def verdicts_table(summary: pd.DataFrame, draws: dict[tuple[str, str, str, str], np.ndarray]) -> pd.DataFrame:
    """Per task, method, compared metric (COMPARED) and untrained baseline, label control or cross pair (a cross
    pair has no metric without ICL: `_scored_similarities`): trained − the other subject (`_paired_row`)."""
    index = summary.set_index(["task", "model", "method", "metric"])
    rows = [
        _paired_row(index, draws, task, method, metric, (TRAINED, method), (model, method), model)
        for task, model, method, metric in draws
        if model != TRAINED and metric in COMPARED and (task, TRAINED, method, metric) in draws
    ]
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def methods_table(summary: pd.DataFrame, draws: dict[tuple[str, str, str, str], np.ndarray]) -> pd.DataFrame:
    """LCGD against GD on the trained model (Revisited Table 2's claim), as verdict rows: method "lcgd", baseline
    "gd", the paired difference LCGD − GD (`_paired_row`)."""
    index = summary.set_index(["task", "model", "method", "metric"])
    rows = [
        _paired_row(index, draws, task, "lcgd", metric, (TRAINED, "lcgd"), (TRAINED, "gd"), "gd")
        for task, model, method, metric in draws
        if model == TRAINED and method == "lcgd" and metric in COMPARED and (task, TRAINED, "gd", metric) in draws
    ]
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def per_layer_table(results: dict[str, list[Result]]) -> pd.DataFrame:
    """task, model, method, metric, layer, mean, std, runs: per-layer values over runs (Revisited Figure 3)."""
    rows = []
    for task, runs in results.items():
        for label, pick, model in _subjects(runs[0]):
            metrics = [pick(r).scores[model].metrics for r in runs]  # once: a cross pair is scored when picked
            for method in runs[0].methods:
                for metric in _scored_similarities(label, method, metrics[0]):
                    if metric == "alpha":
                        layers = [m["alpha"]["per_layer"] for m in metrics]
                    else:
                        layers = [m[method][metric]["per_layer"] for m in metrics]
                    for layer, values in enumerate(zip(*layers)):
                        rows.append((task, label, method, metric, layer, *_mean_std(list(values)), len(runs)))
    return pd.DataFrame(rows, columns=["task", "model", "method", "metric", "layer", "mean", "std", "runs"])


def lr_table(out: Path, plan: list[Run], results: dict[str, list[Result]]) -> pd.DataFrame:
    """task, run, paper (one of the papers' own runs), subject ("trained" or a baseline), method, lr, source
    ("given", "search", "GD's" for an LCGD run at GD's lr, "matched" for an lr found to match the update size,
    "searched" for a baseline's own held-out search, or "trained model's" for a baseline at the papers' lr), and for
    a searched lr its held-out accuracy and whether the
    method answered one class."""
    finished = {(r.config["task"], r.config["seed"], r.config["permutation"]): r for rs in results.values() for r in rs}
    rows = []
    for run in plan:
        result = finished.get((run.task, run.seed, run.permutation))
        subjects = [name for name in result.scores] if result else ["model"]
        for subject in subjects:
            for method in result.methods if result else ("gd",):
                rows.append(_lr_row(out, run, result, subject, method))
    return pd.DataFrame(rows)


def _lr_row(out: Path, run: Run, result: Result | None, subject: str, method: str) -> dict:
    path = lr_file(out, run, method)
    search = json.loads(path.read_text()) if path.is_file() and subject == "model" else None
    chosen = [c for c in search["candidates"] if c["lr"] == search["chosen"]] if search else []
    if search:
        source = "search"
    elif subject != "model":
        source = BASELINE_LR_SOURCES[result.config.get("baseline_lr", "paper")]
    elif method == "gd":
        source = "given"
    elif method == "lcgd" and result.config.get("lr_lcgd_rule") == "matched":
        source = "matched"
    else:
        source = "GD's" if result.lr_of(method) == result.config["lr"] else "given"
    return {
        "task": run.task,
        "run": f"seed{run.seed}-perm{run.permutation}",
        "paper": run.paper,
        "subject": TRAINED if subject == "model" else subject,
        "method": method,
        "lr": result.lr_of(method, subject) if result else (search or {}).get("chosen", run.lr),
        "source": source,
        "heldout_accuracy": chosen[0]["accuracy"] if chosen else math.nan,
        "one_class": (search["chosen_one_class"] if search else ""),
        "finished": result is not None,
    }
