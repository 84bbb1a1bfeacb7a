"""From Records to the numbers of result.json: accuracies, every metric per layer and mean, and per head.

Pure: takes recorded tensors (and W_O for per-head attention outputs), never a model. The layout is the one
`Result.save` writes and `scripts/recompute_metrics.py` checks independently. Besides the numbers it says what
could be misread: undefined values, updates below float resolution, a setting that answers one class.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from iclgd_lens.core import metrics as M
from iclgd_lens.core.presets import SUBSETS
from iclgd_lens.core.recording import Record

METRICS = ("simaou", "simaou_norm", "random_simaou", "simam_before", "simam", "simam_delta", "rec2ftp", "alpha")
PER_HEAD_METRICS = ("simaou", "simaou_norm", "simam_before", "simam", "simam_delta", "alpha")
RESOLUTION_WARNING_SHARE = 0.10  # warn when more updates than this are below float resolution
# A layer where more than this share of a setting's score updates is below float resolution gives SimAM∆ (and α)
# values that measure rounding: it is left out of their means (docs/reference/metrics.md, "Rounding-level layers").
ROUNDING_LAYER_SHARE = 0.5
ONE_CLASS_WARNING_SHARE = 0.90  # warn when a setting answers one class this often


@dataclass
class Scores:
    """Every number one model's comparison yields: the trained model's, or one untrained baseline's. result.json
    holds the trained model's at its top level and each baseline's under `baselines`, in this layout
    (docs/reference/result-format.md)."""

    accuracy: dict[str, float]  # setting ("zs", "icl", "gd", ...) -> accuracy over the queries
    metrics: dict[str, dict]  # method -> metric -> {mean, per_layer, defined, total, ...}; "alpha" -> {...}
    per_head: dict[str, dict]  # method -> metric -> [layer][head]; "alpha" -> [layer][head]
    predictions: dict[str, dict] = field(default_factory=dict)  # setting -> {class, share} of its commonest answer
    resolution: dict = field(default_factory=dict)  # per setting and layer, shares of updates below float resolution
    subsets: dict[str, dict] = field(default_factory=dict)  # "f2t" -> method -> {n, metrics}
    notes: list[str] = field(default_factory=list)  # what a reader could misread
    update_norm: dict[str, dict] = field(default_factory=dict)  # method -> ‖ΔW‖ per layer, per parameter, total
    lr: dict[str, float] = field(default_factory=dict)  # method -> the learning rate it trained with on this model

    def to_json(self) -> dict:
        main = {"accuracy": self.accuracy, "metrics": self.metrics, "per_head": self.per_head}
        main |= {"predictions": self.predictions, "resolution": self.resolution}
        return main | self.subsets | {"notes": self.notes, "update_norm": self.update_norm, "lr": self.lr}

    @classmethod
    def from_json(cls, data: dict) -> Scores:
        """Also an older result's scores, which may lack predictions, resolution, notes, update norms or lrs."""
        optional = ("predictions", "resolution", "notes", "update_norm", "lr")
        return cls(
            data["accuracy"],
            data["metrics"],
            data["per_head"],
            **{k: data[k] for k in optional if k in data},
            subsets={subset: data[subset] for subset in SUBSETS if subset in data},
        )


def check_metric(metric: str, allowed: tuple[str, ...] = METRICS) -> str:
    if metric not in allowed:
        raise ValueError(f"unknown metric {metric!r}; choose from {list(allowed)}")
    return metric


def score(
    records: dict[str, Record],
    labels: Int[Tensor, " n"],
    W_O: dict[str, Tensor],
    seed: int,
    *,
    eps: float | None = None,
    dtype: torch.dtype = torch.float32,
    subsets: tuple[str, ...] = (),
    class_names: tuple[str, ...] | None = None,
) -> Scores:
    """Every score of one subject's settings: `records` holds "zs", "icl" and one Record per method (the methods
    scored, in their order); `labels` the queries' classes; `W_O["model"]` is the model's output weights and
    `W_O[method]` a finetuned method's own where O was trained; `seed` draws the random baseline's directions.
    `eps` selects the metric arithmetic (None: exact, NaN-skipping; a number: the reference's); `dtype` is the
    recording's, for the resolution diagnostic; `subsets` also scores those query subsets ("f2t"); `class_names`
    name the classes in the notes.

    Returns the `Scores`: every number but the update norms and lrs, which `compare` adds from the deltas."""
    zs, icl = records["zs"], records["icl"]
    methods = tuple(name for name in records if name not in ("zs", "icl"))
    out = Scores(
        accuracy={name: M.accuracy(r.pred, labels) for name, r in records.items()},
        metrics={},
        per_head={},
        predictions={name: majority(r.pred) for name, r in records.items()},
        resolution=resolution_shares(records, methods, dtype),
    )
    for method in methods:
        ft = records[method]
        rounding = excluded_layers(zs, (icl, ft), eps, dtype)
        values = similarities(zs, icl, ft, seed, eps, rounding)
        out.metrics[method] = reduced(values, zs, icl, ft, labels)
        out.metrics[method]["simam_delta"]["rounding_layers"] = rounding
        per_head_values = head_similarities(zs, icl, ft, W_O["model"], W_O.get(method, W_O["model"]), eps) | {
            name: values[name] for name in ("simam_before", "simam", "simam_delta")
        }
        out.per_head[method] = {name: M.per_head(v) for name, v in per_head_values.items()}
    if "gd" in methods and "lcgd" in methods:
        rounding = excluded_layers(zs, (records["lcgd"], records["gd"]), eps, dtype)
        values = alpha_values(zs, records["lcgd"], records["gd"], eps, rounding)
        out.metrics["alpha"] = M.reduce(values) | {"rounding_layers": rounding}
        out.per_head["alpha"] = M.per_head(values)
    for subset in subsets:
        out.subsets[subset] = {}
        for method in methods:
            rows = M.f2t(zs.pred, records[method].pred, icl.pred, labels)
            part = [records[s].select(rows) for s in ("zs", "icl", method)]
            rounding = excluded_layers(part[0], tuple(part[1:]), eps, dtype)
            # scored on every query, then its rows: each query keeps the random direction it has in the main table
            values = similarities(zs, icl, records[method], seed, eps, rounding)
            metrics = reduced({name: v[rows] for name, v in values.items()}, *part, labels[rows])
            metrics["simam_delta"]["rounding_layers"] = rounding
            out.subsets[subset][method] = {"n": int(rows.sum()), "metrics": metrics}
    out.notes = notes(out, methods, class_names)
    return out


