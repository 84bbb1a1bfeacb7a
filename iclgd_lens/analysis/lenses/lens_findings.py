"""A lenses folder read for the findings pages: its paired verdicts, and one measure per layer beside its nulls
(`scripts/findings.py`'s findings-lenses and findings-lens-layers blocks). Reads paired.csv and per_layer.csv only,
so a page quoting them is regenerated without a model."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from iclgd_lens.analysis.protocol.pooled import measure_layers, pooled_file

# The random-direction scale of a cosine lens's space, by the lens's stem (lens_nulls.random_scales).
RANDOM_SCALES = {"implicit": "random_abs_cos_implicit", "shift": "random_abs_cos_shift"}
RANDOM = "random directions"  # the subject name the scale is shown under


def lens_verdicts(folder: Path) -> pd.DataFrame:
    """Every paired verdict of a lenses folder (paired.csv), in the file's order: per measure (its mean over layers
    or stream points) the model's value against each other subject (untrained baselines, the label control, its
    cross pairs, the structured null), the difference with its interval and the verdict."""
    return pd.read_csv(pooled_file(folder, "paired.csv", "lenses"))


def lens_layers(folder: Path, measure: str) -> pd.DataFrame:
    """`measure` per layer (or stream point) for every subject the folder has it for, the model first, with the
    random-direction E|cos| of its space as one more subject (`RANDOM`, no interval) where `measure` is an
    absolute cosine of the implicit update or the residual shift. Columns: layer, subject, mean, low, high."""
    where = pooled_file(folder, "per_layer.csv", "lenses")
    per_layer = pd.read_csv(where)
    rows = measure_layers(per_layer, measure, str(where))
    stem = measure.split("_")[0]
    if "_abs_cos_" in measure and stem in RANDOM_SCALES:
        scale = per_layer[(per_layer["measure"] == RANDOM_SCALES[stem]) & (per_layer["subject"] == "model")]
        scale = scale.assign(subject=RANDOM, low=float("nan"), high=float("nan"))[rows.columns]
        rows = pd.concat([rows, scale], ignore_index=True)
    return rows
