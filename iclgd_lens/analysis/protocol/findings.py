"""The findings' counts, computed from committed sweeps' tables (`summary.csv`, `verdicts.csv`, `sweep.json`), so
that no number of the README's findings or of docs/findings.md's summary is typed by hand
(`views.findings` lays them out; `scripts/findings.py` writes them into those pages; a test fails when a number
there is not the generator's).

One `PairCounts` per (sweep, task): the trained model's accuracies, the update sizes the subjects were compared at,
and counts of the paired verdicts against the untrained baselines, raw (exploratory) and, where the sweep has them,
Holm-adjusted (primary).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from iclgd_lens.analysis.protocol import bootstrap
from iclgd_lens.analysis.protocol.multiplicity import PRIMARY

GD_METRICS = ("simaou_norm", "simaou", "simam_delta")  # GD's similarities to ICL set against each baseline
VERDICTS = (bootstrap.ABOVE, bootstrap.BELOW, bootstrap.NO_DIFFERENCE, bootstrap.BORDERLINE)


@dataclass(frozen=True)
class PairCounts:
    """What one (sweep, task) shows against the untrained baselines."""

    sweep: str  # the sweep folder's name
    model: str
    task: str
    lr: str  # "paper", "search" or a number: how GD's lr was chosen
    baseline_lr: str  # "matched" or "paper"
    lcgd_lr: str  # "matched", "gd", "search" or a number
    runs: int
    bootstrap: str  # "crossed" or "nested" (summary.csv's column; tables from before it: nested, the only scheme)
    zs: float  # accuracy, mean over runs
    icl: float
    gd_norm_ratio: float  # the largest baseline ‖ΔW‖ / trained ‖ΔW‖ for GD, means over runs
    gd: dict[str, int] = field(default_factory=dict)  # verdict -> count over GD_METRICS x baselines
    alpha: dict[str, int] = field(default_factory=dict)  # verdict -> count over baselines
    primary: dict[str, dict[str, int]] = field(default_factory=dict)  # method -> Holm-adjusted verdict -> count

    @property
    def design(self) -> tuple[str, str, str, str]:
        """What makes two sweeps' rows the same measurement: model, task, GD's lr rule, the baselines' lr rule."""
        return self.model, self.task, self.lr, self.baseline_lr

    @property
    def gd_total(self) -> int:
        return sum(self.gd.values())

    @property
    def alpha_total(self) -> int:
        return sum(self.alpha.values())


def load_pairs(results: Path, sweeps: list[str] | None = None) -> list[PairCounts]:
    """Every (sweep, task) of the sweep folders under `results` (those named in `sweeps`, in that order; default:
    every folder with a sweep.json, summary.csv and verdicts.csv, by name) whose sweep trains K/V without a label
    control: the main design. Label-control and MLP-input sweeps are read by their own sections. A (model, task)
    measured the same way (GD's lr rule, baselines' lr rule) by several sweeps counts once, from the sweep with the
    most runs (a longer sweep that holds a shorter one's runs supersedes it)."""
    names = sweeps or sorted(p.name for p in results.iterdir() if _is_sweep(p))
    pairs = []
    for name in names:
        folder = results / name
        if not _is_sweep(folder):
            raise ValueError(f"{folder} is not a sweep's tables (sweep.json, summary.csv, verdicts.csv)")
        config = json.loads((folder / "sweep.json").read_text())["config"]
        compare = config["compare"]
        if compare.get("label_control") or tuple(compare.get("groups", ("k", "v"))) != ("k", "v"):
            continue
        summary, verdicts = pd.read_csv(folder / "summary.csv"), pd.read_csv(folder / "verdicts.csv")
        for task in dict.fromkeys(summary.task):
            pairs.append(pair_counts(name, config, summary[summary.task == task], verdicts[verdicts.task == task]))
    return _most_runs(pairs)


def _most_runs(pairs: list[PairCounts]) -> list[PairCounts]:
    """Each (model, task, lr rule, baselines' lr rule) once: the pair with the most runs, in first-seen order."""
    best: dict[tuple, PairCounts] = {}
    for pair in pairs:
        if pair.design not in best or pair.runs > best[pair.design].runs:
            best[pair.design] = pair
    return [pair for pair in pairs if best[pair.design] is pair]


def _is_sweep(folder: Path) -> bool:
    return all((folder / f).is_file() for f in ("sweep.json", "summary.csv", "verdicts.csv"))


