"""matplotlib figures from analysis tables (never from recomputed metrics).

Figures are built without pyplot (no global state, no backend switch): a notebook shows them, `save_figure`
writes them.

Files are written without timestamps or version stamps, so the same table gives byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from iclgd_lens.files import replaced_atomically

# PNG/SVG metadata that would change between otherwise identical runs
STABLE_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}
METHOD_COLORS = {"gd": "tab:blue", "lcgd": "tab:orange"}
MODEL_STYLES = {"trained": "-", "no_training": "--", "trained_norms": ":", "trained_embeddings": "-."}


def per_layer_figure(table: pd.DataFrame, metric: str):
    """Revisited Figure 3's form: one panel per task, a curve per (model, method): the colour is the method, the
    line style the model (trained solid, baselines dashed/dotted); the band is ± std over runs of the trained model.
    `table` is `analysis.protocol.tables.per_layer_table`'s."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    part = table[table.metric == metric]
    tasks = list(dict.fromkeys(part.task))
    fig = Figure(figsize=(4.2 * len(tasks), 3.4), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks):
        rows = part[part.task == task]
        for (model, method), curve in rows.groupby(["model", "method"], sort=False):
            trained = model == "trained"
            label = method.upper() if trained else f"{method.upper()} ({model})"
            color = METHOD_COLORS.get(method)
            ax.plot(
                curve.layer,
                curve["mean"],
                MODEL_STYLES.get(model, ":"),
                color=color,
                label=label,
                linewidth=1.6 if trained else 1.0,
            )
            if trained:  # bands on the trained model only: four overlapping bands would hide the curves
                spread = curve["std"].fillna(0)
                ax.fill_between(
                    curve.layer, curve["mean"] - spread, curve["mean"] + spread, color=color, alpha=0.18, linewidth=0
                )
        ax.set_title(task)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.axhline(0, color="grey", linewidth=0.5)
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(fontsize=7, loc="best")
    return fig


def save_figure(fig, path: Path) -> None:
    """Save through a temporary sibling and a rename; format from the suffix (png, svg)."""
    kind = path.suffix.lstrip(".")
    with replaced_atomically(path) as temporary:
        fig.savefig(temporary, format=kind, dpi=110, metadata=STABLE_METADATA.get(kind))


def results_by_task(results: list) -> dict:
    """Results grouped by their task, in the order given (the form `analysis.protocol.tables` takes)."""
    grouped: dict = {}
    for result in results:
        grouped.setdefault(result.config["task"], []).append(result)
    return grouped


def per_layer_plot(results: list, metric: str):
    """Per-layer curves of `metric` for every method on the trained model and each baseline, mean ± std over the
    results of each task (several seeds / permutations of one task: Revisited's Figure 3)."""
    from iclgd_lens.analysis.protocol.tables import per_layer_table

    return per_layer_figure(per_layer_table(results_by_task(results)), metric)


def head_heatmaps(result, metrics: tuple[str, ...] = ("simaou", "simam_delta"), methods: tuple[str, ...] | None = None):
    """Layer x head heatmaps of per-head values (rows: metrics, columns: methods; "no_training/gd" names a
    baseline's). One colour scale per metric, centred on zero; grey cells are undefined."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    methods = methods or tuple(result.methods)
    fig = Figure(figsize=(3.4 * len(methods) + 1, 2.9 * len(metrics)), layout="constrained")
    axes = fig.subplots(len(metrics), len(methods), squeeze=False)
    colours = colormaps["RdBu_r"].with_extremes(bad="lightgrey")  # grey: undefined (NaN), e.g. a zero update
    for row, metric in enumerate(metrics):
        frames = [result.per_head(metric, method).to_numpy(dtype=float) for method in methods]
        bound = max(np.nanmax(np.abs(f)) if np.isfinite(f).any() else 0.0 for f in frames) or 1.0
        for column, (method, values) in enumerate(zip(methods, frames)):
            ax = axes[row][column]
            image = ax.imshow(values, cmap=colours, vmin=-bound, vmax=bound, aspect="auto", interpolation="nearest")
            ax.set_title(f"{metric}: {method}", fontsize=9)
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(image, ax=list(axes[row]), shrink=0.8)
    return fig
