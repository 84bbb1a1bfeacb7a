"""A sweep folder's tables: Markdown in the papers' layouts, CSV of every number, per-layer plots.

Reads `analysis.protocol.tables`' DataFrames and lays them out; computes nothing. Every file is replaced atomically and
written deterministically, so a resumed sweep ends with byte-identical files.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from iclgd_lens.analysis.protocol import bootstrap, multiplicity, tables
from iclgd_lens.analysis.protocol.plan import Run, paper_task
from iclgd_lens.analysis.protocol.published import published
from iclgd_lens.files import write_text_atomic
from iclgd_lens.views.markdown import markdown_table
from iclgd_lens.views.plots import per_layer_figure, save_figure

TRAINED = tables.TRAINED
TABLE1_METRICS = ("simaou_norm", "simaou", "simam_delta")  # Revisited Table 1 (its baseline "SimAOU" is SimAOU_norm)
TABLE2_METRICS = ("simaou_norm", "simaou", "simam", "simam_delta", "alpha")  # Revisited Table 2: GD | LCGD
DAI_METRICS = ("rec2ftp", "simaou_norm", "random_simaou", "simam_before", "simam")
PLOTTED_METRICS = ("simaou_norm", "simaou", "simam", "simam_delta")
METRIC_NAMES = {
    "simaou_norm": "SimAOU_norm (Dai's SimAOU)",
    "simaou": "SimAOU (Revisited)",
    "random_simaou": "random-update SimAOU",
    "simam_before": "SimAM before FT",
    "simam": "SimAM (after FT)",
    "simam_delta": "SimAM∆",
    "alpha": "α (LCGD vs GD score updates)",
    "rec2ftp": "Rec2FTP (%)",
}
CSV_FORMAT = "%.6g"
TABLE_FILES = (
    "tables.md",
    "summary.csv",
    "verdicts.csv",
    "per_layer.csv",
    "lr.csv",
    *(f"per_layer_{m}.png" for m in PLOTTED_METRICS),
)


def write_tables(out: Path, plan: list[Run], model: str) -> list[str]:
    """Write every table and plot of the finished runs into `out`; returns the names of missing runs."""
    results = tables.load_results(out, plan)
    finished = {(r.config["task"], r.config["seed"], r.config["permutation"]) for rs in results.values() for r in rs}
    missing = [run.name for run in plan if (run.task, run.seed, run.permutation) not in finished]
    lrs = tables.lr_table(out, plan, results)
    write_text_atomic(out / "lr.csv", lrs.to_csv(index=False, float_format=CSV_FORMAT))
    if not results:
        return missing
    summary, verdicts = tables.summary_table(results)
    per_layer = tables.per_layer_table(results)
    write_text_atomic(out / "summary.csv", summary.to_csv(index=False, float_format=CSV_FORMAT))
    write_text_atomic(out / "verdicts.csv", verdicts.to_csv(index=False, float_format=CSV_FORMAT))
    write_text_atomic(out / "per_layer.csv", per_layer.to_csv(index=False, float_format=CSV_FORMAT))
    write_text_atomic(out / "tables.md", markdown_report(summary, verdicts, lrs, model, missing))
    for metric in PLOTTED_METRICS:
        save_figure(per_layer_figure(per_layer, metric), out / f"per_layer_{metric}.png")
    return missing


def _cell(row) -> str:
    if row is None or math.isnan(row["mean"]):
        return "NaN"
    text = f"{row['mean']:.3f}"
    if not math.isnan(row["std"]):
        text += f" ± {row['std']:.3f}"
    if not math.isnan(row["ci_low"]):
        text += f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    return text


def _published(task: str, models: list[str], method: str, metric: str, source: str | None = None) -> str:
    """The papers' number(s) for this cell's paper task ("a / b / c" for several models), or "" where none."""
    values = [published(paper_task(task), source or model, method, metric) for model in models]
    shown = [f"{v:g}" if v is not None else "–" for v in values]
    return "" if all(v is None for v in values) else " / ".join(shown)


def _verdict_cell(row) -> str:
    """trained − baseline with its paired interval and the verdict; a primary contrast's Holm-adjusted verdict;
    the compared update's size relative to the first side's (‖ΔW‖ ×ratio)."""
    if row is None:
        return ""
    interval = "" if math.isnan(row["diff_low"]) else f" [{row['diff_low']:+.3f}, {row['diff_high']:+.3f}]"
    cell = f"{row['difference']:+.3f}{interval}: {row['verdict']}"
    if row.get("family") == multiplicity.PRIMARY:
        cell += f"; Holm: {row['adjusted_verdict']}"
    ratio = row.get("norm_ratio", math.nan)
    return cell if math.isnan(ratio) else f"{cell} (‖ΔW‖ ×{ratio:.3g})"


def _beside_baselines(
    summary: pd.DataFrame, verdicts: pd.DataFrame, metrics: tuple[str, ...], methods: tuple[str, ...]
) -> str:
    """One table per metric: rows task x method, columns the trained model, each baseline, the paired difference
    and verdict against each baseline (compared metrics only), and the published 1.3B numbers of the task's paper
    task (trained model, then each baseline the papers report)."""
    baselines = others(summary)
    models = [TRAINED, *baselines]
    index = summary.set_index(["task", "model", "method", "metric"])
    compared = verdicts.set_index(["task", "method", "metric", "baseline"])
    parts = []
    for metric in metrics:
        rows = []
        for task in dict.fromkeys(summary.task):
            for method in methods:
                key = (task, TRAINED, method, metric)
                if key not in index.index:
                    continue
                cells = [
                    index.loc[(task, m, method, metric)] if (task, m, method, metric) in index.index else None
                    for m in models
                ]
                versus = [
                    compared.loc[(task, method, metric, b)] if (task, method, metric, b) in compared.index else None
                    for b in baselines
                ]
                rows.append(
                    [
                        task,
                        method,
                        *[_cell(c) for c in cells],
                        *[_verdict_cell(v) for v in versus],
                        _published(task, models, method, metric),
                    ]
                )
        if rows:
            header = [
                "task",
                "method",
                *models,
                *[f"trained − {b}" for b in baselines],
                "published 1.3B (trained, then the baselines)",
            ]
            parts.append(f"**{METRIC_NAMES[metric]}**\n\n" + markdown_table(header, rows))
    return "\n\n".join(parts)


def others(summary: pd.DataFrame) -> list[str]:
    """What the trained model is set against: the baselines, then the trained model under each label control."""
    return sorted(set(summary.model) - {TRAINED}, key=lambda name: (is_control(name), name))


def is_control(name: str) -> bool:
    """Whether a table's model label is the trained model under a label control ("trained [shuffled]"), not a
    baseline (whose names may start with "trained" too)."""
    return name.startswith(f"{TRAINED} [")


def dai_table(summary: pd.DataFrame) -> str:
    """Trained model: rows task x method, one column per Dai metric, then Dai et al.'s published values (GD)."""
    trained = summary[summary.model == TRAINED].set_index(["task", "method", "metric"])
    rows = []
    for task in dict.fromkeys(summary.task):
        for method in dict.fromkeys(summary[summary.task == task].method):
            cells = [
                _cell(trained.loc[(task, method, m)]) if (task, method, m) in trained.index else "" for m in DAI_METRICS
            ]
            paper = " / ".join(_published(task, [TRAINED], "gd", m, "dai") or "–" for m in DAI_METRICS)
            rows.append([task, method, *cells, paper if method == "gd" else ""])
    return markdown_table(["task", "method", *DAI_METRICS, "published 1.3B (same metrics, GD)"], rows)


