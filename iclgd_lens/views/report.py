"""One self-contained HTML report of result folders: summaries and per-layer tables, plots, attention views,
attribution tables. Opening it makes no network request: the circuitsvis bundle is inlined once, plots are data:
URLs, and a Content-Security-Policy forbids every other source.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from html import escape
from pathlib import Path

import pandas as pd

from iclgd_lens.core.results import Result
from iclgd_lens.files import check_format, check_output
from iclgd_lens.views.attribution import ATTRIBUTION_FORMAT
from iclgd_lens.views.attribution import MARKER as ATTRIBUTION_MARKER
from iclgd_lens.views.html import circuitsvis_script, heading
from iclgd_lens.views.lenses import LENSES_FORMAT, MARKER, meaning

REPORT_METRICS = ("simaou_norm", "simaou", "simam", "simam_delta")
GENERATOR = '<meta name="generator" content="iclgd-lens report">'  # marks a file this toolkit wrote
CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; }
section { margin-bottom: 32px; }
.note { color: #8a4b00; font-size: 13px; }
details { margin: 4px 0 12px; }
summary { cursor: pointer; color: #8a4b00; font-size: 13px; }
.accuracy { font-size: 15px; }
td.above { background: #dff3e0; } td.below { background: #f8dede; } td.borderline { background: #fff4d6; }
img { max-width: 100%; }
"""


