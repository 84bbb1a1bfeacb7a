"""Recompute every number of a saved result from its records alone, with NumPy, independently of iclgd_lens.

    python scripts/recompute_metrics.py runs/tiny-icl-neox-synth-agnews

Accuracies, every per-layer metric (random_simaou aside: its noise comes from torch's generator) with its count of
defined values, the f2t subset when scored, and the per-head SimAOU from z·W_O, in the result's own arithmetic
(exact: NaN for a zero vector, skipped in the means; reference: dot / (|a||b| + 1e-20)). Prints each number beside
the saved one and exits non-zero if any differs by more than --tolerance or if one is NaN and the other is not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

EPS: float | None = None  # the result's arithmetic: None (exact) or the reference's epsilon; set in main
RELATIVE = 1e-6  # the recording dtype's resolution relative to the ZS vector (float32's); set in main


def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact: NaN where a vector is zero. Reference: dot / (|a||b| + eps)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    dot = (a * b).sum(-1)
    if EPS is not None:
        return dot / (na * nb + EPS)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((na > 0) & (nb > 0), dot / (np.where(na > 0, na, 1) * np.where(nb > 0, nb, 1)), np.nan)


def unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return x / (norm + EPS) if EPS is not None else x / norm


def masked(scores: np.ndarray, query_len: np.ndarray) -> np.ndarray:
    keep = np.arange(scores.shape[-1])[None, :] < query_len[:, None]
    return np.where(keep[:, None, None, :], scores, 0.0)


def nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    defined = ~np.isnan(values)
    count = defined.sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(defined, values, 0.0).sum(axis) / count, np.nan)


def rounding_layers(zs_m: np.ndarray, others: list[np.ndarray]) -> list[int]:
    """Layers where, for any of `others` (masked scores), more than half of the (query, head) updates X − ZS have a
    norm below RELATIVE times ZS's: the toolkit leaves a score-update cosine there out of its means."""
    if EPS is not None:
        return []
    zs_norm = np.linalg.norm(zs_m.astype(np.float64), axis=-1)
    layers = set()
    for other in others:
        below = np.linalg.norm(other.astype(np.float64) - zs_m.astype(np.float64), axis=-1) < RELATIVE * zs_norm
        layers |= {layer for layer, share in enumerate(below.mean(axis=(0, 2))) if share > 0.5}
    return sorted(layers)


def dropped(values: np.ndarray, layers: list[int]) -> np.ndarray:
    values = values.copy()
    values[:, layers] = np.nan
    return values


def layer_means(values: np.ndarray) -> np.ndarray:
    """[n, layer] or [n, layer, head] -> per layer (heads, then examples), each step skipping NaN."""
    return nanmean(nanmean(values, -1) if values.ndim == 3 else values, 0)


def recompute(
    records: dict, prefix: str, methods: list[str], query_len: np.ndarray, labels: np.ndarray, subset: str | None
) -> dict:
    def get(setting, name):
        return records[f"{prefix}{setting}/{name}"]

    pred = {s: get(s, "label_logprobs").argmax(-1) for s in ["zs", "icl", *methods]}
    out = {"accuracy": {s: float((p == labels).mean()) for s, p in pred.items()}, "metrics": {}, "counts": {}}
    for method in methods:
        rows = np.ones(len(labels), dtype=bool)
        if subset == "f2t":
            rows = (pred["zs"] != labels) & (pred[method] == labels) & (pred["icl"] == labels)

        def take(setting, name):
            return get(setting, name)[rows]

        zs_h, icl_h, ft_h = take("zs", "attn_out"), take("icl", "attn_out"), take(method, "attn_out")
        zs_m, icl_m, ft_m = (masked(take(s, "scores"), query_len[rows]) for s in ("zs", "icl", method))
        fixed = (pred[method] == labels) & (pred["zs"] != labels) & rows
        values = {
            "simaou": cos(icl_h - zs_h, ft_h - zs_h),
            "simaou_norm": cos(unit(icl_h) - unit(zs_h), unit(ft_h) - unit(zs_h)),
            "simam_before": cos(icl_m, zs_m),
            "simam": cos(icl_m, ft_m),
            "simam_delta": dropped(cos(icl_m - zs_m, ft_m - zs_m), rounding_layers(zs_m, [icl_m, ft_m])),
        }
        out["metrics"][method] = {name: layer_means(v) for name, v in values.items()}
        out["counts"][method] = {name: int((~np.isnan(v)).sum()) for name, v in values.items()}
        out["metrics"][method]["rec2ftp"] = (
            100.0 * float((pred["icl"][fixed] == labels[fixed]).mean()) if fixed.any() else float("nan")
        )
    if "gd" in methods and "lcgd" in methods and subset is None:
        zs_m, gd_m, lcgd_m = (masked(get(s, "scores"), query_len) for s in ("zs", "gd", "lcgd"))
        alpha = dropped(cos(lcgd_m - zs_m, gd_m - zs_m), rounding_layers(zs_m, [lcgd_m, gd_m]))
        out["metrics"]["alpha"] = {"alpha": layer_means(alpha)}
    out["per_head"] = per_head_simaou(records, prefix, methods) if subset is None else {}
    return out


def per_head_simaou(records: dict, prefix: str, methods: list[str]) -> dict:
    """Per-head SimAOU from each head's output z·W_O at the recorded position, mean over examples."""
    base_W_O = records[f"{prefix}model/W_O"].astype(np.float64)

    def heads(setting: str) -> np.ndarray:
        W_O = records.get(f"{prefix}{setting}/W_O", base_W_O).astype(np.float64)
        return np.einsum("nlhe,lhed->nlhd", records[f"{prefix}{setting}/z"].astype(np.float64), W_O)

    zs, icl = heads("zs"), heads("icl")
    out = {}
    for method in methods:
        ft = heads(method)
        out[method] = {
            "simaou": nanmean(cos(icl - zs, ft - zs), 0),
            "simaou_norm": nanmean(cos(unit(icl) - unit(zs), unit(ft) - unit(zs)), 0),
        }
    return out


