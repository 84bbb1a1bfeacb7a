"""Recompute every number of a saved result from its records alone, with NumPy, independently of iclgd_lens.

    python analyses/recompute_metrics.py runs/tiny-icl-synth-sst2

Accuracies, every per-layer metric (random_simaou aside: its noise comes from torch's generator) and the per-head
SimAOU from z·W_O. Prints each number beside the saved one and exits non-zero if any differs by more than
--tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def masked(scores: np.ndarray, query_len: np.ndarray) -> np.ndarray:
    keep = np.arange(scores.shape[-1])[None, :] < query_len[:, None]
    return np.where(keep[:, None, None, :], scores, 0.0)


def layer_means(values: np.ndarray) -> np.ndarray:
    """[n, layer] or [n, layer, head] -> per layer (heads, then examples)."""
    return (values.mean(-1) if values.ndim == 3 else values).mean(0)


def recompute(records: dict, prefix: str, methods: list[str], query_len: np.ndarray, labels: np.ndarray) -> dict:
    get = lambda setting, name: records[f"{prefix}{setting}/{name}"]
    zs_h, icl_h = get("zs", "attn_out"), get("icl", "attn_out")
    zs_m, icl_m = masked(get("zs", "scores"), query_len), masked(get("icl", "scores"), query_len)
    pred = {s: get(s, "label_logprobs").argmax(-1) for s in ["zs", "icl", *methods]}
    out = {"accuracy": {s: float((p == labels).mean()) for s, p in pred.items()}, "metrics": {}}
    for method in methods:
        ft_h, ft_m = get(method, "attn_out"), masked(get(method, "scores"), query_len)
        fixed = (pred[method] == labels) & (pred["zs"] != labels)
        out["metrics"][method] = {
            "simaou": layer_means(cos(icl_h - zs_h, ft_h - zs_h)),
            "simaou_norm": layer_means(cos(unit(icl_h) - unit(zs_h), unit(ft_h) - unit(zs_h))),
            "simam_before": layer_means(cos(icl_m, zs_m)),
            "simam": layer_means(cos(icl_m, ft_m)),
            "simam_delta": layer_means(cos(icl_m - zs_m, ft_m - zs_m)),
            "rec2ftp": 100.0 * float((pred["icl"][fixed] == labels[fixed]).mean()) if fixed.any() else float("nan"),
        }
    if "gd" in methods and "lcgd" in methods:
        gd_m, lcgd_m = masked(get("gd", "scores"), query_len), masked(get("lcgd", "scores"), query_len)
        out["metrics"]["alpha"] = {"alpha": layer_means(cos(lcgd_m - zs_m, gd_m - zs_m))}
    out["per_head"] = per_head_simaou(records, prefix, methods)
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
            "simaou": cos(icl - zs, ft - zs).mean(0),
            "simaou_norm": cos(unit(icl) - unit(zs), unit(ft) - unit(zs)).mean(0),
        }
    return out


def compare_numbers(saved: dict, recomputed: dict, where: str, tolerance: float) -> list[str]:
    problems = []
    for setting, value in recomputed["accuracy"].items():
        if abs(saved["accuracy"][setting] - value) > tolerance:
            problems.append(f"{where} accuracy {setting}: saved {saved['accuracy'][setting]} recomputed {value}")
    for method, numbers in recomputed["per_head"].items():
        for name, value in numbers.items():
            stored = np.asarray(saved["per_head"][method][name])
            print(
                f"{where:>20} {method:>5} {name + ' /head':>13}: max |saved - recomputed| {np.abs(stored - value).max():.1e}"
            )
            if not np.allclose(stored, value, atol=tolerance):
                problems.append(
                    f"{where} {method} per-head {name}: saved {stored.tolist()} recomputed {value.tolist()}"
                )
    for method, numbers in recomputed["metrics"].items():
        for name, value in numbers.items():
            entry = saved["metrics"][method] if method != "alpha" else {"alpha": saved["metrics"]["alpha"]}
            stored = entry[name]
            if name == "rec2ftp":
                same = (np.isnan(stored) and np.isnan(value)) or abs(stored - value) <= tolerance
                pairs = [(stored, value)]
            else:
                per_layer = np.asarray(stored["per_layer"])
                same = np.allclose(per_layer, value, atol=tolerance) and abs(stored["mean"] - value.mean()) <= tolerance
                pairs = [(stored["mean"], float(value.mean()))]
            print(f"{where:>20} {method:>5} {name:>13}: saved {pairs[0][0]:+.6f}  recomputed {pairs[0][1]:+.6f}")
            if not same:
                problems.append(f"{where} {method} {name}: saved {stored} recomputed {value}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args(argv)
    result = json.loads((args.folder / "result.json").read_text())
    records = load_file(args.folder / "records.safetensors")
    labels, query_len = records["labels"], records["query_len"]
    methods = result["config"]["methods"]
    problems = compare_numbers(result, recompute(records, "", methods, query_len, labels), "model", args.tolerance)
    for baseline, saved in result["baselines"].items():
        recomputed = recompute(records, f"{baseline}/", methods, query_len, labels)
        problems += compare_numbers(saved, recomputed, baseline, args.tolerance)
    for problem in problems:
        print("MISMATCH", problem, file=sys.stderr)
    print("all numbers recomputed" if not problems else f"{len(problems)} mismatches")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