def accuracy_table(summary: pd.DataFrame) -> str:
    """Trained model (and under each label control, its own row): ZS, ICL and each method's finetuned accuracy per
    task."""
    labels = [TRAINED, *[name for name in others(summary) if is_control(name)]]
    methods = list(dict.fromkeys(summary[summary.model == TRAINED].method))
    rows = []
    for task in dict.fromkeys(summary.task):
        for label in labels:
            part = summary[(summary.task == task) & (summary.model == label)].set_index(["method", "metric"])
            if part.empty:
                continue
            cells = [_cell(part.loc[(methods[0], "acc_zs")]), _cell(part.loc[(methods[0], "acc_icl")])]
            paper = (
                " / ".join(_published(task, [TRAINED], "gd", m, "dai") or "–" for m in ("acc_zs", "acc_icl", "acc_ft"))
                if label == TRAINED
                else ""
            )
            name = task if label == TRAINED else f"{task} {label.removeprefix(TRAINED).strip()}"
            rows.append([name, *cells, *[_cell(part.loc[(m, "acc_ft")]) for m in methods], paper])
    return markdown_table(["task", "ZS", "ICL", *[m.upper() for m in methods], "published 1.3B ZS / ICL / GD"], rows)


def lcgd_against_gd_table(verdicts: pd.DataFrame) -> str:
    """Rows task x metric: LCGD's and GD's means on the trained model, the paired difference and its verdict."""
    rows = [
        [r.task, METRIC_NAMES[r.metric], f"{r.trained:.3f}", f"{r.baseline_mean:.3f}", _verdict_cell(r._asdict())]
        for r in verdicts[verdicts.baseline == "gd"].itertuples()
    ]
    return markdown_table(["task", "metric", "LCGD", "GD", "LCGD − GD"], rows)


