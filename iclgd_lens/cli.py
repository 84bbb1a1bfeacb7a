"""Command line: a thin layer over the Python API.

iclgd-lens compare --model gpt2 --task sst2 --k 32 --seed 2 --lr 5e-4 --out runs/sst2-s2

Only light modules are imported at start, so `--help` and argument errors answer at once; torch, TransformerLens
and the data libraries load when a command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from iclgd_lens.presets import (
    BASELINES,
    CHOICES,
    LCGD_EXITS,
    METHODS,
    PARAMETER_GROUP_NAMES,
    PRESETS,
    SUBSETS,
    Choices,
)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iclgd-lens", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser(
        "compare",
        help="ZS, ICL, GD and LCGD on one model and task, every metric",
        formatter_class=DefaultsHelpFormatter,
        description="Compare ICL with GD and LCGD on one model and task, on the model and its untrained baselines.",
    )
    c.add_argument("--model", required=True, help="TransformerLens name (needs the hub), local HF folder, or tiny-icl")
    c.add_argument(
        "--task",
        required=True,
        help=f"hub tasks {sorted(HUB_TASKS)}; offline synthetic tasks {sorted(SYNTHETIC_TASKS)}; or a custom name "
        "with --data-files, --template and --labels",
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
    c.add_argument("--k", type=int, default=32, help="demonstrations")
    c.add_argument("--seed", type=int, default=0, help="demonstration shuffle, baselines' init, random baseline")
    c.add_argument("--permutation", type=int, default=0, help="order of the demonstrations; 0 keeps the shuffle")
    c.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate for GD and LCGD")
    c.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="finetuning methods")
    c.add_argument(
        "--baselines", nargs="*", default=list(BASELINES), choices=BASELINES, help="untrained baselines (none: empty)"
    )
    c.add_argument("--groups", nargs="+", default=["k", "v"], choices=PARAMETER_GROUP_NAMES, help="trained weights")
    c.add_argument("--lcgd-exit", default="block", choices=LCGD_EXITS, help="LCGD read-out: after the block or attention")
    c.add_argument("--subset", nargs="*", default=[], choices=SUBSETS, help="also score these query subsets")
    presets = c.add_argument_group(
        "preset and its choices", "each choice defaults to the preset's; docs/science.md explains every one"
    )
    presets.add_argument("--preset", default="toolkit", choices=list(PRESETS), help="the toolkit's or the reference's")
    presets.add_argument("--separator", help=CHOICE_HELP["separator"] + " [toolkit: eos, reference: eos]")
    for name, valid in CHOICES.items():
        defaults = ", ".join(f"{p}: {getattr(choices, name)}" for p, choices in PRESETS.items())
        presets.add_argument(
            f"--{name.replace('_', '-')}", choices=valid, help=f"{CHOICE_HELP[name]} [{defaults}]"
        )
    c.add_argument("--n-eval", type=int, default=None, help="cap on evaluation queries (default: 2000)")
    c.add_argument("--batch-size", type=int, default=8, help="queries per forward pass")
    c.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    c.add_argument("--dtype", default="float32", choices=DTYPES, help="the model's dtype")
    c.add_argument("--threads", type=int, default=available_threads(), help="torch CPU threads")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.add_argument("--debug", action="store_true", help="show the traceback of an error")
    c.add_argument("--out", required=True, help="result folder (new, empty, or a previous result with --overwrite)")
    c.add_argument("--overwrite", action="store_true", help="replace a result already in --out")
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
        args.batch_size, tuple(args.groups), args.lcgd_exit, tuple(args.subset), args.preset, choices,
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
        batch_size=args.batch_size, groups=args.groups, lcgd_exit=args.lcgd_exit, out=args.out,
        overwrite=args.overwrite, progress=not args.quiet,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    config = result.config
    print(
        f"{config['model']} on {config['task']}: k={config['k']} (effective {config['effective_k']}, GD "
        f"{config['gd_k']}), seed {config['seed']}, permutation {config['permutation']}, lr {config['lr']}, "
        f"{config['n_eval']} queries, {config['dtype']}, {seconds:.1f} s"
    )
    print(f"preset {config['preset']}: " + ", ".join(f"{name} {config[name]!r}" for name in Choices.__dataclass_fields__))
    print("accuracy: " + ", ".join(f"{name} {value:.3f}" for name, value in result.accuracy.items()))
    print(result.summary())
    for subset in args.subset:
        print(f"\n{subset} subset (queries ZS gets wrong and both FT and ICL get right):")
        print(result.summary(subset))
    print(f"saved to {args.out}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "compare":
            run_compare(args)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, FloatingPointError) as error:
        if args.debug:
            raise
        message = " ".join(str(error).split())  # one line, whatever the library wrote
        print(f"iclgd-lens: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
