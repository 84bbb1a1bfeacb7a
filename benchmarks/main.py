"""Benchmark: the toolkit's whole `compare` against a naive pipeline written the reference's way.

    make bench                                               # everything, written to runs/bench.json
    python -m benchmarks --n-queries 872 --out runs/bench.json
    python -m benchmarks --n-queries 64 --no-scaling --no-smollm2 --out /tmp/quick.json

What each part measures: benchmarks/README.md; the measured numbers: docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.flops import matmul_rate
from benchmarks.machine import BUSY_CORES, Monitor, check_quiet
from benchmarks.report import BENCH_FORMAT, is_bench_file, print_report, write_json
from benchmarks.run import Runs, fit_times, head_to_head, recording_cost, scaling, smollm2_run
from benchmarks.workload import SST2_EVAL_SIZE, gpt2_small_shaped, parameter_bytes, smollm2_tokenizer, sst2_shaped_task
from iclgd_lens import build_episode
from iclgd_lens.sources.devices import DTYPES, available_threads, resolve_dtype


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype)
    load = check_quiet(args.allow_busy)
    smollm2_folder, tokenizer = smollm2_tokenizer()
    task = sst2_shaped_task(tokenizer)
    model = gpt2_small_shaped(tokenizer, args.device, dtype, args)
    report: dict = {
        "format": BENCH_FORMAT,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "device": args.device,
            "dtype": args.dtype,
            "torch": torch.__version__,
            "others_cores_before": load,
        },
        "model_bytes": parameter_bytes(model),
    }
    args.matmul_rate = report["machine"]["matmul_flops_per_s"] = matmul_rate(args.device, dtype)
    print(
        f"bench: {args.threads} threads, {args.device} {args.dtype}; other processes used {load:.2f} cores before; "
        f"matmul rate {args.matmul_rate / 1e9:.0f} GFLOP/s"
    )
    runs: Runs = {}
    with Monitor() as monitor:
        report["gpt2_small"] = head_to_head(model, task, args, monitor, args.lr, runs)
        report["speedup"] = report["gpt2_small"]["speedup"]
        episode = build_episode(task, tokenizer, model.cfg.n_ctx, k=args.k, n_eval=1)
        report["gpt2_small"]["fits"] = fit_times(model, episode, args.lr, monitor)
        if not args.no_scaling:
            report["scaling"] = scaling(model, task, args, monitor, runs)
            report["recording_cost"] = recording_cost(model, task, args, monitor)
        if not args.no_smollm2:
            report["smollm2"] = smollm2_run(smollm2_folder, task, args, monitor)
    report["machine"]["others_cores_max"] = max([load, *monitor.others_cores])
    busy = report["machine"]["others_cores_max"] > BUSY_CORES
    report["warning"] = (
        (
            f"other processes used up to {report['machine']['others_cores_max']:.1f} cores while "
            "timing: these numbers measure them too"
        )
        if busy
        else None
    )
    print_report(report)
    write_json(args.out, report)
    print(f"bench: wrote {args.out}")
    failed = [name for name in ("gpt2_small", "smollm2") if name in report and not report[name]["agreement"]["agree"]]
    if failed:
        sys.exit(f"bench: the toolkit and the naive pipeline disagree on {failed}: see 'agreement' in {args.out}")
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--n-queries", type=int, default=SST2_EVAL_SIZE, help="queries of the headline comparison")
    p.add_argument("--k", type=int, default=32, help="demonstrations")
    p.add_argument("--naive-queries", type=int, default=64, help="queries the naive pipeline is timed on")
    p.add_argument("--lr", type=float, default=1e-2, help="GD/LCGD learning rate (random weights: a visible update)")
    p.add_argument("--batch-size", type=int, default=8, help="the toolkit's query batch size")
    p.add_argument("--threads", type=int, default=available_threads(), help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--no-scaling", action="store_true", help="skip the k x n_queries scaling table")
    p.add_argument("--no-smollm2", action="store_true", help="skip the SmolLM2-135M run")
    p.add_argument("--allow-busy", action="store_true", help="time even when other processes use the CPU")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write (replaced atomically)")
    shape = p.add_argument_group("model shape (defaults: GPT-2 small)")
    shape.add_argument("--layers", type=int, default=12)
    shape.add_argument("--d-model", type=int, default=768)
    shape.add_argument("--heads", type=int, default=12)
    shape.add_argument("--vocab", type=int, default=50257)
    shape.add_argument("--n-ctx", type=int, default=1024)
    args = p.parse_args(argv)
    for name in ("n_queries", "k", "naive_queries", "threads", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.out.exists() and not is_bench_file(args.out):
        p.error(f"{args.out} exists and was not written by this benchmark; choose another --out")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no GPU")
    return args
