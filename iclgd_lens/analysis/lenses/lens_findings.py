"""A lenses folder read for the findings pages: its paired verdicts, one measure per layer beside its nulls
(`scripts/findings.py`'s findings-lenses and findings-lens-layers blocks), and each study's reading against its
nulls and label control for the README (`lens_readings`, the findings-lenses-summary block). Reads paired.csv,
per_layer.csv and lenses.json only, so a page quoting them is regenerated without a model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from iclgd_lens.analysis.protocol.bootstrap import MIN_RUNS
from iclgd_lens.analysis.protocol.pooled import measure_layers, pooled_file
from iclgd_lens.core.results import OTHER_TASK_PREFIX
from iclgd_lens.core.scoring import ONE_CLASS_WARNING_SHARE

# The random-direction scale of a cosine lens's space, by the lens's stem (lens_nulls.random_scales).
RANDOM_SCALES = {"implicit": "random_abs_cos_implicit", "shift": "random_abs_cos_shift"}
RANDOM = "random directions"  # the subject name the scale is shown under
CONTROL = "model [shuffled]"  # the label control's subject


def lens_verdicts(folder: Path) -> pd.DataFrame:
    """Every paired verdict of a lenses folder (paired.csv), in the file's order: per measure (its mean over layers
    or stream points) the model's value against each other subject (untrained baselines, the label control, its
    cross pairs, the structured null), the difference with its interval and the verdict."""
    return pd.read_csv(pooled_file(folder, "paired.csv", "lenses"))


def one_class_shares(per_layer: pd.DataFrame, measure: str) -> pd.Series:
    """Where a patched run answers one class: for the accuracy `X_correct` of a patched run, the mean majority share
    `X_majority` per (subject, layer) where it reaches ONE_CLASS_WARNING_SHARE (there the accuracy is that class's
    share of the queries, not the task). Empty for any other measure and for folders written before the share was
    kept."""
    if not measure.endswith("_correct"):
        return pd.Series(dtype=float)
    share = per_layer[per_layer["measure"] == measure.removesuffix("_correct") + "_majority"]
    share = share.set_index(["subject", "layer"])["mean"]
    return share[share >= ONE_CLASS_WARNING_SHARE]


def lens_layers(folder: Path, measure: str) -> pd.DataFrame:
    """`measure` per layer (or stream point) for every subject the folder has it for, the model first, with the
    random-direction E|cos| of its space as one more subject (`RANDOM`, no interval) where `measure` is an
    absolute cosine of the implicit update or the residual shift. Columns: layer, subject, mean, low, high, and
    one_class (the majority share where a patched run answers one class, `one_class_shares`; else NaN)."""
    where = pooled_file(folder, "per_layer.csv", "lenses")
    per_layer = pd.read_csv(where)
    rows = measure_layers(per_layer, measure, str(where))
    shares = one_class_shares(per_layer, measure)
    rows = rows.assign(one_class=[shares.get((s, layer), float("nan")) for s, layer in zip(rows.subject, rows.layer)])
    stem = measure.split("_")[0]
    if "_abs_cos_" in measure and stem in RANDOM_SCALES:
        scale = per_layer[(per_layer["measure"] == RANDOM_SCALES[stem]) & (per_layer["subject"] == "model")]
        scale = scale.assign(subject=RANDOM, low=float("nan"), high=float("nan"), one_class=float("nan"))[rows.columns]
        rows = pd.concat([rows, scale], ignore_index=True)
    return rows


@dataclass(frozen=True)
class LensReading:
    """One lenses study read against its nulls and its label control, for the front door (`lens_readings`): the
    implicit update's and the residual shift's |cos| with GD's against GD's update on another task, the same
    under shuffled labels and random directions; Hendel's task vector at its best layer."""

    model: str  # as the result names it
    task: str
    folder: str
    runs: int
    null_task: str  # the structured null's task
    implicit: dict[str, pd.Series]  # the null's and the control's subject -> paired row of implicit_abs_cos_gd
    shift: dict[str, pd.Series]  # the same of shift_abs_cos_gd
    random_implicit: float  # E|cos| of random directions, mean over layers
    random_shift: float
    tv_layer: int  # the layer where Hendel's θ answers best on the trained model (chosen after the fact)
    tv: tuple[float, float, float]  # its accuracy there: mean, low, high
    tv_shuffled: float  # the same layer's θ from shuffled demonstrations
    zs: float  # the unpatched ZS accuracy


def lens_readings(results: Path) -> list[LensReading]:
    """Every lenses folder under `results` with verdicts (MIN_RUNS runs or more), a label control and a structured
    null, in folder order."""
    readings = []
    for marker in sorted(Path(results).glob("*/lenses.json")):
        about = json.loads(marker.read_text())
        nulls = [s for s in about["subjects"] if s.startswith(OTHER_TASK_PREFIX)]
        if about["runs"] < MIN_RUNS or CONTROL not in about["subjects"] or not nulls:
            continue
        readings.append(_reading(marker.parent, about, nulls[0]))
    return readings


def _reading(folder: Path, about: dict, null: str) -> LensReading:
    paired, per_layer = lens_verdicts(folder), pd.read_csv(folder / "per_layer.csv")

    def rows(measure: str) -> dict[str, pd.Series]:
        chosen = paired[(paired["measure"] == measure) & paired["baseline"].isin([null, CONTROL])]
        return {row["baseline"]: row for _, row in chosen.iterrows()}

    def model_layers(measure: str, subject: str = "model") -> pd.DataFrame:
        return per_layer[(per_layer["measure"] == measure) & (per_layer["subject"] == subject)].set_index("layer")

    tv = model_layers("tv_correct")
    best = int(tv["mean"].idxmax())
    return LensReading(
        model=about["model"],
        task=about["task"],
        folder=folder.name,
        runs=about["runs"],
        null_task=null.removeprefix(OTHER_TASK_PREFIX).removesuffix("]"),
        implicit=rows("implicit_abs_cos_gd"),
        shift=rows("shift_abs_cos_gd"),
        random_implicit=float(model_layers(RANDOM_SCALES["implicit"])["mean"].mean()),
        random_shift=float(model_layers(RANDOM_SCALES["shift"])["mean"].mean()),
        tv_layer=best,
        tv=(float(tv.loc[best, "mean"]), float(tv.loc[best, "low"]), float(tv.loc[best, "high"])),
        tv_shuffled=float(model_layers("tv_correct", CONTROL).loc[best, "mean"]),
        zs=float(model_layers("zs_correct")["mean"].mean()),
    )
