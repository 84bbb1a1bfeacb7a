"""From Records to the numbers of result.json: accuracies, every metric per layer and mean, and per head.

Pure: takes recorded tensors (and W_O for per-head attention outputs), never a model. The layout is the one
`Result.save` writes and `analyses/recompute_metrics.py` checks independently.
"""

from __future__ import annotations

from torch import Tensor

from iclgd_lens import metrics as M
from iclgd_lens.recording import Record

METRICS = ("simaou", "simaou_norm", "random_simaou", "simam_before", "simam", "simam_delta", "rec2ftp", "alpha")
PER_HEAD_METRICS = ("simaou", "simaou_norm", "simam_before", "simam", "simam_delta", "alpha")


def check_metric(metric: str, allowed: tuple[str, ...] = METRICS) -> str:
    if metric not in allowed:
        raise ValueError(f"unknown metric {metric!r}; choose from {list(allowed)}")
    return metric


def score(
    records: dict[str, Record], labels: Tensor, W_O: dict[str, Tensor], methods: tuple[str, ...], seed: int
) -> dict:
    """`records` holds "zs", "icl" and one Record per method; `W_O["model"]` is the model's output weights and
    `W_O[method]` a finetuned method's own where O was trained. Returns {accuracy, metrics, per_head}."""
    zs, icl = records["zs"], records["icl"]
    query_len = zs.query_len
    out: dict = {
        "accuracy": {name: M.accuracy(r.pred, labels) for name, r in records.items()},
        "metrics": {},
        "per_head": {},
    }
    heads = {name: M.head_outputs(r.z, W_O.get(name, W_O["model"])) for name, r in records.items()}
    for method in methods:
        ft = records[method]
        values = {
            "simaou": M.simaou(icl.attn_out, zs.attn_out, ft.attn_out),
            "simaou_norm": M.simaou_norm(icl.attn_out, zs.attn_out, ft.attn_out),
            "random_simaou": M.random_simaou(icl.attn_out, zs.attn_out, seed=seed),
            "simam_before": M.simam_before(icl.scores, zs.scores, query_len),
            "simam": M.simam(icl.scores, ft.scores, query_len),
            "simam_delta": M.simam_delta(icl.scores, zs.scores, ft.scores, query_len),
        }
        out["metrics"][method] = {name: M.reduce(v) for name, v in values.items()}
        out["metrics"][method]["rec2ftp"] = M.rec2ftp(zs.pred, ft.pred, icl.pred, labels)
        per_head = {
            "simaou": M.simaou(heads["icl"], heads["zs"], heads[method]),
            "simaou_norm": M.simaou_norm(heads["icl"], heads["zs"], heads[method]),
            "simam_before": values["simam_before"],
            "simam": values["simam"],
            "simam_delta": values["simam_delta"],
        }
        out["per_head"][method] = {name: M.per_head(v) for name, v in per_head.items()}
    if "gd" in methods and "lcgd" in methods:
        values = M.alpha(records["lcgd"].scores, records["gd"].scores, zs.scores, query_len)
        out["metrics"]["alpha"] = M.reduce(values)
        out["per_head"]["alpha"] = M.per_head(values)
    return out
