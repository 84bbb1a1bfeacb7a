"""A sweep's result folders -> the papers' tables, per-layer figure data and bootstrap intervals.

One long table (`summary.csv`) holds every number: per task, model ("trained" or a baseline), method and metric,
the mean over runs, the sample std over runs (ddof 1; undefined with one run) and, for every similarity, the 95 %
bootstrap interval over queries within each run (`bootstrap`). Each trained-model similarity is set beside the
same number on every untrained baseline: `above_baselines` says whether its interval lies above all of theirs.
`views.reproduction` lays it out in the papers' tables. Deterministic (plan order, seeded bootstrap): the same
result folders always give the same numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from iclgd_lens.analysis import bootstrap
from iclgd_lens.analysis.protocol import Run
from iclgd_lens.analysis.sweep import lr_file, run_folder
from iclgd_lens.results import Result

TRAINED = "trained"
SIMILARITIES = (*bootstrap.SIMILARITIES, "alpha")


def load_results(out: Path, plan: list[Run]) -> dict[str, list[Result]]:
    """task -> the finished runs' results, in plan order (missing runs are left out)."""
    results: dict[str, list[Result]] = {}
    for run in plan:
        folder = run_folder(out, run)
        if (folder / "result.json").is_file():
            results.setdefault(run.task, []).append(Result.load(folder))
    return results


def _models(result: Result) -> list[str]:
    return ["model", *result.config["baselines"]]


def _mean_std(values: list[float]) -> tuple[float, float]:
    array = np.array(values, dtype=np.float64)
    defined = array[~np.isnan(array)]
    mean = float(defined.mean()) if defined.size else math.nan
    std = float(defined.std(ddof=1)) if defined.size > 1 else math.nan
    return mean, std


def summary_table(results: dict[str, list[Result]]) -> pd.DataFrame:
    """The long table: task, model, method, metric, mean, std, runs, ci_low, ci_high, above_baselines."""
    rows = []
    for task, runs in results.items():
        first = runs[0]
        counts = bootstrap.run_counts([len(r.labels) for r in runs])  # shared: every model sees the same queries
        for model in _models(first):
            label = TRAINED if model == "model" else model
            for method in first.methods:
                per_run = [bootstrap.query_values(r, model, method) for r in runs]
                metrics = [r.scores[model]["metrics"] for r in runs]
                for metric in SIMILARITIES:
                    if metric == "alpha" and (method != "lcgd" or "alpha" not in metrics[0]):
                        continue
                    means = [m["alpha"]["mean"] if metric == "alpha" else m[method][metric]["mean"] for m in metrics]
                    low, high = bootstrap.interval([v[metric] for v in per_run], counts)
                    rows.append((task, label, method, metric, *_mean_std(means), len(runs), low, high))
                rows.append((task, label, method, "rec2ftp", *_mean_std([m[method]["rec2ftp"] for m in metrics]),
                             len(runs), math.nan, math.nan))  # fmt: skip
                for setting in ("zs", "icl", method):
                    accuracies = [r.scores[model]["accuracy"][setting] for r in runs]
                    name = f"acc_{'ft' if setting == method else setting}"
                    rows.append((task, label, method, name, *_mean_std(accuracies), len(runs), math.nan, math.nan))
    columns = ["task", "model", "method", "metric", "mean", "std", "runs", "ci_low", "ci_high"]
    table = pd.DataFrame(rows, columns=columns)
    table["above_baselines"] = _above_baselines(table)
    return table


COMPARED = ("simaou_norm", "simaou", "simam", "simam_delta", "alpha")  # the similarities of an update to ICL's


def _above_baselines(table: pd.DataFrame) -> list[str]:
    """Per row: for a trained-model similarity of an update (COMPARED), "yes" when its interval lies above every
    baseline's, "no" when it does not, "n/a" without baselines or an interval; empty elsewhere (baseline rows,
    numbers without intervals, the random-update baseline and SimAM before FT, which measure no method's update)."""
    baselines = table[table.model != TRAINED].set_index(["task", "method", "metric"])
    out = []
    for row in table.itertuples():
        if row.model != TRAINED or row.metric not in COMPARED:
            out.append("")
            continue
        key = (row.task, row.method, row.metric)
        theirs = baselines.loc[[key]] if key in baselines.index else None
        if theirs is None or math.isnan(row.ci_low) or theirs.ci_high.isna().any():
            out.append("n/a")
        else:
            out.append("yes" if row.ci_low > theirs.ci_high.max() else "no")
    return out


def per_layer_table(results: dict[str, list[Result]]) -> pd.DataFrame:
    """task, model, method, metric, layer, mean, std, runs: per-layer values over runs (Revisited Figure 3)."""
    rows = []
    for task, runs in results.items():
        for model in _models(runs[0]):
            label = TRAINED if model == "model" else model
            for method in runs[0].methods:
                metrics = [r.scores[model]["metrics"] for r in runs]
                for metric in SIMILARITIES:
                    if metric == "alpha":
                        if method != "lcgd" or "alpha" not in metrics[0]:
                            continue
                        layers = [m["alpha"]["per_layer"] for m in metrics]
                    else:
                        layers = [m[method][metric]["per_layer"] for m in metrics]
                    for layer, values in enumerate(zip(*layers)):
                        rows.append((task, label, method, metric, layer, *_mean_std(list(values)), len(runs)))
    return pd.DataFrame(rows, columns=["task", "model", "method", "metric", "layer", "mean", "std", "runs"])


def lr_table(out: Path, plan: list[Run], results: dict[str, list[Result]]) -> pd.DataFrame:
    """task, run, lr, source, and for a searched lr its held-out accuracy and whether GD answered one class."""
    finished = {(r.config["task"], r.config["seed"], r.config["permutation"]): r for rs in results.values() for r in rs}
    rows = []
    for run in plan:
        result = finished.get((run.task, run.seed, run.permutation))
        path = lr_file(out, run)
        search = json.loads(path.read_text()) if run.lr is None and path.is_file() else None
        chosen = [c for c in search["candidates"] if c["lr"] == search["chosen"]] if search else []
        rows.append({
            "task": run.task,
            "run": f"seed{run.seed}-perm{run.permutation}",
            "lr": result.config["lr"] if result else (search or {}).get("chosen", run.lr),
            "source": "search" if run.lr is None else "given",
            "heldout_accuracy": chosen[0]["accuracy"] if chosen else math.nan,
            "one_class": (search["chosen_one_class"] if search else ""),
            "finished": result is not None,
        })  # fmt: skip
    return pd.DataFrame(rows)
