"""Benchmark: per-head attribution on real and bundled models. `make bench` runs it after the comparison benchmark.

    python -m benchmarks.attribution --out runs/bench-attribution.json
    python -m benchmarks.attribution --models tiny-icl --out /tmp/attribution.json

With `--command-result DIR` (`make bench` gives it `make run`'s SmolLM2 result, three baselines): the command
`iclgd-lens attribute DIR --out OUT` with its defaults, timed whole (run in this process: the interpreter's start and
imports aside) and where its time goes (the per-head part, Kendall per subject, and the rest: loading the result
and the model, the checks, writing).

Per model, on a fresh comparison (GD and LCGD, no baselines):
- the whole model's attribution as `iclgd-lens attribute` runs it: `atp+verify` (the default), `atp` and, on the
  `--spearman-queries` first queries, `exact` for every head;
- Spearman's rank correlation between the first-order estimate and exact over *every* head (on those queries), per
  method (abs_logodds_change) and for ICL's patching (patch_logodds_change);
- one layer's exact heads two ways: every head in one batched forward (the toolkit) against one forward per head
  (the loop it replaced), their largest difference and the speedup.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from contextlib import redirect_stdout
from pathlib import Path

import pandas as pd
import torch

from benchmarks.machine import Monitor, check_quiet, gib
from benchmarks.report import BENCH_FORMAT, is_bench_file, write_json
from iclgd_lens import compare, load_model, load_task
from iclgd_lens.analysis.heads.attribution import ATP, attribution_table, estimate_agreement, with_queries
from iclgd_lens.cli import main as cli
from iclgd_lens.core.hooks import hook_name
from iclgd_lens.core.results import Result
from iclgd_lens.core.zs_batch import ZSBatch
from iclgd_lens.sources.devices import available_threads
from iclgd_lens.views.markdown import markdown_table

# the comparison each model is attributed on: make run's for SmolLM2 and Gemma, run-tiny's task for tiny-icl
SETTINGS = {
    "tiny-icl": dict(task="synth-sst2", k=32, lr=0.3, separator=None),
    "smollm2-135m": dict(task="rt-snippets", k=16, lr=3e-3, separator="\n"),
    "gemma3-270m": dict(task="rt-snippets", k=16, lr=3e-3, separator="\n"),
}
TARGET_S = 300  # the command's target on make run's SmolLM2 result (2 CPU cores), Kendall and its controls included


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load = check_quiet(args.allow_busy)
    report: dict = {
        "format": BENCH_FORMAT,
        "section": "attribution",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "device": args.device,
            "torch": torch.__version__,
            "others_cores_before": load,
        },
        "models": {},
    }
    with Monitor() as monitor:
        if args.command_result is not None:
            report["command"] = bench_command(args.command_result, args.threads, monitor)
        for name in args.models:
            report["models"][name] = bench_model(name, args, monitor)
    report["machine"]["others_cores_max"] = max([load, *monitor.others_cores])
    write_json(args.out, report)
    print_attribution(report)
    print(f"bench: wrote {args.out}")
    return report


def bench_command(result: Path, threads: int, monitor: Monitor) -> dict:
    """`iclgd-lens attribute RESULT --out OUT` with its defaults: its seconds, and the part of them each stage took
    (attribution.json's `seconds`)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "attribution"
        argv = ["attribute", str(result), "--out", str(out), "--threads", str(threads)]
        with monitor.stage(f"iclgd-lens {' '.join(argv)}") as stage, redirect_stdout(io.StringIO()):
            if cli(argv) != 0:
                raise RuntimeError(f"iclgd-lens {' '.join(argv)} failed")
        about = json.loads((out / "attribution.json").read_text())
    kendall = about["seconds"].get("kendall", {})
    rest = stage["seconds"] - about["seconds"]["heads"] - sum(kendall.values())
    return {
        "result": str(result),
        "model": about["model"],
        "task": about["task"],
        "seconds": stage["seconds"],
        "peak_rss_bytes": stage["peak_rss_bytes"],
        "heads": about["seconds"]["heads"],
        "kendall": kendall,
        "load_checks_and_writing": rest,
        "estimate": about["estimate"],
        "verify_top": about["verify_top"],
        "kendall_queries": about["kendall_queries"],
    }


def bench_model(name: str, args: argparse.Namespace, monitor: Monitor) -> dict:
    setting = SETTINGS[name]
    model = load_model(name, device=args.device)
    options = {"separator": setting["separator"]} if setting["separator"] else {}
    with monitor.stage(f"{name}: compare"):
        result = compare(
            model,
            load_task(setting["task"]),
            k=setting["k"],
            seed=0,
            lr=setting["lr"],
            n_eval=args.n_queries,
            baselines=(),
            progress=False,
            **options,
        )
    out: dict = {
        "task": setting["task"],
        "k": setting["k"],
        "queries": args.n_queries,
        "layers": model.cfg.n_layers,
        "heads": model.cfg.n_heads,
    }
    for estimate in ("atp+verify", "atp"):
        with monitor.stage(f"{name}: attribute --estimate {estimate}") as stage:
            _, totals = attribution_table(model, result, batch_size=args.batch_size, estimate=estimate)
        out[estimate] = {"seconds": stage["seconds"], "peak_rss_bytes": stage["peak_rss_bytes"]}
        out[estimate]["agreement"] = totals.get("agreement")
    if args.spearman_queries:
        few = with_queries(result, range(min(args.spearman_queries, args.n_queries)))
        with monitor.stage(f"{name}: exact, every head, {len(few.labels)} queries") as stage:
            exact, _ = attribution_table(model, few, batch_size=args.batch_size, estimate="exact")
        estimated, _ = attribution_table(model, few, batch_size=args.batch_size, estimate="atp")
        out["exact_every_head"] = {
            "queries": len(few.labels),
            "seconds": stage["seconds"],
            "spearman": every_head_spearman(exact, estimated),
        }
    out["one_layer"] = batched_against_loop(model, result, model.cfg.n_layers // 2, args.batch_size)
    return out


def every_head_spearman(exact: pd.DataFrame, estimated: pd.DataFrame) -> dict:
    """`estimate_agreement` of the exact run with the estimate's columns beside it: over every head."""
    keys = ["layer", "head", "method"]
    return estimate_agreement(exact.merge(estimated[keys + [c for c in estimated.columns if c.endswith(ATP)]], on=keys))


def batched_against_loop(model, result: Result, layer: int, batch_size: int) -> dict:
    """ICL's patching at one layer, every head exact, three ways: one forward per head (the loop the toolkit
    replaced), the heads along the batch dimension (`run_heads`), and the prediction position alone against the
    cached plain run (`run_heads_at_prediction`, what `attribute` runs where the model allows); seconds of each
    (the plain ZS forward and its cache, shared, not counted) and each one's largest difference from the loop."""
    icl_z = result.records["icl"].z.to(model.cfg.device, model.cfg.dtype)
    heads = list(range(model.cfg.n_heads))
    seconds = dict.fromkeys(("loop", "batched", "at_prediction"), 0.0)
    largest = dict.fromkeys(("batched", "at_prediction"), 0.0)
    for first in range(0, len(result.labels), batch_size):
        rows = list(range(first, min(first + batch_size, len(result.labels))))
        batch = ZSBatch(model, result.episode, rows)
        source = batch.z[layer].clone()
        source[torch.arange(len(rows)), batch.positions] = icl_z[rows, layer]
        runs = {"batched": lambda: batch.run_heads(layer, heads, source)}
        if batch.continues_at_prediction():
            batch.run_heads_at_prediction(layer, heads[:1], icl_z[rows, layer])  # fills the plain cache
            runs["at_prediction"] = lambda: batch.run_heads_at_prediction(layer, heads, icl_z[rows, layer])
        start = time.perf_counter()
        looped = torch.stack(
            [batch.run([(hook_name("z", layer), _one_head(source, head))], from_layer=layer) for head in heads]
        )
        seconds["loop"] += time.perf_counter() - start
        for name, run in runs.items():
            start = time.perf_counter()
            scores = run()
            seconds[name] += time.perf_counter() - start
            largest[name] = max(largest[name], float((scores - looped).abs().max()))
    out = {"layer": layer, **seconds, **{f"largest_difference_{name}": v for name, v in largest.items()}}
    for name in ("batched", "at_prediction"):
        out[f"speedup_{name}"] = seconds["loop"] / seconds[name] if seconds[name] else float("nan")
    return out


def _one_head(source: torch.Tensor, head: int):
    def replace(z, hook):
        z = z.clone()
        z[:, :, head] = source[:, :, head]
        return z

    return replace


def print_attribution(report: dict) -> None:
    machine = report["machine"]
    print(
        f"\nmachine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} torch threads, "
        f"{machine['device']}; other processes used up to {machine['others_cores_max']:.1f} cores"
    )
    if "command" in report:
        run = report["command"]
        kendall = ", ".join(f"{subject} {s:.0f}" for subject, s in run["kendall"].items()) or "not run"
        print(
            f"\nThe command with its defaults (--estimate {run['estimate']}, --verify-top {run['verify_top']}, "
            f"--kendall-queries {run['kendall_queries']}) on {run['result']} ({run['model']}, {run['task']}):\n\n"
            + markdown_table(
                [
                    "total s",
                    "target s",
                    "per-head s",
                    "Kendall s (per subject)",
                    "loading, checks, writing s",
                    "peak memory",
                ],
                [
                    [
                        f"{run['seconds']:.0f}",
                        str(TARGET_S),
                        f"{run['heads']:.0f}",
                        f"{sum(run['kendall'].values()):.0f} ({kendall})",
                        f"{run['load_checks_and_writing']:.0f}",
                        gib(run["peak_rss_bytes"]),
                    ]
                ],
            )
        )
    rows = []
    for name, run in report["models"].items():
        agreement = run["atp+verify"]["agreement"]
        every = run.get("exact_every_head", {"seconds": float("nan"), "queries": 0, "spearman": {}})
        rows.append(
            [
                name,
                f"{run['layers']} x {run['heads']}",
                str(run["queries"]),
                f"{run['atp+verify']['seconds']:.0f}",
                f"{run['atp']['seconds']:.0f}",
                gib(run["atp+verify"]["peak_rss_bytes"]),
                ", ".join(f"{m} {e['spearman']:.2f}" for m, e in agreement.items()),
                f"{every['seconds']:.0f} ({every['queries']} q)",
                ", ".join(f"{m} {e['spearman']:.2f}" for m, e in every["spearman"].items()),
            ]
        )
    print(
        "\n"
        + markdown_table(
            [
                "model",
                "layers x heads",
                "queries",
                "atp+verify s",
                "atp s",
                "peak memory",
                "Spearman, verified heads",
                "exact every head s",
                "Spearman, every head",
            ],
            rows,
        )
    )
    layer_rows = []
    for name, run in report["models"].items():
        one = run["one_layer"]
        at = (
            (
                f"{one['at_prediction']:.2f}",
                f"{one['speedup_at_prediction']:.1f}",
                f"{one['largest_difference_at_prediction']:.1e}",
            )
            if one["at_prediction"]
            else ("not possible",) * 3
        )
        layer_rows.append(
            [
                name,
                str(one["layer"]),
                f"{one['loop']:.2f}",
                f"{one['batched']:.2f}",
                f"{one['speedup_batched']:.2f}",
                f"{one['largest_difference_batched']:.1e}",
                *at,
            ]
        )
    print(
        "\nOne layer's exact heads (ICL patching): one forward per head, all heads batched, and the prediction "
        "position alone:\n\n"
        + markdown_table(
            [
                "model",
                "layer",
                "loop s",
                "batched s",
                "speedup",
                "largest difference",
                "at prediction s",
                "speedup",
                "largest difference",
            ],
            layer_rows,
        )
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.attribution", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny-icl", "smollm2-135m"], choices=list(SETTINGS))
    p.add_argument("--n-queries", type=int, default=64, help="queries of the comparison attributed")
    p.add_argument("--spearman-queries", type=int, default=16, help="queries of the every-head exact run (0: none)")
    p.add_argument("--batch-size", type=int, default=8, help="queries per forward pass")
    p.add_argument("--threads", type=int, default=available_threads(), help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--allow-busy", action="store_true", help="time even when other processes use the CPU")
    p.add_argument(
        "--command-result",
        type=Path,
        default=None,
        help="a result folder to time `iclgd-lens attribute` on, with its defaults (make bench: make run's)",
    )
    p.add_argument("--out", type=Path, required=True, help="JSON file to write (replaced atomically)")
    args = p.parse_args(argv)
    for name in ("n_queries", "batch_size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.spearman_queries < 0:
        p.error("--spearman-queries must be >= 0")
    if args.command_result is not None and not (args.command_result / "result.json").is_file():
        p.error(
            f"--command-result {args.command_result} holds no result.json; give a result folder (make run writes one)"
        )
    if args.out.exists() and not is_bench_file(args.out):
        p.error(f"{args.out} exists and was not written by this benchmark; choose another --out")
    return args


if __name__ == "__main__":
    main()
