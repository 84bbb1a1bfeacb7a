"""The findings' tables and summary sentences in Markdown, from `analysis.protocol.findings`' counts: the only
source of the
numbers in the README's findings section and docs/findings.md's summary (`scripts/findings.py` writes them
between `<!-- findings -->` and `<!-- /findings -->`; tests/views/test_findings.py checks the committed pages)."""

from __future__ import annotations

import math

import pandas as pd

from iclgd_lens.analysis.heads.whole_model import WholeModelReading
from iclgd_lens.analysis.lenses.lens_findings import CONTROL, LensReading
from iclgd_lens.analysis.protocol.findings import PairCounts, totals
from iclgd_lens.analysis.protocol.tables import control_label
from iclgd_lens.core.results import other_task_name
from iclgd_lens.views.lenses import one_class_flag
from iclgd_lens.views.markdown import markdown_table

MODEL_NAMES = {"smollm2-135m": "SmolLM2-135M", "gemma3-270m": "Gemma 3 270M"}
DESIGNS = {
    "matched": "at matched update size (every baseline's and LCGD's update as large as the trained model's GD, "
    "within 2 %)",
    "paper": "at the papers' learning rates (every subject at the trained model's lr, LCGD at GD's)",
}


def findings_block(pairs: list[PairCounts]) -> str:
    """For each design present (matched update size, then the papers' way): its summary sentence and its table."""
    parts = []
    for design in ("matched", "paper"):
        chosen = [p for p in pairs if p.baseline_lr == design]
        if chosen:
            sentence = summary_sentence(chosen, defined=not parts)
            parts += [f"**{_capital(DESIGNS[design])}.** {sentence}", findings_table(chosen)]
    return "\n\n".join(parts)


def findings_summary(pairs: list[PairCounts]) -> str:
    """The front door's paragraph: each design's summary sentence, without the tables."""
    designs = [design for design in ("matched", "paper") if any(p.baseline_lr == design for p in pairs)]
    return "\n\n".join(
        f"**{_capital(DESIGNS[design])}.** "
        f"{summary_sentence([p for p in pairs if p.baseline_lr == design], defined=design == designs[0])}"
        for design in designs
    )


def summary_sentence(pairs: list[PairCounts], defined: bool = True) -> str:
    """What the counts over `pairs` say, every number from `totals`. `defined`: say what the metrics and α are and
    how a verdict is read (the first sentence of a block; the next ones refer back)."""
    t = totals(pairs)
    most = max(p.alpha_total for p in pairs)
    fewer = sum(p.alpha_total < most for p in pairs)  # pairs compared with fewer baselines ("every" is then fewer)
    against = f" ({fewer} of them against fewer baselines)" if fewer else ""
    metrics = " (SimAOU_norm, SimAOU, SimAM∆)" if defined else ""
    reading = " (each verdict read on its own at 95 %)" if defined else ""
    alpha = ", the cosine between LCGD's and GD's score updates (it involves no ICL)," if defined else ""
    return (
        f"Over {t['pairs']} (model, task) pairs{against}, GD's similarity to ICL{metrics} is above an untrained "
        f"baseline's on {t['gd_above']} of {t['gd_verdicts']} paired verdicts, below on {t['gd_below']}, not shown "
        f"different on {t['gd_no_difference_shown']} and borderline on {t['gd_borderline']}{reading}; LCGD's "
        f"α{alpha} is below every untrained baseline's on {t['alpha_below_all']} of {t['pairs']} pairs; ICL's mean "
        f"accuracy beats zero-shot on {t['icl_above_zs']} of {t['pairs']}."
    )


def findings_table(pairs: list[PairCounts]) -> str:
    header = [
        "model",
        "task",
        "runs",
        "bootstrap",
        "GD's lr",
        "largest baseline ‖ΔW‖ / trained (GD)",
        "ZS → ICL (%)",
        "GD against the baselines: above / below / not shown / borderline",
        "LCGD's α below a baseline",
        "primary (SimAOU_norm), Holm: GD; LCGD",
    ]
    rows = [
        [
            MODEL_NAMES.get(p.model, p.model),
            p.task,
            str(p.runs),
            p.bootstrap,
            p.lr,
            _ratio(p.gd_norm_ratio),
            f"{100 * p.zs:.0f} → {100 * p.icl:.0f}",
            _verdicts(p.gd, p.gd_total),
            _alpha(p),
            _primary(p),
        ]
        for p in pairs
    ]
    return markdown_table(header, rows)


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3g}"