def close(a, b, tolerance: float) -> bool:
    """Equal within tolerance, NaN equal to NaN (an undefined number must stay undefined)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return bool(np.array_equal(np.isnan(a), np.isnan(b)) and np.allclose(a, b, atol=tolerance, equal_nan=True))


def compare_numbers(saved: dict, recomputed: dict, where: str, tolerance: float) -> list[str]:
    problems = []
    for setting, value in recomputed["accuracy"].items() if "accuracy" in saved else []:
        if abs(saved["accuracy"][setting] - value) > tolerance:
            problems.append(f"{where} accuracy {setting}: saved {saved['accuracy'][setting]} recomputed {value}")
    for method, numbers in recomputed["per_head"].items():
        for name, value in numbers.items():
            stored = np.asarray(saved["per_head"][method][name])
            print(
                f"{where:>20} {method:>5} {name + ' /head':>13}: max |saved - recomputed| "
                f"{np.nanmax(np.abs(stored - value)):.1e}"
            )
            if not close(stored, value, tolerance):
                problems.append(
                    f"{where} {method} per-head {name}: saved {stored.tolist()} recomputed {value.tolist()}"
                )
    for method, numbers in recomputed["metrics"].items():
        for name, value in numbers.items():
            entry = saved["metrics"][method] if method != "alpha" else {"alpha": saved["metrics"]["alpha"]}
            stored = entry[name]
            if name == "rec2ftp":
                same = close(stored, value, tolerance)
                pairs = [(stored, value)]
            else:
                mean = float(np.nanmean(value)) if not np.isnan(value).all() else float("nan")
                same = close(stored["per_layer"], value, tolerance) and close(stored["mean"], mean, tolerance)
                count = recomputed["counts"].get(method, {}).get(name)
                if count is not None and stored["defined"] != count:
                    problems.append(f"{where} {method} {name}: saved {stored['defined']} defined, recomputed {count}")
                pairs = [(stored["mean"], mean)]
            print(f"{where:>20} {method:>5} {name:>13}: saved {pairs[0][0]:+.6f}  recomputed {pairs[0][1]:+.6f}")
            if not same:
                problems.append(f"{where} {method} {name}: saved {stored} recomputed {value}")
    return problems


def read_records(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of records.safetensors, a tensor stored once under each name its metadata's "aliases" give it,
    the settings' packed scores unpacked and their derived attention outputs rebuilt (docs/reference/
    result-format.md)."""
    with safe_open(path, "np") as file:
        metadata = file.metadata() or {}
    records = load_file(path)
    records |= {name: records[kept] for name, kept in json.loads(metadata.get("aliases", "{}")).items()}
    for setting in json.loads(metadata.get("packed", "[]")):
        records[f"{setting}/scores"] = unpack(records[f"{setting}/scores"], records[f"{setting}/query_len"])
    for setting in json.loads(metadata.get("derived", "[]")):
        records[f"{setting}/attn_out"] = attention_output(records, setting)
    return records


def unpack(packed: np.ndarray, query_len: np.ndarray) -> np.ndarray:
    """[sum of query_len, layer, head] -> [n, layer, head, max query_len], zero beyond each query's own keys."""
    own = np.arange(query_len.max())[None, :] < query_len[:, None]
    scores = np.zeros((len(query_len), own.shape[1], *packed.shape[1:]), dtype=packed.dtype)
    scores[own] = packed
    return scores.transpose(0, 2, 3, 1)


def attention_output(records: dict, setting: str) -> np.ndarray:
    """W_O·z + b_O in float64, rounded to float32 as the toolkit stores it; a setting's own W_O and b_O where it
    trained them, else its model's."""
    model, _, name = setting.rpartition("/")
    own, base = (f"{model}/{name}", f"{model}/model") if model else (name, "model")
    W_O = records.get(f"{own}/W_O", records[f"{base}/W_O"]).astype(np.float64)
    b_O = records.get(f"{own}/b_O", records[f"{base}/b_O"]).astype(np.float64)
    return (np.einsum("nlhe,lhed->nld", records[f"{setting}/z"].astype(np.float64), W_O) + b_O).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    global EPS, RELATIVE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args(argv)
    result = json.loads((args.folder / "result.json").read_text())
    records = read_records(args.folder / "records.safetensors")
    labels, query_len = records["labels"], records["query_len"]
    config = result["config"]
    EPS = 1e-20 if config.get("arithmetic") == "reference" else None
    RELATIVE = {"float32": 1e-6, "float16": 1e-3, "bfloat16": 1e-3, "float64": 1e-15}[config.get("dtype", "float32")]
    methods = config["methods"]
    problems = []
    for model, saved in {"model": result, **result["baselines"]}.items():
        prefix = "" if model == "model" else f"{model}/"
        problems += compare_numbers(
            saved, recompute(records, prefix, methods, query_len, labels, None), model, args.tolerance
        )
        for subset in config.get("subsets", []):
            recomputed = recompute(records, prefix, methods, query_len, labels, subset)
            subset_saved = {"metrics": {method: part["metrics"] for method, part in saved[subset].items()}}
            problems += compare_numbers(subset_saved, recomputed, f"{model} {subset}", args.tolerance)
    for problem in problems:
        print("MISMATCH", problem, file=sys.stderr)
    print("all numbers recomputed" if not problems else f"{len(problems)} mismatches")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
