"""Benchmark: the same comparison on TransformerLens 3 (`HookedTransformer`) and 4 (`TransformerBridge`), measured in
one run: each backend in its own environment's Python, one after the other on the same machine.

    python -m benchmarks.backends --out runs/bench-backends.json   # .venv's and .venv-tl4's Pythons by default
    python -m benchmarks.backends --case tiny-icl-neox               # make run-tiny's comparison instead

Each worker loads the case's model (offline: the packaged SmolLM2, or the bundled tiny-icl-neox), then times ZS's and
ICL's recordings, one GD fit, the whole `compare` (ZS, ICL, GD, LCGD at matched update size, no baselines) of
`make run`'s (or `make run-tiny`'s) task and options, and the analyses of its result: `attribute`'s per-head table
(every head estimated, the top ANALYSIS["verify_top"] verified exactly) and every lens with the chained implicit
patch's transfer from ANALYSIS["transfer"] sources (the function vectors' effects are left out: one ICL recording
per head, 270 on SmolLM2, about 40 minutes). It writes its seconds and the comparison's numbers; the parent prints
a table (stage x backend, and 4.x over 3.x) and checks that
both backends computed the same accuracies and metric means. Time nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BACKENDS_FORMAT = "iclgd-lens bench-backends 1"
STAGES = ("load", "record_zs_icl", "fit_gd", "compare", "attribute", "lenses")
ANALYSIS = {"verify_top": 5, "transfer": 4}  # the analyses' settings: a few exact heads, a few patch sources
# make run's comparison, without baselines: the pipeline every baseline repeats.
CASES = {  # model -> (task, compare's options): make run's and make run-tiny's comparisons, without baselines
    "smollm2-135m": ("rt-snippets", {"k": 16, "separator": "\n", "seed": 0, "lr": 3e-3, "n_eval": 64, "baselines": ()}),
    "tiny-icl-neox": ("synth-agnews", {"k": 32, "seed": 0, "lr": 0.3, "n_eval": 200, "baselines": ()}),
}
METRIC_TOLERANCE = 1e-3  # the two backends' metric means: float32 rounding of different kernels, far below this


def worker(threads: int, case: str) -> dict:
    """Load the case's model, time each stage on this Python's backend and return the seconds and the comparison's
    numbers."""
    import torch

    from iclgd_lens import MethodContext, build_episode, compare, fit, load_model, load_task, record_settings
    from iclgd_lens.backend import BRIDGE

    torch.set_num_threads(threads)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    task_name, options = CASES[case]
    model = load_model(case, device="cpu", progress=False)
    seconds["load"] = time.perf_counter() - started
    task = load_task(task_name)
    episode = build_episode(task, model.tokenizer, model.cfg.n_ctx, **options)
    started = time.perf_counter()
    record_settings(model, episode)
    seconds["record_zs_icl"] = time.perf_counter() - started
    started = time.perf_counter()
    fit(model, episode.train_demos, episode.bos, MethodContext(options["lr"]))
    seconds["fit_gd"] = time.perf_counter() - started
    started = time.perf_counter()
    result = compare(model, task, progress=False, **options)
    seconds["compare"] = time.perf_counter() - started
    seconds |= analysis_seconds(model, result)
    metrics = {
        f"{method}/{name}": value["mean"]
        for method, values in result.scores["model"].metrics.items()
        for name, value in (values.items() if method != "alpha" else [("alpha", values)])
        if isinstance(value, dict) and "mean" in value
    }
    return {
        "backend": "TransformerLens 4 (TransformerBridge)" if BRIDGE else "TransformerLens 3 (HookedTransformer)",
        "seconds": seconds,
        "accuracy": result.accuracy,
        "metrics": metrics,
        "effective_k": result.config["effective_k"],
        "n_eval": result.config["n_eval"],
    }


def analysis_seconds(model, result) -> dict[str, float]:
    """Seconds of each analysis of `result` on this backend (the stages after "compare")."""
    from iclgd_lens.analysis.heads.attribution import attribution_table
    from iclgd_lens.analysis.lenses.values import lens_values

    runs = {
        "attribute": lambda: attribution_table(model, result, verify_top=ANALYSIS["verify_top"]),
        "lenses": lambda: lens_values(model, result, baselines=[], transfer=ANALYSIS["transfer"]),
    }
    seconds = {}
    for stage, analysis in runs.items():
        started = time.perf_counter()
        analysis()
        seconds[stage] = time.perf_counter() - started
    return seconds


def run_worker(python: str, threads: int, case: str) -> dict:
    """One backend's worker in its own Python (this repository first on its path), its JSON back."""
    environment = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [python, "-m", "benchmarks.backends", "--worker", "--threads", str(threads), "--case", case],
        capture_output=True,
        text=True,
        env=environment,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the worker in {python} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def agreement(tl3: dict, tl4: dict) -> dict:
    """Whether both backends computed the same comparison: equal accuracies, metric means within the tolerance."""
    differences = {name: abs(tl3["metrics"][name] - tl4["metrics"].get(name, float("nan"))) for name in tl3["metrics"]}
    worst = max(differences.values(), default=0.0)
    return {
        "accuracy_equal": tl3["accuracy"] == tl4["accuracy"],
        "max_metric_difference": worst,
        "agree": tl3["accuracy"] == tl4["accuracy"] and worst <= METRIC_TOLERANCE,
    }


def table(tl3: dict, tl4: dict) -> str:
    lines = ["| stage | 3.x s | 4.x s | 4.x / 3.x |", "|---|---|---|---|"]
    for stage in [stage for stage in STAGES if stage in tl3["seconds"] and stage in tl4["seconds"]]:
        a, b = tl3["seconds"][stage], tl4["seconds"][stage]
        lines.append(f"| {stage} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backends", description=__doc__.splitlines()[0])
    parser.add_argument("--tl3-python", default=".venv/bin/python", help="a Python with TransformerLens 3")
    parser.add_argument("--tl4-python", default=".venv-tl4/bin/python", help="a Python with TransformerLens 4")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch CPU threads")
    parser.add_argument("--case", default="smollm2-135m", choices=CASES, help="the model (and its task) compared")
    parser.add_argument("--out", default=None, help="where to write the JSON (a file this benchmark wrote, or new)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.worker:
        report = worker(args.threads, args.case)
        print(json.dumps(report))
        return report
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not _ours(out):
        raise SystemExit(f"{out} exists and is not a file this benchmark wrote; choose another --out")
    tl3, tl4 = (run_worker(python, args.threads, args.case) for python in (args.tl3_python, args.tl4_python))
    task, options = CASES[args.case]
    report = {"format": BACKENDS_FORMAT, "case": args.case, "task": task, "threads": args.threads}
    report["options"] = {**options, "baselines": []}
    report |= {"tl3": tl3, "tl4": tl4, "agreement": agreement(tl3, tl4)}
    report["compare_ratio"] = tl4["seconds"]["compare"] / tl3["seconds"]["compare"]
    print(f"{args.case} on {task}, k {options['k']}, {options['n_eval']} queries, no baselines, {args.threads} threads")
    print(table(tl3, tl4))
    check = report["agreement"]
    verdict = "agree" if check["agree"] else "DISAGREE"
    print(
        f"same numbers: accuracies {'equal' if check['accuracy_equal'] else 'DIFFER'}, metric means within "
        f"{check['max_metric_difference']:.1e} (tolerance {METRIC_TOLERANCE:g}): {verdict}"
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
    return report


def _ours(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("format") == BACKENDS_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


if __name__ == "__main__":
    sys.exit(0 if main().get("agreement", {"agree": True})["agree"] else 1)