def update_norm_table(summary: pd.DataFrame) -> str:
    """Rows task x method: the Frobenius norm of the whole update on the trained model and each baseline."""
    models = [TRAINED, *others(summary)]
    index = summary.set_index(["task", "model", "method", "metric"])
    rows = []
    for task in dict.fromkeys(summary.task):
        for method in dict.fromkeys(summary[summary.task == task].method):
            rows.append(
                [
                    task,
                    method,
                    *[
                        _cell(index.loc[(task, m, method, "update_norm")])
                        if (task, m, method, "update_norm") in index.index
                        else ""
                        for m in models
                    ],
                ]
            )
    return markdown_table(["task", "method", *models], rows)


def markdown_report(
    summary: pd.DataFrame, verdicts: pd.DataFrame, lrs: pd.DataFrame, model: str, missing: list[str]
) -> str:
    methods = tuple(dict.fromkeys(summary.method))
    runs = sorted(set(summary.runs.astype(int)))
    sections = [
        f"# Reproduction tables: {model}",
        f"Runs per task: {', '.join(map(str, runs))}. Each cell: mean ± sample std over runs [95 % interval]. "
        "Every interval is a two-level bootstrap: each draw resamples the runs with replacement and the queries "
        f"with replacement ({_designs(summary)}), so it covers the run-to-run variance (seed, demonstrations, "
        "order, learning-rate choice) and the query sampling; the percentiles are expanded for the number of runs "
        f"(Hesterberg's expanded percentile interval). `trained − baseline`: the paired difference (the same runs "
        "and queries on both sides of every draw) with its interval and a verdict: `above` / `below` when the "
        "interval excludes 0, `no difference shown` when it contains 0, `borderline` when an end lies within the "
        "bootstrap's Monte Carlo error of 0 (counted neither way), `too few runs` below "
        f"{bootstrap.MIN_RUNS} runs. Verdicts are read one by one at 95 % (exploratory) except the primary "
        f"contrasts, {multiplicity.PRIMARY_METRIC} of GD and of LCGD against each untrained baseline, whose "
        '`Holm:` verdict is adjusted within each task and method (docs/science.md, "Multiplicity"). '
        "`‖ΔW‖ ×r`: the compared update's norm over the first side's (1: matched update size). "
        "Only similarities of an update are compared (SimAOU_norm, SimAOU, SimAM∆, α), "
        "not SimAM after or before FT. `published`: the papers' numbers for the task's paper task (fairseq 1.3B, "
        "real data; a synthetic or stand-in task takes its paper task's): a different model and data, for "
        "direction, not for equality. Revisited's \"No Training\" row is the toolkit's `trained_norms`.",
    ]
    if missing:
        sections.append(f"Missing runs (not finished; every table leaves them out): {', '.join(missing)}")
    sections += [
        "## Accuracy (trained model)\n\n" + accuracy_table(summary),
        "## Revisited Table 1: GD on the trained model and the untrained baselines\n\n"
        + _beside_baselines(summary, verdicts, TABLE1_METRICS, ("gd",)),
        "## Revisited Table 2: GD | LCGD\n\n" + _beside_baselines(summary, verdicts, TABLE2_METRICS, methods),
        "## LCGD against GD on the trained model (Revisited Table 2's claim), paired\n\n"
        + lcgd_against_gd_table(verdicts),
        "## Dai et al.: Rec2FTP, SimAOU (normalised) against the random update, SimAM before and after FT\n\n"
        + dai_table(summary),
        "## Update size: ‖ΔW‖ over every trained tensor (compare methods at matched update size)\n\n"
        + update_norm_table(summary),
        "## Learning rates\n\n"
        + markdown_table(list(lrs.columns), [[_plain(v) for v in row] for row in lrs.itertuples(index=False)]),
    ]
    return "\n\n".join(sections) + "\n"


def _designs(summary: pd.DataFrame) -> str:
    """How the queries were resampled, per design present: crossed (shared by a draw's runs) or nested."""
    if "bootstrap" not in summary:
        return "within each drawn run"
    said = {
        "crossed": "every run scores the same queries, so one query resample is shared by the runs of a draw",
        "nested": "runs score different queries, so the queries are resampled within each drawn run",
    }
    designs = summary.groupby("bootstrap").task.unique()
    return "; ".join(f"{said[d]}: {', '.join(tasks)}" for d, tasks in designs.items())


def _plain(value) -> str:
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:g}"
    return str(value)
