"""Do the toolkit and the naive pipeline compute the same numbers? Three checks (`all_agreements`): the recorded
tensors, the metric code on the same records, and every number end to end."""

from __future__ import annotations

import math

import torch

from benchmarks.naive import Row, naive_scores
from iclgd_lens import Record, Result

AGREEMENT = 1e-4  # largest allowed difference of any number between the two pipelines (fp32, end to end)
RECORDS_AGREEMENT = 1e-4  # ... of a recorded tensor, relative to its largest value
# ... of a GD or LCGD recording: the naive fit's W + ΔW in float32 drops ΔW's bits below W's resolution
FIT_RECORDS_AGREEMENT = 1e-3
METRIC_CODE_AGREEMENT = 1e-9  # ... of any number when both metric codes score the same records (float64)


def all_agreements(naive: dict, result: Result, strict: bool) -> dict:
    """Three checks. `records`: the recorded tensors agree to float32 rounding; `metric_code`: the naive metric
    loops score the toolkit's own records exactly as the toolkit does; `metrics`: every number end to end (with
    `strict`, required within AGREEMENT; otherwise reported: a similarity of an update near float32 resolution
    turns the two pipelines' rounding into differences larger than the tolerance)."""
    toolkit_rows = {setting: rows_of(record) for setting, record in result.records.items()}
    toolkit_scores = result.scores["model"].to_json()
    rescored = naive_scores(toolkit_rows, result.labels.tolist(), result.W_O["model"], 0)
    out = {
        "records": records_agreement(naive["records"], result.records),
        "metric_code": scores_agreement(rescored, toolkit_scores, METRIC_CODE_AGREEMENT),
        "metrics": scores_agreement(naive["scores"], toolkit_scores),
        "metrics_required": strict,
    }
    out["agree"] = out["records"]["agree"] and out["metric_code"]["agree"] and (out["metrics"]["agree"] or not strict)
    return out


def scores_agreement(naive: dict, toolkit: dict, tolerance: float = AGREEMENT) -> dict:
    """The largest difference between the naive numbers and the toolkit's at the same paths (NaN must meet NaN)."""
    ours = flatten({key: toolkit[key] for key in ("accuracy", "metrics", "per_head")})
    theirs = flatten(naive)
    missing = sorted(set(theirs) - set(ours))
    if missing:
        raise SystemExit(f"bench: the toolkit's scores lack {missing[:5]}")
    worst, where, nan_mismatch = 0.0, None, []
    for path, value in theirs.items():
        other = ours[path]
        if math.isnan(value) or math.isnan(other):
            if math.isnan(value) != math.isnan(other):
                nan_mismatch.append(path)
            continue
        if abs(value - other) >= worst:
            worst, where = abs(value - other), path
    return {
        "compared": len(theirs),
        "max_abs_diff": worst,
        "at": where,
        "nan_mismatch": nan_mismatch,
        "tolerance": tolerance,
        "agree": worst <= tolerance and not nan_mismatch,
    }


def flatten(scores: dict | list, prefix: str = "") -> dict[str, float]:
    """Every number of a scores dict by its path, e.g. 'metrics/gd/simaou/per_layer/3'."""
    out = {}
    items = scores.items() if isinstance(scores, dict) else enumerate(scores)
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, (dict, list)):
            out |= flatten(value, path + "/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[path] = float(value)
    return out


def records_agreement(naive: dict[str, list[Row]], toolkit: dict[str, Record]) -> dict:
    """Per setting, the largest difference between the two pipelines' recorded tensors relative to the tensor's
    largest value: the forward passes (whole prompt vs cached prefix and batches) agree to float32 rounding; the
    fitted settings also carry the naive copy's rounding of W + ΔW (FIT_RECORDS_AGREEMENT)."""
    out: dict = {"settings": {}}
    for setting, rows in naive.items():
        record, worst, where = toolkit[setting], 0.0, None
        for i, row in enumerate(rows):
            pairs = {
                "attn_out": (record.attn_out[i], torch.stack(row["attn_out"])),
                "z": (record.z[i], torch.stack(row["z"])),
                "scores": (record.scores[i, :, :, : int(record.query_len[i])], torch.stack(row["scores"])),
                "label_logprobs": (record.label_logprobs[i], torch.tensor(row["label_logprobs"])),
            }
            for name, (ours, theirs) in pairs.items():
                ours, theirs = ours.double(), theirs.double()
                relative = float((ours - theirs).abs().max() / ours.abs().max())
                if relative >= worst:
                    worst, where = relative, f"{name}/query {i}"
        tolerance = RECORDS_AGREEMENT if setting in ("zs", "icl") else FIT_RECORDS_AGREEMENT
        out["settings"][setting] = {
            "max_relative_diff": worst,
            "at": where,
            "tolerance": tolerance,
            "agree": worst <= tolerance,
        }
    out["agree"] = all(v["agree"] for v in out["settings"].values())
    return out


def rows_of(record: Record) -> list[Row]:
    """A toolkit Record in the naive pipeline's layout, to score it with the naive metric loops."""
    rows = []
    for i in range(len(record.pred)):
        n = int(record.query_len[i])
        rows.append(
            {
                "attn_out": list(record.attn_out[i].double()),
                "z": list(record.z[i].double()),
                "scores": list(record.scores[i, :, :, :n].double()),
                "label_logprobs": record.label_logprobs[i].tolist(),
                "pred": int(record.pred[i]),
            }
        )
    return rows
