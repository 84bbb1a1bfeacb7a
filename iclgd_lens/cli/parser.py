"""The command line's parser: every command and option, with the defaults of `CompareConfig`.

Only light modules are imported here, so that `--help` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn

from iclgd_lens.analysis.protocol.sweep import EXECUTORS
from iclgd_lens.core.config import CompareConfig
from iclgd_lens.core.methods import available_methods
from iclgd_lens.core.presets import (
    BASELINE_LRS,
    BASELINES,
    BIASES,
    CHOICES,
    LABEL_CONTROLS,
    LCGD_EXITS,
    METHODS,
    PARAMETER_GROUP_NAMES,
    PRESETS,
    SUBSETS,
    VERIFY_TOP,
    Choices,
    separator_text,
)
from iclgd_lens.sources.devices import DTYPES, available_threads
from iclgd_lens.sources.hub_tasks import HUB_TASKS, SPLIT_ALIASES
from iclgd_lens.sources.packaged_tasks import PACKAGED_TASKS
from iclgd_lens.sources.synthetic_tasks import SYNTHETIC_TASKS

DEFAULTS = {name: CompareConfig.__dataclass_fields__[name].default for name in CompareConfig.option_names()}


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


class OneLineErrorParser(argparse.ArgumentParser):
    """A parser whose errors are one line, as every other bad input is (the usage is on --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} ({self.prog} --help shows the usage)\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None: the help says what applies)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


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
                parser.error(
                    f"argument {option_string}: invalid choice {unknown[0]!r} (choose from {list(self.valid)})"
                )
        previous = getattr(namespace, self.dest)
        extended = previous is not self.default and previous is not None
        setattr(namespace, self.dest, (list(previous) if extended else []) + items)


def list_option(
    group, flag: str, valid: Sequence[str] | None, default, help: str, empty: bool = False, dest: str | None = None
) -> None:
    group.add_argument(
        flag,
        nargs="*" if empty else "+",
        action=ListAction,
        valid=valid,
        default=default,
        dest=dest,
        metavar=flag.lstrip("-").upper().rstrip("S") if valid is None else None,
        help=help,
    )