def _verdicts(counts: dict[str, int], total: int) -> str:
    said = " / ".join(str(counts.get(v, 0)) for v in ("above", "below", "no difference shown", "borderline"))
    return f"{said} (of {total})"


def _alpha(pair: PairCounts) -> str:
    below, above = pair.alpha.get("below", 0), pair.alpha.get("above", 0)
    return f"{below} of {pair.alpha_total}" + (f" (above on {above})" if above else "")


def _primary(pair: PairCounts) -> str:
    if not pair.primary:
        return "not adjusted"
    parts = []
    for method in ("gd", "lcgd"):
        counts = pair.primary.get(method, {})
        parts.append(", ".join(f"{n} {verdict}" for verdict, n in counts.items()) or "–")
    return "; ".join(parts)


METRIC_NAMES = {"simaou_norm": "SimAOU_norm", "simaou": "SimAOU", "simam_delta": "SimAM∆", "alpha": "α"}


def beside_table(frame: pd.DataFrame, first: str, second: str) -> str:
    """`analysis.protocol.findings.beside` in Markdown: a row per verdict, each sweep's cell "difference [interval]:
    verdict
    (‖ΔW‖ ×ratio)"; `first` and `second` head the two columns."""

    def cell(row, side: str) -> str:
        r = {name: row[f"{side}_{name}"] for name in ("difference", "diff_low", "diff_high", "verdict", "ratio")}
        return (
            f"{r['difference']:+.3f} [{r['diff_low']:+.3f}, {r['diff_high']:+.3f}]: {r['verdict']} "
            f"(×{_ratio(r['ratio'])})"
        )

    rows = [
        [
            row["method"].upper(),
            METRIC_NAMES.get(row["metric"], row["metric"]),
            row["baseline"],
            cell(row, "first"),
            cell(row, "second"),
        ]
        for _, row in frame.iterrows()
    ]
    header = [
        "method",
        "metric",
        "against",
        f"{first}: difference [interval]: verdict (‖ΔW‖ ×r)",
        f"{second}: difference [interval]: verdict (‖ΔW‖ ×r)",
    ]
    return markdown_table(header, rows)


def models_table(frame: pd.DataFrame, first_model: str, second_model: str) -> str:
    """`beside_table` of two models' sweeps of one task, each column headed by its model's name."""
    return beside_table(frame, _display(first_model), _display(second_model))


def control_table(frame: pd.DataFrame, control: str = control_label("shuffled")) -> str:
    """One task's verdicts against its label control (`analysis.protocol.findings.task_verdicts`' rows whose
    `against` is `control`): per method and metric the value with the true labels, with the shuffled ones, their
    paired difference with its 95 % interval, and the verdict."""
    rows = [
        [
            row["method"].upper(),
            METRIC_NAMES.get(row["metric"], row["metric"]),
            f"{row['trained']:.3f}",
            f"{row['baseline_mean']:.3f}",
            f"{row['difference']:+.3f} [{row['diff_low']:+.3f}, {row['diff_high']:+.3f}]",
            row["verdict"],
        ]
        for _, row in frame[frame["baseline"] == control].iterrows()
    ]
    return markdown_table(["method", "metric", "true labels", "shuffled", "difference [95 %]", "verdict"], rows)


def holm_table(frame: pd.DataFrame) -> str:
    """`analysis.protocol.findings.task_verdicts` in Markdown: a row per verdict, its difference, interval and raw
    verdict, its p-value and family, and for the primary contrasts the Holm-adjusted p-value and verdict."""

    def adjusted(row) -> str:
        return "" if row["family"] != "primary" else f"{row['adjusted_p']:.3g}: {row['adjusted_verdict']}"

    rows = [
        [
            row["method"].upper(),
            METRIC_NAMES.get(row["metric"], row["metric"]),
            row["baseline"],
            f"{row['difference']:+.3f} [{row['diff_low']:+.3f}, {row['diff_high']:+.3f}]: {row['verdict']}",
            f"{row['p_value']:.3g}",
            row["family"],
            adjusted(row),
        ]
        for _, row in frame.iterrows()
    ]
    header = ["method", "metric", "against", "difference [95 % interval]: raw verdict", "p", "family"]
    return markdown_table([*header, "Holm-adjusted p: verdict"], rows)