def figure_tag(fig) -> str:
    """A matplotlib figure as an <img> with a PNG data: URL."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(float_format=lambda v: f"{v:.3f}", na_rep="NaN", border=0)


def folded_notes(notes: Sequence[str]) -> str:
    """The notes grouped by the subject they name ("no_training: ..."; the trained model's have no prefix), each
    group folded under a line that says how many it holds."""
    groups: dict[str, list[str]] = {}
    for note in notes:
        subject, _, rest = note.partition(": ")
        key = subject if rest and " " not in subject else "the trained model"
        groups.setdefault(key, []).append(rest if key == subject else note)
    return "".join(
        f"<details><summary>{len(group)} note{'s' * (len(group) > 1)} on {escape(key)}: what a reader could "
        f"misread</summary><ul>{''.join(f'<li class=note>{escape(n)}</li>' for n in group)}</ul></details>"
        for key, group in groups.items()
    )


def result_section(name: str, result: Result) -> str:
    """A result: its settings, then what a reader comes for (the trained model's accuracies, the summary table),
    the notes folded, and the per-layer tables."""
    config = result.config
    facts = (
        f"{config['model']} on {config['task']}: k={config['k']} (effective {config['effective_k']}), seed "
        f"{config['seed']}, permutation {config['permutation']}, lr {config['lr']}, {config['n_eval']} queries, "
        f"preset {config['preset']}, {config['dtype']}"
    )
    accuracy = ", ".join(f"{setting.upper()} {value:.3f}" for setting, value in result.accuracy.items())
    summary = result.summary()
    layers = "".join(heading(metric, 4) + _table(result.per_layer(metric)) for metric in REPORT_METRICS)
    return (
        f"<section>{heading(name, 2)}<p class=accuracy>Accuracy of the trained model: {escape(accuracy)}</p>"
        f"<p>{escape(facts)}</p>{heading('Summary', 3)}{_table(pd.DataFrame(summary))}"
        f"{folded_notes(summary.notes)}{heading('Per layer', 3)}{layers}</section>"
    )


def verdict_table(frame: pd.DataFrame) -> str:
    """A table with a `verdict` column, each verdict cell coloured by what it says."""
    html = _table(frame)
    for verdict in ("above", "below", "borderline"):
        html = html.replace(f"<td>{verdict}</td>", f'<td class="{verdict}">{verdict}</td>')
    return html


def build_report(
    results: Sequence[tuple[str, Result]],
    model=None,
    view_queries: Sequence[int] = (0,),
    attribution: Sequence[Path] = (),
    title: str = "iclgd-lens report",
    lenses: Sequence[Path] = (),
) -> str:
    """The report's HTML. `results`: (name, result) pairs. With `model` (the one the results were computed on),
    attention views of `view_queries` of the first result are recorded and drawn. `attribution`: folders written by
    `iclgd-lens attribute`, whose tables are included; `lenses`: folders written by `iclgd-lens lenses`."""
    from iclgd_lens.analysis.heads.patterns import record_patterns
    from iclgd_lens.views.attention import attention_view, score_change_view
    from iclgd_lens.views.plots import head_heatmaps, per_layer_plot

    if not results:
        raise ValueError("give at least one result folder")
    parts = [f"<h1>{escape(title)}</h1>"]
    parts += [result_section(name, result) for name, result in results]
    plain = [result for _, result in results]
    plots = "".join(heading(m, 4) + figure_tag(per_layer_plot(plain, m)) for m in REPORT_METRICS)
    first_name, first = results[0]
    baselines = tuple(f"{b}/{m}" for b in first.config["baselines"][:1] for m in first.methods)
    heads = figure_tag(head_heatmaps(first, methods=(*first.methods, *baselines)))
    parts.append(
        f"<section>{heading('Per-layer curves (mean ± std over results of a task)', 2)}{plots}"
        f"{heading(f'Per head: {first_name}', 2)}{heads}</section>"
    )
    if model is not None:
        views = "".join(attention_view(record_patterns(model, first, q)).body for q in view_queries)
        changes = "".join(score_change_view(first, q, tokenizer=model.tokenizer).body for q in view_queries)
        parts.append(f"<section>{heading(f'Attention: {first_name}', 2)}{views}{changes}</section>")
    for folder in attribution:
        parts.append(attribution_section(Path(folder)))
    for folder in lenses:
        parts.append(lenses_section(Path(folder)))
    return (
        f'<!doctype html><html><head><meta charset="utf-8">{GENERATOR}<meta http-equiv="Content-Security-Policy" '
        f'content="{CSP}"><title>{escape(title)}</title><style>{STYLE}</style>'
        f"{circuitsvis_script() if model is not None else ''}</head><body>{''.join(parts)}</body></html>"
    )


def attribution_section(folder: Path) -> str:
    """The tables an attribution folder holds (heads.csv, kendall.csv), and its heatmaps."""
    check_format(folder, ATTRIBUTION_MARKER, (ATTRIBUTION_FORMAT,), "attribution", "attribute")
    parts = [heading(f"Attribution: {folder.name}", 2)]
    for name in ("heads.csv", "kendall.csv"):
        path = folder / name
        if path.is_file():
            parts.append(heading(name, 3) + _table(pd.read_csv(path)))
    for image in sorted(folder.glob("*.png")):
        data = base64.b64encode(image.read_bytes()).decode()
        parts.append(f'<img alt="{escape(image.name)}" src="data:image/png;base64,{data}">')
    if len(parts) == 1:
        raise ValueError(
            f"{str(folder)!r} holds no attribution tables (heads.csv, kendall.csv); run iclgd-lens attribute"
        )
    return f"<section>{''.join(parts)}</section>"


def lenses_section(folder: Path) -> str:
    """A lenses folder: its notes, the paired verdicts, the headline measures per layer, and its figure."""
    about = check_format(folder, MARKER, (LENSES_FORMAT,), "lenses", "lenses")
    per_layer = pd.read_csv(folder / "per_layer.csv")
    headline = [m for m in dict.fromkeys(per_layer.measure) if m.startswith(("implicit_cos_", "shift_cos_"))]
    tables = ""
    for measure in [*headline, "tv_correct"]:
        rows = per_layer[per_layer.measure == measure]
        if len(rows):
            wide = rows.pivot(index="layer", columns="subject", values="mean")[list(dict.fromkeys(rows.subject))]
            tables += heading(f"{measure}: {meaning(measure)}", 4) + _table(wide)
    image = base64.b64encode((folder / "lenses.png").read_bytes()).decode()
    title = f"Lenses: {folder.name} ({about['model']} on {about['task']}, {about['runs']} runs)"
    return (
        f"<section>{heading(title, 2)}{heading('Model against each baseline and control', 3)}"
        f"{verdict_table(pd.read_csv(folder / 'paired.csv'))}{folded_notes(about['notes'])}"
        f"{heading('Per layer (means; intervals in per_layer.csv)', 3)}"
        f'{tables}<img alt="lenses.png" src="data:image/png;base64,{image}"></section>'
    )


def check_report_file(path: Path, overwrite: bool) -> None:
    """Refuse, before anything is computed, a file the toolkit did not write, or one it did without `overwrite`."""
    check_output(path, "report", is_report_file, overwrite, folder=False)


def is_report_file(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as file:
        return GENERATOR in file.read(2000)
