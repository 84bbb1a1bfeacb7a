"""A lenses folder: per_layer.csv and paired.csv (`analysis.lenses.values`), lenses.md (the verdicts, then each
measure per layer and subject, with the flags a reader needs), lenses.png, lenses.json, and runs/, each run's values
(`lens_run_values`). Computes nothing."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd

from iclgd_lens.analysis.lenses.lens_findings import one_class_shares
from iclgd_lens.analysis.protocol.bootstrap import MIN_RUNS
from iclgd_lens.files import check_output, holds_marker, replaced_atomically
from iclgd_lens.views.lens_run_values import RUNS, holds_run_values
from iclgd_lens.views.markdown import markdown_table
from iclgd_lens.views.plots import MODEL_STYLES, save_figure

LENSES_FORMAT = "iclgd-lens lenses 2"  # 2: tv_* is Hendel's task vector; own_stream_* the same-query patch
MARKER = "lenses.json"
MAX_EXACT_ERROR = 1e-3  # relative: above it the implicit update does not reproduce ICL's block output
MEANINGS = {
    "implicit_cos": "cos(ICL's implicit ΔW of the MLP input weights, the method's ΔW), per query",
    "implicit_mean_cos": "cos(mean over queries of ICL's implicit ΔW, the method's ΔW)",
    "implicit_norm_ratio": "‖mean implicit ΔW‖ / ‖the method's ΔW‖",
    "implicit_norm": "‖ICL's implicit ΔW‖ per query",
    "implicit_mean_norm": "‖mean over queries of ICL's implicit ΔW‖",
    "implicit_abs_cos": "|cos(ICL's implicit ΔW, the method's ΔW)|, per query: a signed mean can cancel",
    "random_abs_cos_implicit": "E|cos| against a random direction in a layer's MLP input weights (the null scale)",
    "random_abs_cos_shift": "E|cos| against a random direction in the residual stream (d_model; the null scale)",
    "mlp_change_norm": "‖MLP output with context − without‖ (what ΔW carries)",
    "residual_term_norm": "‖Δr‖: the context's change of the stream beside the MLP (what ΔW leaves to Δr)",
    "exact_error": "‖ZS block under (ΔW, Δr) − ICL block‖ / ‖ICL block‖ at the prediction position",
    "tv_correct": "accuracy of the ZS prompt with Hendel's task vector θ (ICL's stream at dummy queries, averaged) "
    "patched in at the point",
    "tv_logodds": "label log-odds of that patched run",
    "own_stream_correct": "accuracy of the ZS prompt with ICL's stream of the same query patched in at the point "
    "(can carry the answer, not only the task)",
    "own_stream_logodds": "label log-odds of that patched run",
    "tv_majority": "share of the queries given the θ-patched run's most frequent answer (1: it answers one class, "
    "and its accuracy is that class's share of the queries)",
    "own_stream_majority": "share of the queries given the same-query patched run's most frequent answer",
    "zs_correct": "accuracy of the unpatched ZS prompt (first label tokens)",
    "shift_cos": "cos(ICL − ZS, method − ZS) of the residual stream at the prediction position, per query",
    "shift_abs_cos": "|cos(ICL − ZS, method − ZS)| of that stream, per query",
    "shift_norm_ratio": "‖method − ZS‖ / ‖ICL − ZS‖ of that stream",
    "transfer_correct": "accuracy on the target queries (those the patch was not read from) of the setting it names: "
    "zs, icl, a learned update, patch_mean (the mean chained implicit patch), patch_n<n> (of the first n sources)",
    "transfer_logodds": "label log-odds on the target queries of the setting it names",
    "transfer_gain": "log-odds gain over ZS on the target queries of the setting it names, paired per query",
    "patch_cos": "cos(mean chained implicit patch, the method's ΔW) per layer, on the matrices both changed",
    "patch_norm_ratio": "‖mean chained implicit patch‖ / ‖the method's ΔW‖ per layer",
    "random_abs_cos_patch": "E|cos| against a random direction at patch_cos's dimension (the null scale)",
    "path_cos": "cos(ICL's implicit ΔW with the first j demonstrations, the method's ΔW after training on j), every "
    "layer's MLP input weights as one vector; the row is j",
    "path_norm_ratio": "‖ICL's implicit ΔW with j demonstrations‖ / ‖the method's ΔW after j‖; the row is j",
    "path_change": "‖ΔW_j − ΔW_(j−1)‖ / ‖ΔW_j‖ of ICL's implicit update: does it settle as demonstrations add up? "
    "The row is j",
}


def _rank(measure: str) -> int:
    """Headline measures first: the cosines, the task vectors, then the sizes and the exactness check."""
    stems = list(MEANINGS)
    order = [
        "implicit_cos",
        "implicit_abs_cos",
        "random_abs_cos_implicit",
        "implicit_mean_cos",
        "shift_cos",
        "shift_abs_cos",
        "random_abs_cos_shift",
        "tv_correct",
        "tv_logodds",
        "own_stream_correct",
        "zs_correct",
        "transfer_gain",
        "transfer_correct",
        "patch_cos",
        "path_cos",
        "path_change",
        "implicit_norm_ratio",
        "shift_norm_ratio",
        *stems,
    ]
    return next(i for i, stem in enumerate(order) if measure == stem or measure.startswith(stem + "_"))


def check_lenses_folder(out: Path) -> None:
    """Refuse a folder that holds anything and no lenses written by iclgd-lens (an earlier one is replaced)."""
    check_output(out, "lenses", is_lenses_folder)


def is_lenses_folder(out: Path) -> bool:
    return holds_marker(out, MARKER, LENSES_FORMAT) or holds_run_values(out)


def meaning(measure: str) -> str:
    for stem, text in sorted(MEANINGS.items(), key=lambda item: -len(item[0])):
        if measure == stem or measure.startswith(stem + "_"):
            method = measure[len(stem) + 1 :]
            return text.replace("the method", method.upper()).replace("method", method.upper()) if method else text
    return measure


def notes(per_layer: pd.DataFrame, paired: pd.DataFrame) -> list[str]:
    """What a reader could misread, said where the numbers are shown."""
    said = []
    errors = per_layer[(per_layer.measure == "exact_error") & (per_layer["mean"] > MAX_EXACT_ERROR)]
    if len(errors):
        said.append(
            f"the implicit update does not reproduce ICL's block output at {len(errors)} (subject, layer) "
            f"pairs (relative error above {MAX_EXACT_ERROR}): its cosines there do not describe ICL"
        )
    cosines = per_layer[per_layer.measure.str.startswith("implicit_cos_")]
    if len(cosines) and cosines["mean"].isna().all():
        said.append(
            "the methods did not train the MLP input weights, so the implicit update has nothing to be set "
            "against: run compare with --groups mlp_in (beside any other groups)"
        )
    else:
        undefined = sorted(set(cosines[(cosines.subject == "model") & cosines["mean"].isna()].layer))
        if undefined:
            said.append(
                f"implicit cosines are undefined (NaN) at layers {undefined} of the model: the context does "
                "not change the MLP's input there, or the method did not change its weights"
            )
    one_class = sorted(
        layer for subject, layer in one_class_shares(per_layer, "tv_correct").index if subject == "model"
    )
    if one_class:
        said.append(
            f"the model's task-vector patch answers one class at stream points {one_class} (marked 'one class'): "
            "its accuracy there is that class's share of the queries, not the task"
        )
    runs = int(per_layer.runs.iloc[0]) if len(per_layer) else 0
    if runs < MIN_RUNS:
        said.append(
            f'{runs} run(s): the verdicts need {MIN_RUNS} ("too few runs"); intervals with one run cover '
            "the queries only"
        )
    return said


def one_class_flag(share: float) -> str:
    """What follows an accuracy where its patched run answers one class (`one_class_shares`; NaN: it does not)."""
    return "" if math.isnan(share) else f" (one class: {share:.2f} of queries)"


def _cell(row, shares: pd.Series) -> str:
    if math.isnan(row["mean"]):
        return "NaN"
    if math.isnan(row["low"]):
        return f"{row['mean']:.3g}"
    flag = one_class_flag(shares.get((row["subject"], row["layer"]), math.nan))
    return f"{row['mean']:.3g} [{row['low']:.3g}, {row['high']:.3g}]{flag}"


def lenses_markdown(per_layer: pd.DataFrame, paired: pd.DataFrame, about: dict) -> str:
    covers = per_layer.covers.iloc[0] if len(per_layer) else "-"
    lines = [f"# Lenses: {about['model']} on {about['task']}, {about['runs']} run(s)", ""]
    lines += [f"- {note}" for note in about["notes"]] + [""]
    lines += ["## Model against each untrained baseline (mean over layers, paired by run and query)", ""]
    header = ["measure", "baseline", "model", "baseline value", "difference [95 %]", "covers", "verdict"]
    body = [
        [
            r.measure,
            r.baseline,
            f"{r.model:.3g}",
            f"{r.baseline_value:.3g}",
            f"{r.difference:.3g} [{r.low:.3g}, {r.high:.3g}]",
            r.covers,
            r.verdict,
        ]
        for r in paired.itertuples()
    ]
    lines += [markdown_table(header, body), ""]
    lines += [
        f"## Per layer (mean [95 % interval]; the interval covers: {covers})",
        "",
        "Stream point L is the residual stream after the last layer; layer l of a task-vector or shift measure "
        "is the stream entering layer l; the row of a path measure is the number of demonstrations j.",
        "",
    ]
    subjects = list(dict.fromkeys(per_layer.subject))
    for measure, rows in sorted(per_layer.groupby("measure", sort=False), key=lambda item: _rank(item[0])):
        lines += [f"### `{measure}`: {meaning(measure)}", ""]
        shares = one_class_shares(per_layer, measure)
        cells = rows.apply(_cell, axis=1, shares=shares)
        table = rows.assign(cell=cells).pivot(index="layer", columns="subject", values="cell")
        shown = [s for s in subjects if s in table.columns]  # a cross pair has only the measures of a method
        lines += [
            markdown_table(["layer", *shown], [[str(layer), *table.loc[layer, shown]] for layer in table.index]),
            "",
        ]
    return "\n".join(lines)


def lenses_figure(per_layer: pd.DataFrame, methods: list[str]):
    """Per-layer curves of the headline measures, one line per subject; the band is the model's interval."""
    from matplotlib.figure import Figure

    panels = (
        [f"implicit_cos_{m}" for m in methods]
        + [f"shift_cos_{m}" for m in methods]
        + ["tv_correct", "own_stream_correct"]
    )
    panels += [f"path_cos_{m}" for m in methods if f"path_cos_{m}" in set(per_layer.measure)]
    fig = Figure(figsize=(3.6 * len(panels), 3.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, measure in zip(axes, panels):
        for subject, curve in per_layer[per_layer.measure == measure].groupby("subject", sort=False):
            style = MODEL_STYLES.get("trained" if subject == "model" else subject, ":")
            ax.plot(
                curve.layer,
                curve["mean"],
                style,
                color="black",
                label=subject,
                linewidth=1.6 if subject == "model" else 1.0,
            )
            if subject == "model":
                ax.fill_between(curve.layer, curve.low, curve.high, color="tab:blue", alpha=0.2, linewidth=0)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_title(measure, fontsize=9)
        ax.set_xlabel(
            "demonstrations"
            if measure.startswith("path")
            else "layer (stream point)"
            if not measure.startswith("implicit")
            else "layer"
        )
    axes[-1].legend(fontsize=7)
    return fig


def write_lenses(out: Path, per_layer: pd.DataFrame, paired: pd.DataFrame, about: dict) -> None:
    """The whole folder at once (a reader never sees half of it); an earlier lenses folder is replaced, its runs'
    values kept."""
    about = {"format": LENSES_FORMAT, **about, "notes": notes(per_layer, paired)}
    with replaced_atomically(out, folder=True) as staging:
        if (out / RUNS).is_dir():
            shutil.copytree(out / RUNS, staging / RUNS)
        (staging / "per_layer.csv").write_text(per_layer.to_csv(index=False, float_format="%.6g"))
        (staging / "paired.csv").write_text(paired.to_csv(index=False, float_format="%.6g"))
        (staging / "lenses.md").write_text(lenses_markdown(per_layer, paired, about))
        save_figure(lenses_figure(per_layer, about["methods"]), staging / "lenses.png")
        (staging / MARKER).write_text(json.dumps(about, indent=1))
