"""An attribution folder: heads.csv / kendall.csv, their Markdown tables ranked by effect, and heatmaps.

Lays out `analysis.heads.attribution` and `analysis.heads.kendall` tables; computes nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from iclgd_lens.analysis.heads.attribution import ATP
from iclgd_lens.analysis.heads.kendall import POOLED_LAYERS, POOLED_PAIRED
from iclgd_lens.files import check_output, holds_marker, write_text_atomic
from iclgd_lens.views.markdown import markdown_table
from iclgd_lens.views.plots import save_figure

ATTRIBUTION_FORMAT = "iclgd-lens attribution 1"
MARKER = "attribution.json"
KENDALL_FORMAT = "iclgd-lens kendall 1"  # a pooled Kendall folder (`iclgd-lens kendall`)
KENDALL_MARKER = "kendall.json"
TOP = 10  # rows per method in the Markdown ranking


def check_attribution_folder(out: Path) -> None:
    """Refuse a folder that holds anything and no attribution written by iclgd-lens (an earlier one is replaced)."""
    check_output(out, "attribution", is_attribution_folder)


def is_attribution_folder(out: Path) -> bool:
    return holds_marker(out, MARKER, ATTRIBUTION_FORMAT)


def _markdown(frame: pd.DataFrame) -> str:
    """`frame` as a Markdown table, numbers to 4 decimals; a column NaN on every row (exact values where only
    estimates were made, or the reverse) is left out."""
    frame = frame.loc[:, [not (frame[c].dtype.kind == "f" and frame[c].isna().all()) for c in frame.columns]]

    def cell(value) -> str:
        if not isinstance(value, float):
            return str(value)
        return "NaN" if math.isnan(value) else f"{value:.4f}"

    return markdown_table(list(frame.columns), [[cell(v) for v in row] for row in frame.itertuples(index=False)])


def _totals_line(totals: dict) -> str:
    line = (
        f"Label log-odds at the prediction position, mean over queries: ZS {totals['zs']:.4f}, ICL "
        f"{totals['icl']:.4f} (ICL effect {totals['icl_effect']:.4f}); every head patched from ICL: "
        f"{totals['all_heads']:.4f} (restored {totals['all_heads_restored']:.4f})"
    )
    if "all_heads_position" in totals:
        line += (
            f"; every head and the positional embedding (learned absolute positions): "
            f"{totals['all_heads_position']:.4f} (restored {totals['all_heads_position_restored']:.4f})"
        )
    line += (
        f". `patch_restored` is NaN where the ICL effect is below {totals['min_icl_effect']}; its interval: 95 % "
        "bootstrap over queries."
    )
    return line + (f" **{totals['note']}.**" if "note" in totals else "") + "\n\n" + _estimate_line(totals)


def _estimate_line(totals: dict) -> str:
    estimate = totals.get("estimate", "exact")
    if estimate == "exact":
        return "Every value is exact (each head's replacement run through the model; a layer's heads batched together)."
    line = (
        "Columns ending in `_atp` are first-order estimates (attribution patching: the gradient of each label's "
        "logit times the change of the head's output); the others are exact, and NaN on heads not run exactly. "
        "The whole-delta and every-head rows are exact; the whole-layer rows are estimates (the sum of the "
        "layer's heads)"
    )
    if estimate == "atp":
        return line + "."
    agreement = "; ".join(
        f"{name}: {entry['spearman']:.3f} over {entry['heads']} heads"
        if math.isfinite(entry["spearman"])
        else f"{name}: NaN ({entry['note']})"
        for name, entry in totals["agreement"].items()
    )
    return (
        f"{line}. The {totals['verify_top']} heads with the largest estimated effect per method and for ICL's "
        f"patching were run exactly; Spearman's rank correlation between estimate and exact on them "
        f"(`abs_logodds_change` for the methods, `patch_logodds_change` for ICL): {agreement}."
    )


def _paired(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """Each column followed by its first-order estimate where the frame has one."""
    return [name for column in columns for name in (column, column + ATP) if name in frame.columns]


def heads_markdown(heads: pd.DataFrame, totals: dict) -> str:
    parts = [_totals_line(totals)]
    changes = _paired(heads, ["logodds_change", "abs_logodds_change", "majority_share_change", "acc_change"])
    for method, rows in heads[heads.method != "icl"].groupby("method", sort=False):
        whole = rows[rows.layer == "all"]
        parts.append(f"## {method.upper()}: the whole delta (every layer, every head)\n\n" + _markdown(whole[changes]))
        single = rows[rows["head"] != "all"].head(TOP)
        parts.append(
            f"## {method.upper()}: the {len(single)} heads whose delta moves the log-odds most (mean absolute "
            "change)\n\n" + _markdown(single[["layer", "head", *changes]])
        )
        layers = rows[(rows["head"] == "all") & (rows.layer != "all")]
        parts.append(
            f"## {method.upper()}: whole layers\n\n"
            + _markdown(layers.sort_values("layer", key=lambda l: l.astype(int))[["layer", *changes]])
        )
    patches = heads[(heads.layer != "all") & (heads["head"] != "all")].drop_duplicates(["layer", "head"])
    ranking = "patch_logodds_change" + (ATP if "patch_logodds_change" + ATP in heads.columns else "")
    patches = patches.sort_values(ranking, key=lambda v: v.abs(), ascending=False, kind="stable")
    columns = ["layer", "head", *_paired(heads, ["patch_logodds_change", "patch_restored"]), "patch_low", "patch_high"]
    parts.append(
        f"## ICL: the {min(TOP, len(patches))} heads whose ICL output moves the log-odds most (absolute "
        "change; `patch_restored`: its share of the ICL effect)\n\n" + _markdown(patches[columns].head(TOP))
    )
    return "\n\n".join(parts) + "\n"


def heads_heatmaps(heads: pd.DataFrame):
    """Layer x head: each method's mean absolute log-odds change, and ICL's patching share (first-order estimates
    where the table has them: every head has one, while exact values may cover only the verified heads)."""
    import numpy as np
    from matplotlib.figure import Figure

    single = heads[(heads.layer != "all") & (heads["head"] != "all")].astype({"layer": int, "head": int})
    estimated = "abs_logodds_change" + ATP in heads.columns
    suffix, note = (ATP, " (estimate)") if estimated else ("", "")
    panels = [
        (f"{m}: |Δ log-odds|{note}", rows, "abs_logodds_change" + suffix)
        for m, rows in single.groupby("method", sort=False)
    ]
    panels.append(
        (f"ICL patching: restored share{note}", single.drop_duplicates(["layer", "head"]), "patch_restored" + suffix)
    )
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


def kendall_markdown(kendall: pd.DataFrame) -> str:
    """Per subject and level: tau and the random tau (mean over layers, and the layer of the highest tau), recall
    against its chance value (mean over layers). The per-layer numbers are in kendall.csv."""
    rows = []
    for (subject, level), part in kendall.groupby(["subject", "level"], sort=False):
        best = part.loc[part.tau.idxmax()] if part.tau.notna().any() else None
        rows.append(
            [
                subject,
                level,
                part.tau.mean(),
                part.tau_random.mean(),
                "NaN" if best is None else f"{best.tau:.4f} (layer {int(best.layer)})",
                f"{part.recall.mean():.4f} at k = {int(part.recall_k.iloc[0])} (chance "
                f"{part.recall_chance.mean():.4f})",
                _orders(part),
            ]
        )
    columns = ["subject", "level", "tau (mean over layers)", "tau_random", "highest tau", "recall", "order ICL / FT"]
    return (
        "Kendall's tau between ICL's attention to the demonstrations and the finetuning's (Dai et al.); "
        "`zero_delta`: the same measure without finetuning, the baselines: on the untrained models. Order: each "
        "side's tau between a demonstration's place in the prompt and its score (positive: later ones "
        "preferred).\n\n" + _markdown(pd.DataFrame(rows, columns=columns))
    )


def _orders(part: pd.DataFrame) -> str:
    """ICL's and FT's order tau (mean over layers) of a demonstration-level block; blank at token level."""
    if "order_icl" not in part or part.order_icl.isna().all():
        return ""
    return f"{part.order_icl.mean():+.4f} / {part.order_ft.mean():+.4f}"


FV_FILES = ("fv_heads.csv", "fv_points.csv", "fv.md")


def function_vector_markdown(vectors: dict) -> str:
    """The function vector's heads, its accuracy per point beside ZS's and ICL's, and its heads beside the
    attribution's."""
    top = ", ".join(f"L{layer}H{head}" for layer, head in vectors["top"])
    heads = vectors["heads"].head(TOP)
    points = vectors["points"]
    best = points.loc[points.fv_accuracy.idxmax()]
    agreement = vectors["agreement"]
    return "\n\n".join(
        [
            f"Function vector (Todd et al. 2024): the sum of the mean outputs of the {len(vectors['top'])} heads of "
            f"highest average indirect effect on shuffled-label prompts ({top}), added to the zero-shot runs at the "
            f"prediction position: best entering point {int(best.point)}, accuracy {best.fv_accuracy:.4f} (ZS "
            f"{best.zs_accuracy:.4f}, ICL {best.icl_accuracy:.4f}; every point in fv_points.csv).",
            "Heads by average indirect effect (change of p(correct class) among the label words):\n\n"
            + _markdown(heads),
            "The function vector's heads beside the attribution's (|Δ log-odds| per method): overlap of the top sets "
            "(with its chance value) and Spearman's rank correlation over every head.\n\n" + _markdown(agreement),
        ]
    )


