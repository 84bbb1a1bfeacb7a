"""ICL as one weight update, read back from saved folders for the findings: a `lenses --transfer` folder (ICL's mean
chained implicit patch run on queries it was not read from, beside ZS, ICL and GD's update) and, where the same model
and task were attributed with `--function-vectors`, the function vector's accuracy and how its heads meet the
attribution's. Nothing here loads a model: every number comes from per_layer.csv, fv_points.csv, fv_heads.csv and
heads.csv, so that the findings quote files, not typing (`scripts/findings.py`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from iclgd_lens.analysis.heads.function_vectors import ranking_agreement
from iclgd_lens.core.results import OTHER_TASK_PREFIX

Interval = tuple[float, float, float]  # mean, low, high (95 %, over the target queries of one run)
# Inside a transfer folder: the same lenses run with --null-runs (the mean patch's structured null).
NULL = "other-task-null"
SETTINGS = ("zs", "icl", "gd", "patch_mean")  # what runs on the target queries: accuracy for each
GAINS = ("icl", "gd", "patch_mean")  # label log-odds gain over ZS, paired per query


@dataclass(frozen=True)
class WholeModelReading:
    """One run's answers to "does ICL's whole-model patch act like GD's update?" on the trained model."""

    model: str  # as the result names it
    task: str
    transfer: str  # the lenses folder's name
    heads: str | None  # the attribution folder with function vectors of the same model and task, if any
    runs: int
    accuracy: dict[str, Interval]  # SETTINGS -> accuracy on the target queries
    gain: dict[str, Interval]  # GAINS -> label log-odds gain over ZS
    patch_cos: tuple[float, float]  # per layer, the smallest and largest cos(mean patch, GD's update)
    random_cos: float  # the random-direction |cos| at those matrices' dimension, mean over layers
    norm_ratio: tuple[float, float]  # per layer, the smallest and largest ‖mean patch‖ / ‖GD's update‖
    patch_abs_cos: float  # mean over layers of |cos(mean patch, GD's update)|
    null_abs_cos: float = math.nan  # the same against GD's update on another task (NULL folder; NaN: not run)
    fv_points: int = 0  # entry points the function vector was added at (0: not run)
    fv_best: float = math.nan  # its best accuracy over those points (chosen after the fact)
    fv_zs: float = math.nan
    fv_icl: float = math.nan
    agreement: dict[str, dict] = field(default_factory=dict)  # method -> ranking_agreement's row


def _measure(per_layer: pd.DataFrame, measure: str) -> pd.DataFrame:
    rows = per_layer[(per_layer["measure"] == measure) & (per_layer["subject"] == "model")]
    if rows.empty:
        raise ValueError(f"per_layer.csv has no {measure!r} of the model: not a `lenses --transfer` folder")
    return rows


def _interval(per_layer: pd.DataFrame, measure: str) -> Interval:
    row = _measure(per_layer, measure).iloc[0]
    return float(row["mean"]), float(row["low"]), float(row["high"])


def _span(per_layer: pd.DataFrame, measure: str) -> tuple[float, float]:
    means = _measure(per_layer, measure)["mean"]
    return float(means.min()), float(means.max())


def transfer_reading(folder: Path, heads: Path | None = None) -> WholeModelReading:
    """The reading of one transfer folder, with the function vectors of `heads` (an attribution folder) if given."""
    about = json.loads((folder / "lenses.json").read_text())
    per_layer = pd.read_csv(folder / "per_layer.csv")
    reading = dict(
        model=about["model"],
        task=about["task"],
        transfer=folder.name,
        heads=heads.name if heads else None,
        runs=about["runs"],
        accuracy={s: _interval(per_layer, f"transfer_correct_{s}") for s in SETTINGS},
        gain={s: _interval(per_layer, f"transfer_gain_{s}") for s in GAINS},
        patch_cos=_span(per_layer, "patch_cos_gd"),
        random_cos=float(_measure(per_layer, "random_abs_cos_patch_gd")["mean"].mean()),
        norm_ratio=_span(per_layer, "patch_norm_ratio_gd"),
        patch_abs_cos=float(_measure(per_layer, "patch_cos_gd")["mean"].abs().mean()),
        null_abs_cos=_null_abs_cos(folder / NULL),
    )
    if heads is not None:
        reading.update(_function_vector(heads))
    return WholeModelReading(**reading)


def _null_abs_cos(folder: Path) -> float:
    """Mean over layers of |cos(mean patch, GD's update on another task)|: the structured null subject's
    `patch_cos_gd` in a lenses folder run with --null-runs (NaN where there is none)."""
    if not (folder / "per_layer.csv").is_file():
        return math.nan
    per_layer = pd.read_csv(folder / "per_layer.csv")
    rows = per_layer[(per_layer["measure"] == "patch_cos_gd") & per_layer["subject"].str.startswith(OTHER_TASK_PREFIX)]
    return float(rows["mean"].abs().mean()) if not rows.empty else math.nan


def _function_vector(heads: Path) -> dict:
    points = pd.read_csv(heads / "fv_points.csv")
    per_head = pd.read_csv(heads / "fv_heads.csv")
    effects = torch.zeros(per_head["layer"].max() + 1, per_head["head"].max() + 1, dtype=torch.float64)
    effects[list(per_head["layer"]), list(per_head["head"])] = torch.tensor(list(per_head["aie"]), dtype=torch.float64)
    agreement = ranking_agreement(effects, pd.read_csv(heads / "heads.csv"))
    return dict(
        fv_points=len(points),
        fv_best=float(points["fv_accuracy"].max()),
        fv_zs=float(points["zs_accuracy"].iloc[0]),
        fv_icl=float(points["icl_accuracy"].iloc[0]),
        agreement={row["method"]: row for row in agreement.to_dict("records")},
    )


def whole_model_readings(results: Path) -> list[WholeModelReading]:
    """Every transfer folder under `results`, each beside the function-vector folder of its model and task (a
    folder whose attribution.json names them and that holds fv_points.csv); two such folders for one model and task
    are refused (which to quote would be a choice made by hand)."""
    vectors: dict[tuple[str, str], list[Path]] = {}
    for folder in sorted(p.parent for p in results.glob("*/fv_points.csv")):
        about = json.loads((folder / "attribution.json").read_text())
        vectors.setdefault((about["model"], about["task"]), []).append(folder)
    readings = []
    for folder in sorted(p.parent for p in results.glob("*/lenses.json")):
        if "transfer_gain_patch_mean" not in (folder / "per_layer.csv").read_text():
            continue
        about = json.loads((folder / "lenses.json").read_text())
        found = vectors.get((about["model"], about["task"]), [])
        if len(found) > 1:
            raise ValueError(f"{folder.name}: function vectors of {about['task']} in {len(found)} folders: keep one")
        readings.append(transfer_reading(folder, found[0] if found else None))
    return readings
