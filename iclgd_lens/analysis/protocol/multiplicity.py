"""The multiplicity policy of the sweeps' verdicts, stated before the runs (docs/science.md, "Multiplicity").

A sweep holds hundreds of paired verdicts. Read one by one at 95 %, some would be "shown" by chance alone. So the
design names its **primary contrasts** and adjusts within each family; every other verdict is **exploratory**
(raw, unadjusted, labelled as such):

- primary: on each task, for each of GD and LCGD, the trained model's SimAOU_norm (Dai et al.'s headline measure)
  against each untrained baseline, paired by run and query;
- family: those contrasts of one (task, method), one per baseline (three with the default baselines);
- adjustment: Holm's step-down (family-wise error at 5 %). The contrasts of a family share the trained model's
  draws, so they are dependent; Holm needs no assumption about that dependence, where Benjamini-Hochberg's FDR
  control needs positive dependence, and a family of three gains little from FDR's extra power.

A verdict the raw interval calls `borderline` (`bootstrap.is_borderline`) stays borderline after adjustment. Where
even the smallest p-value the bootstrap can give at the family's number of runs (`bootstrap.smallest_p`) cannot
pass Holm's first threshold, the adjusted verdict says `too few runs`: with 5 runs and 4,000 draws the floor is
0.031, above 0.05 / 3.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from iclgd_lens.analysis.protocol import bootstrap
from iclgd_lens.core.presets import BASELINES

FAMILY_LEVEL = 0.05
PRIMARY_METRIC = "simaou_norm"
PRIMARY_METHODS = ("gd", "lcgd")
PRIMARY, EXPLORATORY = "primary", "exploratory"


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control under any dependence between the tests);
    NaN p-values stay NaN and do not count in the family's size."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    defined = np.flatnonzero(~np.isnan(p))
    order = defined[np.argsort(p[defined], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, (len(order) - rank) * p[index])
        adjusted[index] = min(1.0, running)
    return adjusted


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), for readers who prefer FDR on the exploratory
    verdicts; NaN stays NaN and does not count in the family's size."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    defined = np.flatnonzero(~np.isnan(p))
    order = defined[np.argsort(p[defined], kind="stable")]
    running = 1.0
    for rank in range(len(order) - 1, -1, -1):
        running = min(running, p[order[rank]] * len(order) / (rank + 1))
        adjusted[order[rank]] = running
    return adjusted


def is_primary(row: pd.Series) -> bool:
    """A trained-model contrast of GD or LCGD against an untrained baseline on the primary metric."""
    return row["metric"] == PRIMARY_METRIC and row["method"] in PRIMARY_METHODS and row["baseline"] in BASELINES


def adjust(verdicts: pd.DataFrame) -> pd.DataFrame:
    """`verdicts` (tables.VERDICT_COLUMNS) with `family` (primary / exploratory), `adjusted_p` (Holm within each
    primary family of one task and method; NaN for exploratory rows) and `adjusted_verdict` (the raw verdict where
    Holm rejects, `no difference shown` where it does not, `too few runs` where it cannot, `borderline` kept;
    exploratory rows: empty)."""
    out = verdicts.copy()
    primary = out.apply(is_primary, axis=1) if len(out) else pd.Series([], dtype=bool)
    out["family"] = np.where(primary, PRIMARY, EXPLORATORY)
    out["adjusted_p"] = math.nan
    out["adjusted_verdict"] = ""
    for _, rows in out[primary].groupby(["task", "method"], sort=False):
        adjusted = holm(rows["p_value"].to_numpy())
        out.loc[rows.index, "adjusted_p"] = adjusted
        floor = bootstrap.smallest_p(int(rows["runs"].min())) * len(rows)
        out.loc[rows.index, "adjusted_verdict"] = [
            _adjusted(raw, p, floor) for raw, p in zip(rows["verdict"], adjusted)
        ]
    return out


def _adjusted(raw: str, adjusted_p: float, floor: float) -> str:
    if raw in (bootstrap.TOO_FEW_RUNS, bootstrap.BORDERLINE, "n/a"):
        return raw
    if not floor < FAMILY_LEVEL:
        return bootstrap.TOO_FEW_RUNS
    return raw if adjusted_p < FAMILY_LEVEL and raw in (bootstrap.ABOVE, bootstrap.BELOW) else bootstrap.NO_DIFFERENCE
