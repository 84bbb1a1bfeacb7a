"""The command line's commands: each checks what it can before a model loads, then calls the Python API."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import torch

from iclgd_lens.analysis.heads.attribution import attribution_table, check_attributable, check_estimate
from iclgd_lens.analysis.heads.function_vectors import function_vector_tables
from iclgd_lens.analysis.heads.kendall import (
    check_geometry,
    kendall_table,
    pooled_tables,
    queries_table,
    read_queries_table,
)
from iclgd_lens.analysis.lenses.lens_nulls import check_null_result
from iclgd_lens.analysis.lenses.lens_runs import check_lens_result
from iclgd_lens.analysis.lenses.patch_transfer import check_sources
from iclgd_lens.analysis.lenses.values import check_same_design, verdict_measures
from iclgd_lens.analysis.protocol.pooled import paired_table, per_layer_table
from iclgd_lens.analysis.protocol.sweep import SweepConfig, SweepRuntime, check_sweep_folder, run_sweep
from iclgd_lens.analysis.protocol.tables import check_poolable
from iclgd_lens.cli.lens_jobs import LensOptions, LensRun, ModelLoad, lens_runs
from iclgd_lens.core.baselines import check_same_draws
from iclgd_lens.core.comparison import compare
from iclgd_lens.core.config import CompareConfig
from iclgd_lens.core.episodes import check_k
from iclgd_lens.core.presets import VERIFY_TOP
from iclgd_lens.core.results import Result, check_output_folder
from iclgd_lens.files import write_text_atomic
from iclgd_lens.sources import check_model_source, load_model, load_task, model_source
from iclgd_lens.sources.devices import available_threads
from iclgd_lens.sources.hub_tasks import HUB_TASKS, SPLIT_ALIASES
from iclgd_lens.sources.task import Task
from iclgd_lens.views.attribution import (
    check_attribution_folder,
    check_kendall_folder,
    read_kendall_queries,
    write_attribution,
    write_kendall_pool,
)
from iclgd_lens.views.lenses import check_lenses_folder, write_lenses
from iclgd_lens.views.report import attribution_section, build_report, check_report_file, lenses_section
from iclgd_lens.views.reproduction import write_tables


def compare_options(args: argparse.Namespace, *, exclude: tuple[str, ...] = ()) -> dict:
    """The `CompareConfig` fields the command line sets (choices left unset are left out, so the preset's apply)."""
    names = [name for name in CompareConfig.option_names() if name not in exclude]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def parse_data_files(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    files = {}
    for item in items:
        split, sep, path = item.partition("=")
        if not sep or split not in SPLIT_ALIASES:
            raise ValueError(f"--data-files takes SPLIT=PATH with SPLIT one of {list(SPLIT_ALIASES)}, got {item!r}")
        if split in files:
            raise ValueError(f"--data-files names the {split} split twice")
        files[split] = path
    return files


def checked_tasks(args: argparse.Namespace, load_tasks: Callable[[], list[Task]]) -> list[Task]:
    """The model's source, then every task's data (each with at least k train rows), checked before any model
    loads."""
    check_model_source(args.model)
    tasks = load_tasks()
    for task in tasks:
        check_k(task, args.k)
    return tasks


def run_compare(args: argparse.Namespace) -> None:
    # Everything that can be checked without the model is checked before it loads.
    config = CompareConfig.build(**compare_options(args))
    check_output_folder(Path(args.out), args.overwrite)
    data_files = parse_data_files(args.data_files)
    if args.task in HUB_TASKS and data_files is None and (args.template or args.labels):
        raise ValueError("--template/--labels define a custom task from --data-files; they need --data-files")
    [task] = checked_tasks(
        args, lambda: [load_task(args.task, data_files, template=args.template, label_words=args.labels)]
    )
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device, dtype=args.dtype, progress=not args.quiet)
    started = time.perf_counter()
    result = compare(model, task, config, out=args.out, overwrite=args.overwrite, progress=not args.quiet)
    seconds = time.perf_counter() - started
    recorded = result.config
    lrs = [f"LCGD {recorded['lr_lcgd']:.4g}, {recorded['lr_lcgd_rule']}"] if "lcgd" in config.methods else []
    lrs += [f"baselines' lr {recorded['baseline_lr']}"] if config.baselines else []  # only what was used
    print(
        f"{recorded['model']} on {recorded['task']}: k={recorded['k']} (effective {recorded['effective_k']}, GD "
        f"{recorded['gd_k']}), seed {recorded['seed']}, permutation {recorded['permutation']}, lr {recorded['lr']}"
        f"{' (' + '; '.join(lrs) + ')' if lrs else ''}, {recorded['n_eval']} queries, {recorded['dtype']}, "
        f"{seconds:.1f} s"
    )
    print(
        f"preset {config.preset}: " + ", ".join(f"{name} {value!r}" for name, value in config.choices.to_dict().items())
    )
    print("accuracy: " + ", ".join(f"{name} {value:.3f}" for name, value in result.accuracy.items()))
    print(result.summary())
    for subset in config.subsets:
        print(f"\n{subset} subset (queries ZS gets wrong and both FT and ICL get right):")
        print(result.summary(subset))
    print(f"saved to {args.out}")


def run_reproduce(args: argparse.Namespace) -> int:
    if not args.tasks:
        raise ValueError("give the tasks to run: --tasks T1 T2 ... (or T1,T2)")
    runtime = SweepRuntime(**{f.name: getattr(args, f.name) for f in fields(SweepRuntime)})
    runtime = replace(runtime, threads=runtime.threads or max(1, available_threads() // runtime.jobs))
    search = {name: getattr(args, name) for name in ("lr_grid", "n_heldout") if getattr(args, name) is not None}
    options = compare_options(args, exclude=(*SweepConfig.PER_RUN, *search))
    lr_lcgd = args.lr_lcgd or ("search" if args.lr == "search" else "matched")
    # The grid is the sweep's as well as the baselines': the sweep refuses it where nothing searches.
    compare_config = replace(CompareConfig.build(**options), **search)
    config = SweepConfig(args.model, tuple(args.tasks), args.runs, args.lr, lr_lcgd, compare_config, args.dtype)
    config.check_given([name for name in ("lr_lcgd", *search) if getattr(args, name) is not None])
    plan = config.plan()
    # Everything that can be checked before a run starts is checked now: options, every run's seed and
    # permutation, the folder, the model's source and every task's data.
    for run in plan:
        replace(compare_config, seed=run.seed, permutation=run.permutation)
    out = Path(args.out)
    check_sweep_folder(out, config)
    checked_tasks(args, lambda: [load_task(task) for task in config.tasks])
    torch.set_num_threads(runtime.threads)

    started = time.perf_counter()
    total, ended = len(plan), 0  # runs ended so far, the finished ones included

    def starting(finished: list, pending: list) -> None:
        nonlocal ended
        ended = len(finished)
        if finished:
            print(f"{ended} of {total} runs are already finished in {args.out} (skipped)", flush=True)

    def report(run, error: str | None) -> None:
        nonlocal ended
        ended += 1
        status = "failed: " + error if error else "done"
        print(f"[{ended}/{total}] {run.name} {status} ({time.perf_counter() - started:.0f} s)", flush=True)

    outcome = run_sweep(config, out, runtime, on_start=starting, on_run=report)
    missing = write_tables(out, plan, args.model)
    if (out / "tables.md").is_file():
        print((out / "tables.md").read_text())
    print(f"tables and plots in {args.out} ({time.perf_counter() - started:.0f} s)")
    if outcome.failed or missing:
        failed = [f"{name} ({error})" for name, error in outcome.failed.items()]
        print(
            f"iclgd-lens: error: {len(missing)} of {total} runs did not finish: " + "; ".join(failed or missing),
            file=sys.stderr,
        )
        return 2
    return 0


def results_model_load(args: argparse.Namespace, config: dict) -> ModelLoad:
    """How to load the model a result was computed on: --model, else the name its config records."""
    name = args.model or model_source(config["model"])
    if name is None:
        raise ValueError(
            f"the result's model {config['model']!r} is a local folder or unknown name; give it with --model PATH"
        )
    check_model_source(name)
    return ModelLoad(name, args.device, config.get("dtype", "float32"))


def results_model(args: argparse.Namespace, config: dict):
    """The model a result was computed on (`results_model_load`)."""
    return results_model_load(args, config).load()


def check_attribute_options(args: argparse.Namespace, result: Result) -> tuple[int, str]:
    """attribute's options checked against each other and the result, before any model loads; returns the number
    of heads atp+verify runs exactly and Kendall's method."""
    if args.verify_top is not None and args.estimate != "atp+verify":
        raise ValueError(
            f"--verify-top sets how many heads atp+verify runs exactly, and --estimate is {args.estimate}: leave it out"
        )
    verify_top = VERIFY_TOP if args.verify_top is None else args.verify_top
    check_estimate(args.estimate, verify_top)
    if args.kendall_queries < 0:
        raise ValueError(f"--kendall-queries must be >= 0, got {args.kendall_queries}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.kendall_method is not None and not args.kendall_queries:
        raise ValueError(
            "--kendall-method sets the finetuning Kendall compares with, and --kendall-queries 0 leaves "
            "Kendall out: leave one of them out"
        )
    kendall_method = args.kendall_method or "gd"
    if args.kendall_queries:
        if kendall_method not in result.methods:
            raise ValueError(
                f"--kendall-method {kendall_method}: the result ran {result.methods} only; choose one of those"
            )
        check_same_draws(result.config, result.config.get("baselines", []))  # Kendall refits every baseline
    n_layers = result.W_O["model"].shape[0]
    bad = [layer for layer in args.layers or [] if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"--layers {bad} out of range: the result's model has {n_layers} layers")
    return verify_top, kendall_method


def attribution_about(
    args: argparse.Namespace, result: Result, verify_top: int, kendall_method: str, seconds: dict
) -> dict:
    """attribution.json's account of what ran: the result's run, the options and the seconds each part took."""
    return {
        "run": str(args.run),
        "model": result.config["model"],
        "task": result.config["task"],
        "seed": result.config["seed"],
        "permutation": result.config["permutation"],
        "query_rows": list(result.episode.query_rows[: args.kendall_queries]),
        "layers": args.layers,
        "estimate": args.estimate,
        "verify_top": verify_top if args.estimate == "atp+verify" else None,
        "kendall_method": kendall_method if args.kendall_queries else None,
        "kendall_queries": args.kendall_queries,
        "seconds": seconds,
    }


def run_attribute(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    check_attribution_folder(out)
    result = Result.load(args.run)
    if not result.deltas:
        raise ValueError(
            f"{args.run!r} holds no saved deltas (results written before deltas.safetensors); re-run compare"
        )
    verify_top, kendall_method = check_attribute_options(args, result)
    model = results_model(args, result.config)
    check_attributable(result, model)
    if args.kendall_queries:
        check_geometry(model)  # before the per-head part, not after it
    started = time.perf_counter()
    heads, totals = attribution_table(model, result, args.layers, args.batch_size, args.estimate, verify_top)
    seconds = {"heads": time.perf_counter() - started}
    vectors = function_vector_tables(model, result, heads, args.batch_size) if args.function_vectors else None
    if vectors is not None:
        seconds["function_vectors"] = vectors.pop("seconds")
    kendall = kendall_table(model, result, kendall_method, args.kendall_queries) if args.kendall_queries else None
    intervals = None
    if kendall is not None:
        seconds["kendall"] = kendall.attrs["seconds"]
        per_query = kendall.attrs["per_query"]
        intervals = (queries_table(per_query), *pooled_tables([per_query]))
    about = attribution_about(args, result, verify_top, kendall_method, seconds)
    write_attribution(out, heads, totals, kendall, about, intervals, vectors)
    print((out / "heads.md").read_text())
    if kendall is not None:
        print("Kendall (mean over queries):\n" + (out / "kendall.md").read_text())
    spent = [f"heads {seconds['heads']:.0f} s"] + [
        f"Kendall {s} {t:.0f} s" for s, t in seconds.get("kendall", {}).items()
    ]
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s: {', '.join(spent)})")


def run_lenses(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    check_lenses_folder(out)
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    results = [Result.load(folder) for folder in args.runs]
    check_same_design(list(zip(args.runs, results)))
    for result in results:
        check_same_draws(
            result.config, result.config.get("baselines", []) if args.baselines is None else args.baselines
        )
    nulls = [Result.load(folder) for folder in args.null_runs] if args.null_runs else [None] * len(results)
    if len(nulls) != len(results):
        raise ValueError(f"--null-runs gives {len(nulls)} results for {len(results)} runs: give one per run, in order")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    model_load = results_model_load(args, results[0].config)
    model = model_load.load()
    for result, null in zip(results, nulls):
        check_lens_result(result, model)
        if args.transfer is not None:
            check_sources(result.episode, args.transfer)
        if null is not None:
            check_null_result(result, null, model)
    started = time.perf_counter()
    options = LensOptions(args.baselines, args.batch_size, args.path, args.transfer)
    null_folders = args.null_runs or [None] * len(results)
    lens_inputs = [LensRun(*given) for given in zip(args.runs, results, null_folders, nulls)]
    runs = lens_runs(lens_inputs, model, model_load, options, out, args.jobs, args.threads)
    methods = results[0].methods
    per_layer, paired = per_layer_table(runs), paired_table(runs, verdict_measures(methods))
    config = results[0].config
    about = {
        "runs": len(runs),
        "run_dirs": [str(r) for r in args.runs],
        "model": config["model"],
        "task": config["task"],
        "methods": methods,
        "groups": config["groups"],
        "subjects": list(runs[0]),
        "path": args.path,
    }
    write_lenses(out, per_layer, paired, about)
    print((out / "lenses.md").read_text().split("## Per layer")[0])
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")


def run_report(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    html = Path(args.html)
    check_report_file(html, args.overwrite)
    results = [(Path(folder).name if Path(folder).name else folder, Result.load(folder)) for folder in args.runs]
    check_poolable([(folder, result) for folder, (_, result) in zip(args.runs, results)])  # per task, in the curves
    for folder in args.attribution:
        attribution_section(Path(folder))  # a folder without tables fails now, not after the views
    for folder in args.lenses:
        lenses_section(Path(folder))
    model = None if args.no_views else results_model(args, results[0][1].config)
    if model is not None:
        results[0][1].check_model(model)  # the views re-record the first result's queries on it
    write_text_atomic(
        html,
        build_report(
            results, model, args.queries, [Path(a) for a in args.attribution], lenses=[Path(f) for f in args.lenses]
        ),
    )
    print(f"wrote {args.html}")


POOLED_KENDALL_KEYS = ("model", "task", "kendall_method", "kendall_queries", "query_rows")  # what pooled runs share


def run_kendall(args: argparse.Namespace) -> None:
    out = Path(args.out)
    check_kendall_folder(out)
    read = [read_kendall_queries(Path(folder)) for folder in args.folders]
    first = read[0][0]
    for folder, (about, _) in zip(args.folders, read):
        differ = [
            f"{key} {about.get(key)!r} against {first.get(key)!r}"
            for key in POOLED_KENDALL_KEYS
            if about.get(key) != first.get(key)
        ]
        if differ:
            raise ValueError(
                f"{folder!r} and {args.folders[0]!r} differ in {'; '.join(differ)}: pool the Kendall "
                "values of one model, task, method and query set"
            )
    runs = [(about.get("seed"), about.get("permutation")) for about, _ in read]
    if None in (seed for seed, _ in runs) or len(set(runs)) < len(runs):
        raise ValueError(
            "the folders are not distinct runs (a run given twice, or attribution written before it "
            "recorded its seed): give each run's attribution once, re-run attribute for older ones"
        )
    per_run = [read_queries_table(table) for _, table in read]
    if len({tuple(values) for values in per_run}) > 1:
        raise ValueError("the folders' Kendall subjects differ (baselines or controls): give runs of one design")
    if len({tuple(next(iter(values.values()))) for values in per_run}) > 1:
        raise ValueError(
            "the folders' Kendall measures differ (some written before the order measures): re-run attribute "
            "--kendall-queries for the older runs"
        )
    per_layer, paired = pooled_tables(per_run)
    about = {key: first[key] for key in ("model", "task", "kendall_method", "kendall_queries")}
    write_kendall_pool(out, per_layer, paired, about | {"runs": len(read), "folders": list(args.folders)})
    print((out / "kendall.md").read_text())
    print(f"wrote {args.out}")