def _display(model: str) -> str:
    """A result's model name ("SmolLM2-135M-Instruct-Q4_1") as the findings name it."""
    lowered = model.lower().replace("-", "")
    return next((name for key, name in MODEL_NAMES.items() if lowered.startswith(key.replace("-", ""))), model)


def _with_interval(value: tuple[float, float, float]) -> str:
    return f"{value[0]:+.2f} [{value[1]:+.2f}, {value[2]:+.2f}]"


def _function_vector(reading: WholeModelReading) -> tuple[str, str]:
    if not reading.fv_points:
        return "not run", "not run"
    gd = reading.agreement["gd"]
    return (
        f"{reading.fv_best:.3f} at the best of {reading.fv_points} points (ZS {reading.fv_zs:.3f}, ICL "
        f"{reading.fv_icl:.3f})",
        f"{gd['overlap']} of {gd['top']} (chance {gd['chance_overlap']:.2f}); Spearman {gd['spearman']:.2f}",
    )


def _abs_cos(value: float) -> str:
    return "not run" if math.isnan(value) else f"{value:.4f}"


def whole_model_table(readings: list[WholeModelReading]) -> str:
    """`analysis.heads.whole_model`'s readings in Markdown: a row per (model, task, run)."""
    rows = []
    for r in readings:
        accuracy = {name: f"{value[0]:.2f}" for name, value in r.accuracy.items()}
        rows.append(
            [
                _display(r.model),
                r.task,
                str(r.runs),
                f"{accuracy['zs']} → {accuracy['patch_mean']} (ICL {accuracy['icl']}; GD's update {accuracy['gd']})",
                f"{_with_interval(r.gain['patch_mean'])}; GD's {_with_interval(r.gain['gd'])}",
                f"{r.patch_cos[0]:+.3f} to {r.patch_cos[1]:+.3f}, mean \\|cos\\| {r.patch_abs_cos:.4f} (random "
                f"{r.random_cos:.4f}; another task's update: {_abs_cos(r.null_abs_cos)})",
                f"{r.norm_ratio[0]:.3g} to {r.norm_ratio[1]:.3g}",
                *_function_vector(r),
            ]
        )
    header = [
        "model",
        "task",
        "runs",
        "accuracy on other queries: ZS → ICL's mean patch",
        "label log-odds gain over ZS [95 %, queries]: mean patch; GD's update",
        "cos(mean patch, GD's update) per layer (its nulls)",
        "its norm / GD's per layer",
        "function vector's accuracy",
        "its top heads among GD's top heads; rank correlation",
    ]
    return markdown_table(header, rows)


def whole_model_summary(readings: list[WholeModelReading]) -> str:
    """The front door's sentence on ICL as one weight update: per reading the mean patch's log-odds gain on other
    queries beside GD's update, its per-layer cosine and norm against GD's update with their nulls, and the function
    vector's heads against GD's where they were run."""
    gains = [
        f"{_display(r.model)} {r.task} {_with_interval(r.gain['patch_mean'])} vs {_with_interval(r.gain['gd'])}"
        for r in readings
    ]
    cos = max(max(abs(c) for c in r.patch_cos) for r in readings)
    ratios = min(r.norm_ratio[0] for r in readings), max(r.norm_ratio[1] for r in readings)
    vectors = [
        f"{r.agreement['gd']['overlap']} ({_display(r.model)}, chance {r.agreement['gd']['chance_overlap']:.2f})"
        for r in readings
        if r.fv_points
    ]
    top = next((r.agreement["gd"]["top"] for r in readings if r.fv_points), "")
    nulls = [
        f"{r.patch_abs_cos:.4f} / {r.null_abs_cos:.4f} {_display(r.model)}"
        for r in readings
        if not math.isnan(r.null_abs_cos)
    ]
    against_null = f"; mean |cos| own task / another task's update: {', '.join(nulls)}" if nulls else ""
    return (
        f"**ICL as one weight update** (one run each; intervals over queries). Label log-odds gain over ZS of ICL's "
        f"mean implicit patch on queries it was not read from, vs GD's update: {'; '.join(gains)}. Per layer its "
        f"|cos| with GD's update is at most {cos:.3f} (random {max(r.random_cos for r in readings):.4f}"
        f"{against_null}), its norm {ratios[0]:.3g} to {ratios[1]:.3g} times GD's. The function vector's top {top} "
        f"heads in GD's top {top}: {', '.join(vectors) or 'not run'}."
    )


