"""The runs: (a) the toolkit's `compare(..., baselines=())` (ZS, ICL, GD, LCGD, all records, metrics and per-head
values) head to head with (b) the naive pipeline, agreement checked; the toolkit's fits alone; its scaling over k x
n_queries; the recording cost per query against the prompt's length; the same head-to-head on SmolLM2-135M.

Every run returns the dicts the JSON holds (benchmarks/report.py prints them)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from transformer_lens import HookedTransformer

from benchmarks.agreement import all_agreements
from benchmarks.flops import flop_floor
from benchmarks.machine import Monitor
from benchmarks.naive import naive_compare, naive_record
from benchmarks.workload import SST2_EVAL_SIZE, parameter_bytes
from iclgd_lens import Episode, MethodContext, Prompts, Task, build_episode, compare, fit, load_model, record

SCALING_K = (8, 16, 32)
SCALING_N = (64, 256, SST2_EVAL_SIZE)
SMOLLM2_LR = 3e-3  # the papers' MR lr, as `make run` uses on rt-snippets

Runs = dict[tuple[int, int], dict]  # (k, n_queries) -> a toolkit_compare timing, reused across tables


def head_to_head(
    model: HookedTransformer,
    task: Task,
    args: argparse.Namespace,
    monitor: Monitor,
    lr: float,
    runs: Runs,
    strict: bool = True,
) -> dict:
    """Toolkit vs naive at `--naive-queries` (agreement checked there), the toolkit also at `--n-queries`; the
    naive time beyond what it was timed on is its fits plus its per-query stages scaled linearly (labelled)."""
    n, n_naive = args.n_queries, min(args.naive_queries, args.n_queries)
    # The toolkit first: its peak memory is measured before the naive pipeline's model copies and full caches.
    for queries in dict.fromkeys((n, n_naive)):  # once each, in this order
        runs[args.k, queries] = toolkit_compare(
            model, task, args.k, queries, lr, args.batch_size, monitor, keep_result=queries == n_naive
        )
    episode = build_episode(task, model.tokenizer, model.cfg.n_ctx, k=args.k, n_eval=n_naive)
    naive = naive_compare(model, episode, lr, 0, monitor)
    agree = all_agreements(naive, runs[args.k, n_naive].pop("result"), strict)
    stages = naive.pop("stages")
    del naive  # its records: later stages' peak memory counts their own
    fixed = stages["fit gd"]["seconds"] + stages["fit lcgd"]["seconds"]
    per_query = sum(s["seconds"] for s in stages.values()) - fixed
    naive_summary = {
        "n_queries": n,
        "seconds": fixed + per_query * n / n_naive,
        "extrapolated_from": n_naive if n != n_naive else None,
        "seconds_measured": fixed + per_query,
        "peak_rss_bytes": max(s["peak_rss_bytes"] for s in stages.values()),
        "stages": stages,
    }
    toolkit = dict(runs[args.k, n])
    full_episode = build_episode(task, model.tokenizer, model.cfg.n_ctx, k=args.k, n_eval=n)
    toolkit["flops"] = flop_floor(model, full_episode)
    toolkit["flop_floor_s"] = toolkit["flops"]["total"] / args.matmul_rate
    return {
        "k": args.k,
        "n_queries": n,
        "toolkit": toolkit,
        "naive": naive_summary,
        "speedup": naive_summary["seconds"] / toolkit["seconds"],
        "speedup_measured": naive_summary["seconds_measured"] / runs[args.k, n_naive]["seconds"],
        "agreement": agree,
    }


def toolkit_compare(
    model: HookedTransformer,
    task: Task,
    k: int,
    n: int,
    lr: float,
    batch_size: int,
    monitor: Monitor,
    keep_result: bool = False,
) -> dict:
    with monitor.stage(f"toolkit compare k={k} n={n}") as stage:
        # LCGD at GD's lr, as the naive pipeline trains it (the papers' way): the same numbers on both sides
        result = compare(
            model, task, k=k, seed=0, lr=lr, lr_lcgd="gd", baselines=(), n_eval=n, batch_size=batch_size, progress=False
        )
    out = stage | {
        "k": k,
        "n_queries": n,
        "effective_k": result.config["effective_k"],
        "prefix_tokens": len(result.episode.icl_prefix),
        "query_tokens": sum(map(len, result.episode.queries)) / n,
    }
    if keep_result:  # for the agreement checks; the caller drops it before later timings
        out["result"] = result
    return out


def fit_times(model: HookedTransformer, episode: Episode, lr: float, monitor: Monitor) -> dict:
    """GD's and LCGD's fits alone (the toolkit's `fit`), seconds per demonstration step."""
    out = {}
    for method in ("gd", "lcgd"):
        with monitor.stage(f"toolkit fit {method}") as out[method]:
            fit(model, episode.train_demos, episode.bos, MethodContext(lr), method)
        out[method]["per_step"] = out[method]["seconds"] / len(episode.train_demos)
    out["lcgd_over_gd"] = out["lcgd"]["seconds"] / out["gd"]["seconds"]
    return out


def scaling(model: HookedTransformer, task: Task, args: argparse.Namespace, monitor: Monitor, runs: Runs) -> list[dict]:
    """The toolkit's `compare` for k x n_queries (runs already timed are reused)."""
    for k in SCALING_K:
        for n in SCALING_N:
            if (k, n) not in runs:
                runs[k, n] = toolkit_compare(model, task, k, n, args.lr, args.batch_size, monitor)
    return [runs[k, n] for k in SCALING_K for n in SCALING_N]


def recording_cost(
    model: HookedTransformer, task: Task, args: argparse.Namespace, monitor: Monitor, n: int = 64, n_naive: int = 8
) -> list[dict]:
    """Seconds per query of the ZS and ICL recordings alone, toolkit and naive, for each k: what grows with the
    prompt's length and what with the query's."""
    rows = []
    for k in SCALING_K:
        episode = build_episode(task, model.tokenizer, model.cfg.n_ctx, k=k, n_eval=n)
        row = {"k": k, "prefix_tokens": len(episode.icl_prefix), "n_queries": n, "naive_n_queries": n_naive}
        for name, prefix in (("zs", episode.zs_prefix), ("icl", episode.icl_prefix)):
            with monitor.stage(f"toolkit record {name} k={k}") as stage:
                record(model, Prompts.of(episode, prefix), batch_size=args.batch_size)
            row[f"toolkit_{name}_s_per_query"] = stage["seconds"] / n
        few = dataclasses.replace(episode, queries=episode.queries[:n_naive])
        with monitor.stage(f"naive record icl k={k}") as stage:
            naive_record(model, few, few.icl_prefix)
        row["naive_icl_s_per_query"] = stage["seconds"] / n_naive
        rows.append(row)
    return rows


def smollm2_run(folder: Path, task: Task, args: argparse.Namespace, monitor: Monitor) -> dict:
    """The same head-to-head on SmolLM2-135M (real weights), at --naive-queries queries."""
    model = load_model(str(folder), device=args.device, dtype=args.dtype)
    smaller = argparse.Namespace(**{**vars(args), "n_queries": min(args.naive_queries, args.n_queries)})
    out = head_to_head(model, task, smaller, monitor, SMOLLM2_LR, {}, strict=False)
    out["model_bytes"] = parameter_bytes(model)
    episode = build_episode(task, model.tokenizer, model.cfg.n_ctx, k=args.k, n_eval=1)
    out["fits"] = fit_times(model, episode, SMOLLM2_LR, monitor)
    return out