def similarities(
    zs: Record, icl: Record, ft: Record, seed: int, eps: float | None, rounding: Sequence[int] = ()
) -> dict[str, Tensor]:
    """Every similarity of one method, per example: [n, layer] for attention outputs, [n, layer, head] for scores.
    SimAM∆ is NaN in the `rounding` layers (`excluded_layers(zs, (icl, ft), ...)`)."""
    simam_delta = M.simam_delta(icl.scores, zs.scores, ft.scores, zs.query_len, eps=eps)
    return {
        "simaou": M.simaou(icl.attn_out, zs.attn_out, ft.attn_out, eps=eps),
        "simaou_norm": M.simaou_norm(icl.attn_out, zs.attn_out, ft.attn_out, eps=eps),
        "random_simaou": M.random_simaou(icl.attn_out, zs.attn_out, seed=seed, eps=eps),
        "simam_before": M.simam_before(icl.scores, zs.scores, zs.query_len, eps=eps),
        "simam": M.simam(icl.scores, ft.scores, zs.query_len, eps=eps),
        "simam_delta": without_layers(simam_delta, rounding),
    }


def alpha_values(
    zs: Record, lcgd: Record, gd: Record, eps: float | None, rounding: Sequence[int] = ()
) -> Float[Tensor, "n layer head"]:
    """Revisited's α per example and head, NaN in the `rounding` layers (`excluded_layers(zs, (lcgd, gd), ...)`)."""
    return without_layers(M.alpha(lcgd.scores, gd.scores, zs.scores, zs.query_len, eps), rounding)


def excluded_layers(zs: Record, updated: tuple[Record, ...], eps: float | None, dtype: torch.dtype | None) -> list[int]:
    """The layers where, for any of `updated`, more than ROUNDING_LAYER_SHARE of the (query, head) score updates
    X − ZS are below `dtype`'s resolution: a score-update cosine there measures rounding. None under the reference
    arithmetic (which averages every value in, as the reference code does) or without a dtype."""
    if eps is not None or dtype is None:
        return []
    shares = [score_updates_below_resolution(zs, other, M.resolution(dtype)).double().mean((0, 2)) for other in updated]
    return [
        layer for layer in range(zs.scores.shape[1]) if any(share[layer] > ROUNDING_LAYER_SHARE for share in shares)
    ]


def without_layers(values: Tensor, layers: Sequence[int]) -> Tensor:
    """`values` ([n, layer, ...]) with `layers` set to NaN (undefined: left out of every mean, counted in `defined`)."""
    if not layers:
        return values
    values = values.clone()
    values[:, list(layers)] = math.nan
    return values


def score_updates_below_resolution(zs: Record, other: Record, relative: float) -> Bool[Tensor, "n layer head"]:
    """Where `other`'s pre-softmax score update over the query's own keys is below `relative` of ZS's scores."""
    mask = M.key_mask(zs.query_len, zs.scores.shape[-1])
    zs_scores = torch.where(mask, zs.scores, 0.0)
    update = torch.where(mask, other.scores.double() - zs.scores.double(), 0.0)
    return M.below_resolution(update, zs_scores, relative)


HEAD_CHUNK = 64  # queries whose per-head outputs ([chunk, layer, head, d_model], float64) exist at once


