"""An attribution folder: heads.csv / kendall.csv, their Markdown tables ranked by effect, and heatmaps.

Lays out `analysis.attribution` and `analysis.kendall` tables; computes nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from iclgd_lens.files import write_text_atomic
from iclgd_lens.views.markdown import markdown_table
from iclgd_lens.views.plots import save_figure

ATTRIBUTION_FORMAT = "iclgd-lens attribution 1"
MARKER = "attribution.json"
TOP = 10  # rows per method in the Markdown ranking


def check_attribution_folder(out: Path) -> None:
    """Refuse a folder that holds anything and no attribution written by iclgd-lens."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{str(out)!r} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        try:
            ours = json.loads((out / MARKER).read_text()).get("format") == ATTRIBUTION_FORMAT
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise FileExistsError(f"{str(out)!r} is not empty and holds no attribution written by iclgd-lens; choose "
                                  "a new or empty folder (nothing in it was touched)")  # fmt: skip


def _markdown(frame: pd.DataFrame) -> str:
    """`frame` as a Markdown table, numbers to 4 decimals."""

    def cell(value) -> str:
        if not isinstance(value, float):
            return str(value)
        return "NaN" if math.isnan(value) else f"{value:.4f}"

    return markdown_table(list(frame.columns), [[cell(v) for v in row] for row in frame.itertuples(index=False)])


def heads_markdown(heads: pd.DataFrame, totals: dict) -> str:
    parts = [
        f"Label log-odds at the prediction position, mean over queries: ZS {totals['zs']:.4f}, ICL {totals['icl']:.4f}; "
        f"every head patched from ICL: {totals['all_heads']:.4f} (restored {totals['all_heads_restored']:.4f})."
    ]
    for method, rows in heads.groupby("method", sort=False):
        single = rows[rows["head"] != "all"].head(TOP)
        parts.append(
            f"## {method.upper()}: the {len(single)} heads whose delta moves the log-odds most\n\n" + _markdown(single)
        )
        parts.append(
            f"## {method.upper()}: whole layers\n\n" + _markdown(rows[rows["head"] == "all"].sort_values("layer"))
        )
    patches = (
        heads[heads["head"] != "all"].drop_duplicates(["layer", "head"]).sort_values("patch_restored", ascending=False)
    )
    parts.append(f"## ICL: the {min(TOP, len(patches))} heads whose ICL output restores most of the ICL effect\n\n"
                 + _markdown(patches[["layer", "head", "patch_restored"]].head(TOP)))  # fmt: skip
    return "\n\n".join(parts) + "\n"


def heads_heatmaps(heads: pd.DataFrame):
    """Layer x head: each method's log-odds change, and ICL's patching share."""
    import numpy as np
    from matplotlib.figure import Figure

    single = heads[heads["head"] != "all"].astype({"head": int})
    panels = [(f"{m}: logodds_change", rows, "logodds_change") for m, rows in single.groupby("method", sort=False)]
    panels.append(("ICL patching: restored share", single.drop_duplicates(["layer", "head"]), "patch_restored"))
    fig = Figure(figsize=(3.6 * len(panels) + 1, 3.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, rows, column) in zip(axes[0], panels):
        grid = rows.pivot(index="layer", columns="head", values=column).to_numpy(dtype=float)
        bound = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def write_attribution(out: Path, heads: pd.DataFrame, totals: dict, kendall: pd.DataFrame | None, about: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "heads.csv", heads.to_csv(index=False, float_format="%.6g"))
    write_text_atomic(out / "heads.md", heads_markdown(heads, totals))
    save_figure(heads_heatmaps(heads), out / "heads.png")
    if kendall is not None:
        write_text_atomic(out / "kendall.csv", kendall.to_csv(index=False, float_format="%.6g"))
        write_text_atomic(out / "kendall.md", _markdown(kendall) + "\n")
    write_text_atomic(out / MARKER, json.dumps({"format": ATTRIBUTION_FORMAT, **about, "totals": totals}, indent=1))