def pair_counts(sweep: str, config: dict, summary: pd.DataFrame, verdicts: pd.DataFrame) -> PairCounts:
    """The counts of one task of one sweep (its rows of summary.csv and verdicts.csv)."""
    compare = config["compare"]
    baselines = tuple(compare.get("baselines", ()))
    against = verdicts[verdicts.baseline.isin(baselines)]
    trained = summary[summary.model == "trained"].set_index(["method", "metric"])["mean"]
    norms = summary[(summary.metric == "update_norm") & (summary.method == "gd")].set_index("model")["mean"]
    ratios = [norms[b] / norms["trained"] for b in baselines if b in norms.index]
    gd = against[(against.method == "gd") & against.metric.isin(GD_METRICS)]
    alpha = against[(against.method == "lcgd") & (against.metric == "alpha")]
    primary = {}
    if "family" in verdicts:
        for method, rows in against[against.family == PRIMARY].groupby("method", sort=False):
            primary[method] = _counts(rows.adjusted_verdict)
    return PairCounts(
        sweep=sweep,
        model=config["model"],
        task=summary.task.iloc[0],
        lr=str(config["lr"]),
        baseline_lr=compare.get("baseline_lr", "paper"),
        lcgd_lr=str(config.get("lr_lcgd", "gd")),
        runs=int(summary.runs.max()),
        bootstrap=str(summary.bootstrap.iloc[0]) if "bootstrap" in summary else "nested",
        zs=float(trained[("gd", "acc_zs")]),
        icl=float(trained[("gd", "acc_icl")]),
        gd_norm_ratio=max(ratios) if ratios else math.nan,
        gd=_counts(gd.verdict),
        alpha=_counts(alpha.verdict),
        primary=primary,
    )


def _counts(verdicts: pd.Series) -> dict[str, int]:
    counted = verdicts.value_counts()
    return {verdict: int(counted[verdict]) for verdict in (*VERDICTS, bootstrap.TOO_FEW_RUNS) if counted.get(verdict)}


def totals(pairs: list[PairCounts]) -> dict[str, int]:
    """Counts over `pairs`: pairs, GD verdicts in total and per verdict, pairs where LCGD's α is below every
    baseline, pairs where ICL beats ZS on the mean."""
    return {
        "pairs": len(pairs),
        "gd_verdicts": sum(p.gd_total for p in pairs),
        **{f"gd_{v.replace(' ', '_')}": sum(p.gd.get(v, 0) for p in pairs) for v in VERDICTS},
        "alpha_below_all": sum(1 for p in pairs if p.alpha_total and p.alpha.get("below", 0) == p.alpha_total),
        "icl_above_zs": sum(1 for p in pairs if p.icl > p.zs),
    }


def beside(first: Path, second: Path, task: str) -> pd.DataFrame:
    """Every verdict of `task` in two sweeps of the same runs (for example the papers' way and matched update size),
    row by row: per (method, metric, against) each sweep's difference, interval, verdict and `ratio`, the `against`
    subject's mean ‖ΔW‖ over the first side's (the trained model's for the method; LCGD's against GD), from each
    sweep's summary.csv."""
    frames = []
    for label, folder in (("first", first), ("second", second)):
        verdicts = pd.read_csv(folder / "verdicts.csv")
        verdicts = verdicts[verdicts["task"] == task].copy()
        norms = _update_norms(pd.read_csv(folder / "summary.csv"), task)
        verdicts["ratio"] = [
            norms.get(("trained", "gd") if against == "gd" else (against, method), math.nan)
            / norms.get(("trained", method), math.nan)
            for method, against in zip(verdicts["method"], verdicts["baseline"])
        ]
        keep = verdicts[["method", "metric", "baseline", "difference", "diff_low", "diff_high", "verdict", "ratio"]]
        frames.append(keep.set_index(["method", "metric", "baseline"]).add_prefix(f"{label}_"))
    return frames[0].join(frames[1], how="inner").reset_index()


def sweep_model(folder: Path) -> str:
    """The model a sweep ran on (its sweep.json's model, as given to reproduce)."""
    return json.loads((Path(folder) / "sweep.json").read_text())["config"]["model"]


def task_verdicts(folder: Path, task: str) -> pd.DataFrame:
    """Every verdict of `task` in one sweep's verdicts.csv, with its p-value, family and (for the primary contrasts)
    the adjusted p-value and verdict, in the file's order."""
    verdicts = pd.read_csv(folder / "verdicts.csv")
    rows = verdicts[verdicts["task"] == task]
    if rows.empty:
        raise ValueError(f"{folder / 'verdicts.csv'} has no verdict of task {task!r}")
    return rows.reset_index(drop=True)


def _update_norms(summary: pd.DataFrame, task: str) -> dict[tuple[str, str], float]:
    """(model, method) -> mean ‖ΔW‖ over runs, for `task`."""
    rows = summary[(summary["task"] == task) & (summary["metric"] == "update_norm")]
    return {(model, method): value for model, method, value in zip(rows["model"], rows["method"], rows["mean"])}