def add_compare_options(c: argparse.ArgumentParser) -> None:
    """What every comparison takes besides task, seed, permutation, lr and output (shared by compare and
    reproduce, so that every compare option passes through a sweep)."""
    c.add_argument(
        "--model",
        required=True,
        help="TransformerLens name (needs the hub), local HF folder, tiny-icl, "
        "or a packaged model: smollm2-135m, gemma3-270m (offline; docs/models.md)",
    )
    c.add_argument("--k", type=int, default=DEFAULTS["k"], help="demonstrations")
    list_option(
        c,
        "--methods",
        available_methods(),
        list(DEFAULTS["methods"]),
        "update rules (packages add theirs: docs/methods.md)",
    )
    list_option(
        c, "--baselines", BASELINES, list(DEFAULTS["baselines"]), "untrained baselines (none: empty)", empty=True
    )
    # Options that apply only to some comparisons default to None, so that one given where it does nothing is
    # refused (`CompareConfig.unused`); their help states the default.
    c.add_argument(
        "--baseline-lr",
        default=None,
        choices=BASELINE_LRS,
        help="each untrained baseline's learning rate: 'matched' (per method, the lr at which its update "
        "is as large as the trained model's, within 2 %%), 'paper' (the trained model's lr, as the "
        "papers do) or 'searched' (its own search over --lr-grid on held-out train rows; docs/science.md, "
        f'"Update size") [default: {DEFAULTS["baseline_lr"]}]',
    )
    list_option(
        c,
        "--lr-grid",
        None,
        None,
        "learning rates a search tries (reproduce's --lr search, --lr-lcgd "
        "search, --baseline-lr searched) [default: Dai et al.'s 36 values, 1e-4 to 0.9]",
    )
    c.add_argument(
        "--n-heldout",
        type=int,
        default=None,
        help=f"held-out train rows that score each lr of a search [default: {DEFAULTS['n_heldout']}]",
    )
    list_option(c, "--groups", PARAMETER_GROUP_NAMES, list(DEFAULTS["groups"]), "trained weights")
    c.add_argument(
        "--lcgd-exit",
        default=None,
        choices=LCGD_EXITS,
        help=f"LCGD read-out: after the block or attention [default: {DEFAULTS['lcgd_exit']}]",
    )
    c.add_argument(
        "--biases",
        default=DEFAULTS["biases"],
        choices=BIASES,
        help="biases GD trains: those the checkpoint "
        "has, or all (absent ones from zero, as the papers' fairseq model has every bias)",
    )
    list_option(
        c, "--subset", SUBSETS, list(DEFAULTS["subsets"]), "also score these query subsets", empty=True, dest="subsets"
    )
    c.add_argument(
        "--label-control",
        default=None,
        choices=LABEL_CONTROLS,
        help="also run the whole comparison with the demonstrations' labels shuffled (a seeded "
        "permutation) or their label words reversed, saved beside it in control-<kind>/",
    )
    presets = c.add_argument_group(
        "preset and its choices", "each choice defaults to the preset's; docs/reference/presets.md explains every one"
    )
    presets.add_argument(
        "--preset", default=DEFAULTS["preset"], choices=list(PRESETS), help="the toolkit's or the reference's"
    )
    presets.add_argument(
        "--separator",
        type=separator_text,
        help=CHOICE_HELP["separator"] + " (\\n and \\t are read as newline and tab) [toolkit: eos, reference: eos]",
    )
    for name, valid in CHOICES.items():
        defaults = ", ".join(f"{p}: {getattr(choices, name)}" for p, choices in PRESETS.items())
        presets.add_argument(f"--{name.replace('_', '-')}", choices=valid, help=f"{CHOICE_HELP[name]} [{defaults}]")
    c.add_argument("--n-eval", type=int, default=None, help="cap on evaluation queries (default: 2000)")
    c.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="queries per forward pass")
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
    parser = OneLineErrorParser(prog="iclgd-lens", description=__doc__.splitlines()[0])
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
    c.add_argument(
        "--seed", type=int, default=DEFAULTS["seed"], help="demonstration shuffle, baselines' init, random baseline"
    )
    c.add_argument(
        "--permutation",
        type=int,
        default=DEFAULTS["permutation"],
        help="order of the demonstrations; 0 keeps the shuffle",
    )
    c.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="SGD learning rate for GD on the trained model")
    c.add_argument(
        "--lr-lcgd",
        default=None,
        help="LCGD's learning rate: 'matched' (the lr at which its update is as "
        "large as GD's, within 2 %%), 'gd' (GD's lr, as the papers do) or a number [default: "
        f"{DEFAULTS['lr_lcgd']}]",
    )
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
    r.add_argument(
        "--runs",
        default="paper",
        help="'paper' (each task's paper seeds, permutations 0-2), 'paper:N' (N "
        "runs continuing the papers' seeds; the first 3 are theirs) or a number N (seeds 0..N-1 with "
        "permutations 0..N-1)",
    )
    r.add_argument(
        "--lr",
        default="paper",
        help="'paper' (the papers' per-task lr), 'search' (Dai's grid, scored on held-out train rows) or a number",
    )
    r.add_argument(
        "--lr-lcgd",
        default=None,
        help="LCGD's lr: 'matched' (its update as large as GD's), 'gd' (GD's "
        "lr, as the papers do), 'search' (its own search) or a number [default: search with --lr search, "
        "else matched]",
    )
    add_compare_options(r)
    r.add_argument("--jobs", type=int, default=1, help="runs at once (local processes, or the Slurm array's limit)")
    r.add_argument(
        "--executor",
        default="local",
        choices=EXECUTORS,
        help="local processes; slurm through submitit; submitit-local: submitit on this machine",
    )
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
    a.add_argument(
        "--estimate",
        default="atp+verify",
        choices=["atp+verify", "atp", "exact"],
        help="per-head values: first-order estimates for every head (atp: one forward and one backward pass per "
        "label class and batch), the same with the --verify-top heads run exactly beside them (atp+verify), or "
        "every head exact (exact: one batched forward per layer and subject)",
    )
    a.add_argument(
        "--verify-top",
        type=int,
        default=None,
        help=f"heads per method, and for ICL, that atp+verify runs exactly [default: {VERIFY_TOP}]",
    )
    a.add_argument("--kendall-queries", type=int, default=100, help="eval queries for Kendall (0: no Kendall)")
    a.add_argument(
        "--kendall-method",
        default=None,
        choices=METHODS,
        help="the finetuning Kendall compares with (it reads each SGD step's queries: gd or lcgd) [default: gd]",
    )
    a.add_argument(
        "--function-vectors",
        action="store_true",
        help="also Todd et al.'s function vectors: each "
        "head's indirect effect on shuffled-label prompts, the top heads' vector added to zero-shot runs "
        "per layer, and its heads beside the attribution's (TransformerLens 3)",
    )
    a.add_argument("--batch-size", type=int, default=8, help="queries per forward pass")
    add_result_model_options(a)

    lens = commands.add_parser(
        "lenses",
        help="ICL's implicit weight update against GD's, task vectors and residual shifts, per layer",
        formatter_class=DefaultsHelpFormatter,
        description="Per layer, on the model and its untrained baselines: ICL's implicit rank-1 update of the MLP "
        "input weights (Dherin et al. 2025; exact, checked by running each block) set against each method's update "
        "of the same weights (compare --groups mlp_in), Hendel's task vectors (ICL's stream at dummy queries, "
        "averaged) and ICL's own stream of the query patched into the ZS run, and the cosine between ICL's and each "
        "method's shift of the residual stream, each cosine beside its nulls. Several runs of "
        "one task pool into intervals over runs and queries and paired verdicts against the baselines. Writes "
        "per_layer.csv, paired.csv, lenses.md, lenses.png and lenses.json into --out.",
    )
    lens.add_argument("runs", nargs="+", metavar="RUN_DIR", help="result folders of one model and task")
    lens.add_argument("--out", required=True, help="lenses folder: new, empty or an earlier lenses folder")
    lens.add_argument(
        "--baselines",
        nargs="*",
        default=None,
        choices=BASELINES,
        help="baselines to read (default: every one the results have; none: the model only)",
    )
    lens.add_argument("--batch-size", type=int, default=None, help="queries per forward pass (default: the result's)")
    lens.add_argument(
        "--null-runs",
        nargs="+",
        default=None,
        metavar="RUN_DIR",
        help="results of another task on the same model (same k, number of classes and methods), one "
        "per RUN_DIR in order: the structured null of every cosine lens (docs/science.md)",
    )
    lens.add_argument(
        "--transfer",
        type=int,
        default=None,
        metavar="N",
        help="also ICL as one weight update: the chained implicit patches of the first N queries, "
        "averaged, run on the other queries beside ZS, ICL and each method (docs/science.md)",
    )
    lens.add_argument(
        "--path",
        action="store_true",
        help="also the path over demonstrations: ICL's implicit update "
        "with the first j demonstrations against each method trained on j (k more runs per subject)",
    )
    add_result_model_options(lens)

    kendall = commands.add_parser(
        "kendall",
        help="Kendall's tau pooled over several runs' attribution folders: intervals over runs and queries",
        formatter_class=DefaultsHelpFormatter,
        description="Pool the per-query Kendall values that attribute wrote for several runs of one model and task "
        "(the same queries, method and number of queries): per subject, level and layer the mean with its interval "
        "over runs and queries, and the model's tau against zero_delta's and each baseline's, paired by run and "
        "query, with a verdict. Reads no model. Writes kendall_layers.csv, kendall_paired.csv, kendall.md and "
        "kendall.json into --out.",
    )
    kendall.add_argument("folders", nargs="+", metavar="ATTRIBUTION_DIR", help="folders written by attribute")
    kendall.add_argument("--out", required=True, help="Kendall folder: new, empty or an earlier Kendall folder")
    kendall.add_argument("--debug", action="store_true", help="show the traceback of an error")

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
    v.add_argument("--lenses", nargs="+", default=[], metavar="DIR", help="folders written by lenses")
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
            raise ValueError(f"--data-files takes SPLIT=PATH with SPLIT one of {list(SPLIT_ALIASES)}, got {item!r}")
        if split in files:
            raise ValueError(f"--data-files names the {split} split twice")
        files[split] = path
    return files
