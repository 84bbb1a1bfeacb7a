"""What the benchmark writes: the JSON (`--out`, marked with BENCH_FORMAT) and the tables it prints (Markdown, as
docs/performance.md quotes them)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.machine import gib
from iclgd_lens.files import write_text_atomic
from iclgd_lens.views.markdown import markdown_table

BENCH_FORMAT = "iclgd-lens bench 1"  # the JSON's "format": an --out file holding it may be replaced


def write_json(path: Path, report: dict) -> None:
    write_text_atomic(path, json.dumps(report, indent=1) + "\n")


def is_bench_file(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("format") == BENCH_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def print_report(report: dict) -> None:
    machine = report["machine"]
    print(
        f"\nmachine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} torch threads, "
        f"{machine['device']} {machine['dtype']}, torch {machine['torch']}"
    )
    if report["warning"]:
        print(f"WARNING: {report['warning']}")
    for name, title in (("gpt2_small", "GPT-2-small-shaped, random weights"), ("smollm2", "SmolLM2-135M")):
        if name not in report:
            continue
        run = report[name]
        tk = run["toolkit"]
        print(
            f"\n## {title}: k = {run['k']} (effective {tk['effective_k']}, ICL prefix {tk['prefix_tokens']} "
            f"tokens), queries of {tk['query_tokens']:.1f} tokens on average\n"
        )
        print(headline_table(run))
        print("\n" + agreement_lines(run["agreement"]))
        print(
            f"measured head-to-head at {run['naive']['extrapolated_from'] or run['n_queries']} queries: "
            f"{run['speedup_measured']:.1f}x\n"
        )
        print(stage_table(run["naive"]["stages"]))
        fits = run["fits"]
        print(
            f"\ntoolkit fits: GD {fits['gd']['per_step']:.3f} s/step, LCGD {fits['lcgd']['per_step']:.3f} s/step "
            f"(LCGD / GD = {fits['lcgd_over_gd']:.2f})"
        )
    if "scaling" in report:
        print("\n## toolkit `compare` scaling (GPT-2-small-shaped)\n")
        print(scaling_table(report["scaling"]))
        print("\n## recording cost per query against the prompt's length (GPT-2-small-shaped)\n")
        print(recording_cost_table(report["recording_cost"]))
    print(f"\nspeedup (naive / toolkit, {report['gpt2_small']['n_queries']} queries): {report['speedup']:.1f}x")


def headline_table(run: dict) -> str:
    n, tk, naive = run["n_queries"], run["toolkit"], run["naive"]
    measured = naive["extrapolated_from"] is None
    rows = [
        [
            "toolkit `compare`",
            str(n),
            f"{tk['seconds']:.1f}",
            f"{n / tk['seconds']:.2f}",
            gib(tk["peak_rss_bytes"]),
            "",
        ],
        [
            "naive" + ("" if measured else f" (extrapolated from {naive['extrapolated_from']} queries)"),
            str(n),
            f"{naive['seconds']:.1f}",
            f"{n / naive['seconds']:.2f}",
            gib(naive["peak_rss_bytes"]) + ("" if measured else f" (at {naive['extrapolated_from']})"),
            f"naive / toolkit = {run['speedup']:.1f}x",
        ],
        [
            "FLOP floor (matmul FLOPs / measured matmul rate)",
            str(n),
            f"{tk['flop_floor_s']:.1f}",
            "",
            "",
            f"floor / toolkit = {tk['flop_floor_s'] / tk['seconds']:.0%}",
        ],
    ]
    return markdown_table(["pipeline", "queries", "wall s", "queries/s", "peak memory", "ratio"], rows)


def agreement_lines(agree: dict) -> str:
    code, metrics = agree["metric_code"], agree["metrics"]

    def verdict(check: dict) -> str:
        return "agree" if check["agree"] else "DISAGREE"

    required = "required" if agree["metrics_required"] else "reported, not required: see docs/performance.md"
    records = ", ".join(
        f"{setting} {r['max_relative_diff']:.1e} ({r['at']}, tolerance {r['tolerance']:g})"
        for setting, r in agree["records"]["settings"].items()
    )
    return "\n".join(
        [
            f"agreement of the recorded tensors, largest relative difference: {records}: {verdict(agree['records'])}",
            (
                f"agreement of the metric code on the same records: {code['compared']} numbers, largest difference "
                f"{code['max_abs_diff']:.1e}: {verdict(code)} (tolerance {code['tolerance']:g})"
            ),
            (
                f"agreement of every number end to end: {metrics['compared']} numbers, largest difference "
                f"{metrics['max_abs_diff']:.1e} (at {metrics['at']}), NaN mismatches {len(metrics['nan_mismatch'])}: "
                f"{verdict(metrics)} (tolerance {metrics['tolerance']:g}; {required})"
            ),
        ]
    )


def stage_table(stages: dict) -> str:
    rows = [[name, f"{s['seconds']:.1f}", gib(s["peak_rss_bytes"])] for name, s in stages.items()]
    return markdown_table(["naive stage", "wall s", "peak memory"], rows)


def scaling_table(rows: list[dict]) -> str:
    return markdown_table(
        ["k", "prefix tokens", "queries", "query tokens", "wall s", "queries/s", "peak memory"],
        [
            [
                str(r["k"]),
                str(r["prefix_tokens"]),
                str(r["n_queries"]),
                f"{r['query_tokens']:.1f}",
                f"{r['seconds']:.1f}",
                f"{r['n_queries'] / r['seconds']:.2f}",
                gib(r["peak_rss_bytes"]),
            ]
            for r in rows
        ],
    )


def recording_cost_table(rows: list[dict]) -> str:
    return markdown_table(
        [
            "k",
            "prefix tokens",
            "toolkit ZS s/query",
            "toolkit ICL s/query",
            "ICL / ZS",
            "naive ICL s/query",
            "naive / toolkit ICL",
        ],
        [
            [
                str(r["k"]),
                str(r["prefix_tokens"]),
                f"{r['toolkit_zs_s_per_query']:.3f}",
                f"{r['toolkit_icl_s_per_query']:.3f}",
                f"{r['toolkit_icl_s_per_query'] / r['toolkit_zs_s_per_query']:.1f}",
                f"{r['naive_icl_s_per_query']:.3f}",
                f"{r['naive_icl_s_per_query'] / r['toolkit_icl_s_per_query']:.1f}x",
            ]
            for r in rows
        ],
    )
