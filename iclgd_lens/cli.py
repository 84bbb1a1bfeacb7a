"""Command line: a thin layer over the Python API.

iclgd-lens compare --model gpt2 --task sst2 --k 32 --seed 2 --lr 5e-4 --out runs/sst2-s2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from iclgd_lens.compare import CompareConfig, compare
from iclgd_lens.episodes import check_k
from iclgd_lens.deltas import LCGD_EXITS, METHODS, PARAMETER_GROUPS
from iclgd_lens.models import BASELINES, BUNDLED_MODELS, DTYPES, check_model_name, load_model
from iclgd_lens.recording import POSITIONS
from iclgd_lens.results import check_output_folder
from iclgd_lens.tasks import HUB_TASKS, load_task


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iclgd-lens", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser("compare", help="ZS, ICL, GD and LCGD on one model and task, every metric")
    c.add_argument("--model", required=True, help="TransformerLens name, local HF folder, or tiny-icl")
    c.add_argument("--task", required=True, help="sst2, sst5, mr, subj, agnews, cb, synth-*, or a custom name")
    c.add_argument("--data-files", nargs="+", metavar="SPLIT=PATH", help="local files: train=PATH eval=PATH")
    c.add_argument("--template", help="custom task: prompt template with {field} placeholders")
    c.add_argument("--labels", nargs="+", help="custom task: label words, class 0 first")
    c.add_argument("--k", type=int, default=32, help="demonstrations (default 32)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--permutation", type=int, default=0, help="0 keeps the shuffled order")
    c.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate for GD and LCGD")
    c.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    c.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=BASELINES)
    c.add_argument("--groups", nargs="+", default=["k", "v"], choices=list(PARAMETER_GROUPS), help="trained weights")
    c.add_argument("--lcgd-exit", default="block", choices=LCGD_EXITS)
    c.add_argument("--position", default="prediction", choices=POSITIONS)
    c.add_argument("--separator", default="eos", help="between demonstrations: 'eos' or a text such as '\\n'")
    c.add_argument("--n-eval", type=int, default=None, help="cap on evaluation queries (default 2000)")
    c.add_argument("--batch-size", type=int, default=8)
    c.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    c.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    c.add_argument("--out", required=True, help="result folder")
    c.add_argument("--overwrite", action="store_true", help="replace a result already in --out")
    return parser


def parse_data_files(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    files = {}
    for item in items:
        split, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--data-files takes SPLIT=PATH pairs (train=... eval=...), got {item!r}")
        files[split] = path
    return files


def run_compare(args: argparse.Namespace) -> None:
    # Everything that can be checked without the model is checked before it loads.
    CompareConfig(
        args.k,
        args.seed,
        args.permutation,
        args.lr,
        tuple(args.methods),
        tuple(args.baselines),
        args.position,
        args.n_eval,
        args.batch_size,
        tuple(args.groups),
        args.lcgd_exit,
        args.separator,
    )
    check_output_folder(Path(args.out), args.overwrite)
    if args.model not in BUNDLED_MODELS and not Path(args.model).is_dir():
        check_model_name(args.model)
    data_files = parse_data_files(args.data_files)
    if args.task in HUB_TASKS and data_files is None and (args.template or args.labels):
        raise ValueError("--template/--labels define a custom task from --data-files; they need --data-files")
    task = load_task(args.task, data_files, template=args.template, label_words=args.labels)
    check_k(task, args.k)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    started = time.perf_counter()
    result = compare(
        model,
        task,
        k=args.k,
        seed=args.seed,
        permutation=args.permutation,
        lr=args.lr,
        methods=args.methods,
        baselines=args.baselines,
        position=args.position,
        n_eval=args.n_eval,
        batch_size=args.batch_size,
        groups=args.groups,
        lcgd_exit=args.lcgd_exit,
        separator=args.separator,
        out=args.out,
        overwrite=args.overwrite,
    )
    seconds = time.perf_counter() - started
    config = result.config
    print(
        f"{config['model']} on {config['task']}: k={config['k']} (effective {config['effective_k']}), "
        f"seed {config['seed']}, permutation {config['permutation']}, lr {config['lr']}, "
        f"{config['n_eval']} queries, position {config['position']}, {seconds:.1f} s"
    )
    print("accuracy: " + ", ".join(f"{name} {value:.3f}" for name, value in result.accuracy.items()))
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(result.summary())
    print(f"saved to {args.out}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "compare":
            run_compare(args)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, FloatingPointError) as error:
        print(f"iclgd-lens: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