KENDALL_FILES = ("kendall.csv", "kendall.md", "kendall_queries.csv", "kendall_layers.csv", "kendall_paired.csv")


def kendall_paired_markdown(paired: pd.DataFrame, per_layer: pd.DataFrame) -> str:
    """The model's tau against each control's (mean over layers, paired), with what the interval covers."""
    covers = per_layer.covers.iloc[0] if len(per_layer) else "-"
    rows = [
        [
            r.measure,
            r.baseline,
            f"{r.model:.4f}",
            f"{r.baseline_value:.4f}",
            f"{r.difference:+.4f} [{r.low:+.4f}, {r.high:+.4f}]",
            r.covers,
            r.verdict,
        ]
        for r in paired.itertuples()
    ]
    header = ["measure", "against", "model", "control", "model − control [95 %]", "covers", "verdict"]
    return (
        f"The model's tau against each control's, mean over layers, paired by query (and run); `order_ft`: the "
        f"finetuning side's tau between a demonstration's place and its score (ICL's, `order_icl`, is every "
        f"subject's own ICL side: per layer in kendall_layers.csv); per-layer means with intervals in "
        f"kendall_layers.csv (the intervals cover: {covers}).\n\n" + markdown_table(header, rows)
    )


def write_attribution(
    out: Path,
    heads: pd.DataFrame,
    totals: dict,
    kendall: pd.DataFrame | None,
    about: dict,
    kendall_intervals: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame] | None = None,
    vectors: dict | None = None,
) -> None:
    """The attribution folder; with `kendall`, its tables and `kendall_intervals` (the per-query values, the
    per-layer intervals and the paired table: `analysis.heads.kendall.queries_table` and `pooled_tables`); with
    `vectors`
    (`analysis.heads.function_vectors.function_vector_tables`), the function vectors' tables."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "heads.csv", heads.to_csv(index=False, float_format="%.6g"))
    write_text_atomic(out / "heads.md", heads_markdown(heads, totals))
    save_figure(heads_heatmaps(heads), out / "heads.png")
    if kendall is not None and kendall_intervals is not None:
        queries, per_layer, paired = kendall_intervals
        write_text_atomic(out / "kendall.csv", kendall.to_csv(index=False, float_format="%.6g"))
        write_text_atomic(out / "kendall_queries.csv", queries.to_csv(index=False, float_format="%.6g"))
        write_text_atomic(out / POOLED_LAYERS, per_layer.to_csv(index=False, float_format="%.6g"))
        write_text_atomic(out / POOLED_PAIRED, paired.to_csv(index=False, float_format="%.6g"))
        text = kendall_markdown(kendall) + "\n\n" + kendall_paired_markdown(paired, per_layer)
        write_text_atomic(out / "kendall.md", text + "\n")
    else:  # an earlier attribution's Kendall tables would be read as this one's
        for name in KENDALL_FILES:
            (out / name).unlink(missing_ok=True)
    if vectors is not None:
        write_text_atomic(out / "fv_heads.csv", vectors["heads"].to_csv(index=False, float_format="%.6g"))
        write_text_atomic(out / "fv_points.csv", vectors["points"].to_csv(index=False, float_format="%.6g"))
        write_text_atomic(out / "fv.md", function_vector_markdown(vectors) + "\n")
    else:
        for name in FV_FILES:
            (out / name).unlink(missing_ok=True)
    write_text_atomic(out / MARKER, json.dumps({"format": ATTRIBUTION_FORMAT, **about, "totals": totals}, indent=1))


def check_kendall_folder(out: Path) -> None:
    """Refuse a folder that holds anything and no pooled Kendall written by iclgd-lens (an earlier one is
    replaced)."""
    check_output(out, "Kendall", lambda folder: holds_marker(folder, KENDALL_MARKER, KENDALL_FORMAT))


def read_kendall_queries(folder: Path) -> tuple[dict, pd.DataFrame]:
    """An attribution folder's about (attribution.json) and per-query Kendall values (kendall_queries.csv)."""
    if not is_attribution_folder(folder):
        raise ValueError(f"{str(folder)!r} is not an attribution folder written by iclgd-lens attribute")
    about = json.loads((folder / MARKER).read_text())
    if not (folder / "kendall_queries.csv").is_file():
        raise ValueError(
            f"{str(folder)!r} holds no per-query Kendall values (attribute ran with --kendall-queries 0, "
            "or before they were written): re-run attribute"
        )
    return about, pd.read_csv(folder / "kendall_queries.csv")


def write_kendall_pool(out: Path, per_layer: pd.DataFrame, paired: pd.DataFrame, about: dict) -> None:
    """A pooled Kendall folder, written whole (an earlier one is replaced)."""
    check_kendall_folder(out)
    text = (
        f"# Kendall: {about['model']} on {about['task']}, {about['runs']} run(s), {about['kendall_queries']} "
        f"queries, {about['kendall_method']}\n\n" + kendall_paired_markdown(paired, per_layer)
    )
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / POOLED_LAYERS, per_layer.to_csv(index=False, float_format="%.6g"))
    write_text_atomic(out / POOLED_PAIRED, paired.to_csv(index=False, float_format="%.6g"))
    write_text_atomic(out / "kendall.md", text + "\n")
    write_text_atomic(out / KENDALL_MARKER, json.dumps({"format": KENDALL_FORMAT, **about}, indent=1))