def head_similarities(
    zs: Record, icl: Record, ft: Record, W_O: Tensor, ft_W_O: Tensor, eps: float | None
) -> dict[str, Tensor]:
    """SimAOU and Dai's SimAOU per head ([n, layer, head]) on per-head outputs z·W_O, a chunk of queries at a time:
    all queries' per-head outputs at once are n·layer·head·d_model float64 values per setting (771 MB for 872
    queries of a GPT-2 small, four settings at once); each value depends on its own query only, so chunking
    changes no number."""
    parts: dict[str, list[Tensor]] = {"simaou": [], "simaou_norm": []}
    for start in range(0, len(zs.z), HEAD_CHUNK):
        rows = slice(start, start + HEAD_CHUNK)
        h_zs, h_icl = M.head_outputs(zs.z[rows], W_O), M.head_outputs(icl.z[rows], W_O)
        h_ft = M.head_outputs(ft.z[rows], ft_W_O)
        parts["simaou"].append(M.simaou(h_icl, h_zs, h_ft, eps=eps))
        parts["simaou_norm"].append(M.simaou_norm(h_icl, h_zs, h_ft, eps=eps))
    return {name: torch.cat(values) for name, values in parts.items()}


def reduced(values: dict[str, Tensor], zs: Record, icl: Record, ft: Record, labels: Tensor) -> dict:
    """{metric: {mean, per_layer, defined, total}} of `similarities`, and Rec2FTP."""
    return {name: M.reduce(v) for name, v in values.items()} | {
        "rec2ftp": M.rec2ftp(zs.pred, ft.pred, icl.pred, labels)
    }


def majority(pred: Int[Tensor, " n"]) -> dict:
    """The most frequent predicted class and its share of the queries (1.0: the setting answers one class)."""
    label, count = Counter(pred.tolist()).most_common(1)[0]
    return {"class": int(label), "share": count / len(pred)}


def resolution_shares(records: dict[str, Record], methods: tuple[str, ...], dtype: torch.dtype) -> dict:
    """Per setting (ICL and each method) and layer, the share of updates X − ZS below the recording dtype's
    resolution relative to the ZS vector: attention outputs per query, pre-softmax scores per (query, head)."""
    relative = M.resolution(dtype)
    zs = records["zs"]
    out: dict = {"dtype": str(dtype).removeprefix("torch."), "relative": relative}
    for setting in ("icl", *methods):
        other = records[setting]
        attn = M.below_resolution(other.attn_out.double() - zs.attn_out.double(), zs.attn_out, relative)
        scores = score_updates_below_resolution(zs, other, relative)
        out[setting] = {
            "attn_out": attn.double().mean(0).tolist(),
            "scores": scores.double().mean((0, 2)).tolist(),
        }
    return out


def notes(scores: Scores, methods: tuple[str, ...], class_names: tuple[str, ...] | None = None) -> list[str]:
    """One line per thing a reader could misread in `scores`; shown under the summary and kept in result.json."""
    lines = []
    name_of = (lambda c: repr(class_names[c])) if class_names else (lambda c: f"class {c}")
    for setting, majority_ in scores.predictions.items():
        if majority_["share"] >= ONE_CLASS_WARNING_SHARE:
            which = "every query" if majority_["share"] == 1.0 else f"{majority_['share']:.0%} of queries"
            lines.append(f"{setting} answers {name_of(majority_['class'])} for {which}")
    resolution = scores.resolution
    for setting in ("icl", *methods):
        for kind, label in (("attn_out", "attention-output"), ("scores", "score")):
            shares = resolution[setting][kind]
            worst = max(shares)
            if worst > RESOLUTION_WARNING_SHARE:
                layers = [layer for layer, share in enumerate(shares) if share > RESOLUTION_WARNING_SHARE]
                lines.append(
                    f"{setting}: up to {worst:.0%} of {label} updates are zero or below {resolution['dtype']} "
                    f"resolution ({resolution['relative']:g} of the ZS vector) in layers {layers}: their similarities "
                    "measure rounding"
                )
    for method, metrics in scores.metrics.items():
        lines += metric_notes(method, metrics, resolution["dtype"])
    for subset, parts in scores.subsets.items():
        for method, part in parts.items():
            if part["n"] == 0:
                lines.append(f"{subset} subset of {method} is empty: its metrics are undefined")
            else:
                lines += metric_notes(method, part["metrics"], resolution["dtype"], f"{subset} subset, ")
    return lines


def metric_notes(method: str, metrics: dict, dtype: str, where: str = "") -> list[str]:
    """The notes of one method's metrics (`where` names a query subset): layers left out at rounding level,
    undefined values, an undefined Rec2FTP."""
    lines = []
    for name, value in metrics.items() if method != "alpha" else [("alpha", metrics)]:
        what = where + ("alpha" if method == "alpha" else f"{method} {name}")  # α is a metric of no one method
        if name != "rec2ftp" and value.get("rounding_layers"):
            lines.append(
                f"{what}: layers {value['rounding_layers']} left out of the means (more than "
                f"{ROUNDING_LAYER_SHARE:.0%} of a compared score update there is below {dtype} resolution: its "
                "cosine measures rounding)"
            )
        if name == "rec2ftp":
            if value != value:
                lines.append(f"{where}{method} rec2ftp is undefined: {method} fixes no query that ZS gets wrong")
            continue
        n = value["total"]
        if value["defined"] < n:
            lines.append(
                f"{what}: {n - value['defined']} of {n} values undefined (a zero update or zero vector), skipped in "
                "the means"
            )
    return lines