def pooled_verdict_table(frame: pd.DataFrame) -> str:
    """A pooled folder's paired verdicts in Markdown (`analysis.lenses.lens_findings.lens_verdicts`,
    `analysis.heads.kendall.kendall_verdicts`): a row per verdict (each read on its own at 95 %: the lenses and
    Kendall are exploratory under the multiplicity policy)."""
    rows = [
        [
            f"`{row['measure']}`",
            row["baseline"],
            f"{row['model']:.3g}",
            f"{row['baseline_value']:.3g}",
            f"{row['difference']:+.3g} [{row['low']:+.3g}, {row['high']:+.3g}]: {row['verdict']}",
        ]
        for _, row in frame.iterrows()
    ]
    header = ["measure (mean over layers)", "against", "model", "against's value", "difference [95 %]: verdict"]
    return markdown_table(header, rows)


def pooled_layer_table(frame: pd.DataFrame) -> str:
    """One measure of a pooled folder per layer in Markdown (`analysis.lenses.lens_findings.lens_layers`,
    `analysis.heads.kendall.kendall_layers`): a row per layer, a column per subject (mean [95 % interval]; the
    random-direction scale has none)."""
    subjects = list(dict.fromkeys(frame["subject"]))
    sign = "+" if (frame["mean"] < 0).any() else ""  # a signed measure's values carry their sign
    cells = {(row["layer"], row["subject"]): _mean_interval(row, sign) for _, row in frame.iterrows()}
    layers = sorted(set(frame["layer"]))
    rows = [[str(layer), *(cells.get((layer, s), "") for s in subjects)] for layer in layers]
    return markdown_table(["layer", *subjects], rows)


def _mean_interval(row, sign: str) -> str:
    if math.isnan(row["low"]):
        return f"{row['mean']:.3g}"
    shown = f"{row['mean']:{sign}.3g} [{row['low']:{sign}.3g}, {row['high']:{sign}.3g}]"
    return shown + one_class_flag(row.get("one_class", math.nan))


def lens_summary(readings: list[LensReading]) -> str:
    """The front door's sentence on the lenses (`analysis.lenses.lens_findings.lens_readings`): per study, ICL's
    implicit update and residual shift against GD's, each beside GD's update on another task, the label control
    and random directions, and Hendel's task vector at its best layer."""
    if not readings:
        return "**Lenses against their nulls**: no lenses folder with 5 runs, a label control and another task's null."
    parts = []
    for r in readings:
        null = other_task_name(r.null_task)
        low, high = r.tv[1:]
        parts.append(
            f"{_display(r.model)} {r.task}: implicit update {_against(r.implicit, null)}, random "
            f"{r.random_implicit:.4f}; residual shift {_against(r.shift, null)}, random {r.random_shift:.3f}; task "
            f"vector (layer {r.tv_layer}) {r.tv[0]:.2f} [{low:.2f}, {high:.2f}], ZS {r.zs:.2f}, shuffled "
            f"{r.tv_shuffled:.2f}"
        )
    runs = " or ".join(map(str, sorted({r.runs for r in readings})))
    nulls = ", ".join(dict.fromkeys(f"{r.null_task} ({_display(r.model)})" for r in readings))
    return (
        f"**Lenses against their nulls** ({runs} runs; ICL's implicit update and residual shift: |cos| with GD's, "
        f"vs GD's update on another task, {nulls}, then vs shuffled labels, paired by run and query at 95 %; "
        f"Hendel's task vector: accuracy at its best layer, chosen post hoc). {'; '.join(parts)}."
    )


def _against(rows: dict[str, pd.Series], null: str) -> str:
    """The model's value, then GD's update on another task's and the shuffled labels', each with its verdict."""
    model = next(iter(rows.values()))["model"]
    digits = 4 if abs(model) < 0.05 else 3
    said = [f"{rows[s]['baseline_value']:.{digits}f} ({rows[s]['verdict']})" for s in (null, CONTROL) if s in rows]
    return f"{model:.{digits}f} vs {', '.join(said)}"
