"""The command line's parser: every command and option. The compare and reproduce options are generated from the
fields of `CompareConfig`, `SweepConfig` and `SweepRuntime` (their help, choices and defaults live there once).

Only light modules are imported here, so that `--help` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields
from typing import NoReturn

from iclgd_lens.analysis.protocol.sweep import SweepConfig, SweepRuntime
from iclgd_lens.core.config import CompareConfig
from iclgd_lens.core.presets import BASELINES, METHODS, PRESETS, VERIFY_TOP
from iclgd_lens.sources.devices import DTYPES, available_threads
from iclgd_lens.sources.hub_tasks import HUB_TASKS
from iclgd_lens.sources.packaged_tasks import PACKAGED_TASKS
from iclgd_lens.sources.synthetic_tasks import SYNTHETIC_TASKS


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


def config_options(
    parser: argparse.ArgumentParser, config: type, exclude: Sequence[str] = (), preset_group=None
) -> None:
    """An option for each field of the `config` dataclass that carries help (`core.config.option`), named, typed,
    checked and explained as its metadata says; the preset's choices go to `preset_group`, showing both presets'
    values."""
    for f in fields(config):
        meta = f.metadata
        if f.name in exclude or "help" not in meta:
            continue
        choices = meta.get("choices")
        choices = list(choices() if callable(choices) else choices) if choices is not None else None
        default = None if meta.get("conditional") or f.default is MISSING else f.default
        help = meta["help"]
        if default is None and (meta.get("conditional") or "default_text" in meta):
            help += f" [default: {meta.get('default_text', f.default)}]"
        group = parser
        if meta.get("group") == "preset":
            group = preset_group
            if f.name != "preset":
                help += " [" + ", ".join(f"{p}: {getattr(c, f.name)}" for p, c in PRESETS.items()) + "]"
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        help = help.replace("%", "%%")
        if meta.get("list"):
            default = list(default) if default is not None else None
            list_option(group, flag, choices, default, help, empty=meta.get("empty", False), dest=f.name)
            continue
        group.add_argument(flag, type=option_type(f), default=default, choices=choices, help=help)


def option_type(f) -> Callable[[str], object] | None:
    """What reads a field's value from the command line: its metadata's `type`, else int or float as its annotation
    (a string here: the configs postpone their annotations) begins, else the text itself."""
    annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    return f.metadata.get("type") or {"int": int, "float": float}.get(annotation.split(" |")[0].strip())


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The model a command loads, and how: the options compare and reproduce share besides the configs'."""
    p.add_argument(
        "--model",
        required=True,
        help="TransformerLens name (needs the hub), local HF folder, tiny-icl, "
        "or a packaged model: smollm2-135m, gemma3-270m (offline; docs/models.md)",
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="the model's dtype")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")


def preset_group(p: argparse.ArgumentParser):
    return p.add_argument_group(
        "preset and its choices", "each choice defaults to the preset's; docs/reference/presets.md explains every one"
    )


def add_result_model_options(p: argparse.ArgumentParser) -> None:
    """For commands that re-load the model a saved result was computed on."""
    p.add_argument("--model", default=None, help="the result's model, when its config cannot name it (a local folder)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--threads", type=int, default=available_threads(), help="torch CPU threads")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")


def command(name: str) -> Callable[[argparse.Namespace], int | None]:
    """The subcommand `name`'s function (`commands.run_<name>`), imported when it runs: torch and the pipeline load
    once the arguments parse."""

    def run(args: argparse.Namespace) -> int | None:
        from iclgd_lens.cli import commands

        return getattr(commands, f"run_{name}")(args)

    return run


def subcommand(commands, name: str, help: str, description: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help, description=description, formatter_class=DefaultsHelpFormatter)
    parser.set_defaults(handler=command(name))
    return parser


def add_compare(commands) -> None:
    c = subcommand(
        commands,
        "compare",
        "ZS, ICL, GD and LCGD on one model and task, every metric",
        "Compare ICL with GD and LCGD on one model and task, on the model and its untrained baselines.",
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
    add_model_options(c)
    config_options(c, CompareConfig, preset_group=preset_group(c))
    c.add_argument("--threads", type=int, default=available_threads(), help="torch CPU threads")
    c.add_argument("--out", required=True, help="result folder (new, empty, or a previous result with --overwrite)")
    c.add_argument("--overwrite", action="store_true", help="replace a result already in --out")


def add_reproduce(commands) -> None:
    r = subcommand(
        commands,
        "reproduce",
        "the papers' protocol: tasks x runs, resumable and parallel, aggregated into their tables",
        "Run one comparison per (task, seed, permutation) into DIR/runs/ (finished runs are skipped, so the same "
        "command resumes a sweep), then write the papers' tables (Markdown and CSV) and per-layer plots into DIR. "
        "docs/reproduction.md explains every table.",
    )
    config_options(r, SweepConfig)
    add_model_options(r)
    config_options(r, CompareConfig, exclude=SweepConfig.PER_RUN, preset_group=preset_group(r))
    config_options(r, SweepRuntime)
    r.add_argument("--out", required=True, help="sweep folder: new, empty, or this same sweep to resume it")


def add_attribute(commands) -> None:
    a = subcommand(
        commands,
        "attribute",
        "per-head attribution of a result: its deltas head by head, activation patching, Kendall",
        "Which heads carry GD's and LCGD's update (each saved delta through one head at a time), which carry the ICL "
        "effect (one head's ICL output patched into the ZS run), and Dai et al.'s Kendall measure. Writes heads.csv, "
        "heads.md, heads.png, kendall.csv, kendall.md into --out.",
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
        help="also Todd et al.'s function vectors: each head's indirect effect on shuffled-label prompts, the top "
        "heads' vector added to zero-shot runs per layer, and its heads beside the attribution's (TransformerLens 3)",
    )
    a.add_argument("--batch-size", type=int, default=8, help="queries per forward pass")
    add_result_model_options(a)


def add_lenses(commands) -> None:
    lens = subcommand(
        commands,
        "lenses",
        "ICL's implicit weight update against GD's, task vectors and residual shifts, per layer",
        "Per layer, on the model and its untrained baselines: ICL's implicit rank-1 update of the MLP input weights "
        "(Dherin et al. 2025; exact, checked by running each block) set against each method's update of the same "
        "weights (compare --groups mlp_in), Hendel's task vectors (ICL's stream at dummy queries, averaged) and ICL's "
        "own stream of the query patched into the ZS run, and the cosine between ICL's and each method's shift of "
        "the residual stream, each cosine beside its nulls. Several runs of one task pool into intervals over runs "
        "and queries and paired verdicts against the baselines. Writes per_layer.csv, paired.csv, lenses.md, "
        "lenses.png, lenses.json and runs/ (each run's values, kept as it finishes: a call stopped midway goes on "
        "where it stopped when run again with the same --out) into --out.",
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
        "--jobs",
        type=int,
        default=1,
        help="runs at once, each in its own process with --threads / jobs threads (each loads the model)",
    )
    lens.add_argument(
        "--null-runs",
        nargs="+",
        default=None,
        metavar="RUN_DIR",
        help="results of another task on the same model (same k, number of classes and methods), one per RUN_DIR "
        "in order: the structured null of every cosine lens (docs/science.md)",
    )
    lens.add_argument(
        "--transfer",
        type=int,
        default=None,
        metavar="N",
        help="also ICL as one weight update: the chained implicit patches of the first N queries, averaged, run on "
        "the other queries beside ZS, ICL and each method (docs/science.md)",
    )
    lens.add_argument(
        "--path",
        action="store_true",
        help="also the path over demonstrations: ICL's implicit update with the first j demonstrations against "
        "each method trained on j (k more runs per subject)",
    )
    add_result_model_options(lens)


def add_kendall(commands) -> None:
    kendall = subcommand(
        commands,
        "kendall",
        "Kendall's tau pooled over several runs' attribution folders: intervals over runs and queries",
        "Pool the per-query Kendall values that attribute wrote for several runs of one model and task (the same "
        "queries, method and number of queries): per subject, level and layer the mean with its interval over runs "
        "and queries, and the model's tau against zero_delta's and each baseline's, paired by run and query, with a "
        "verdict. Reads no model. Writes kendall_layers.csv, kendall_paired.csv, kendall.md and kendall.json into "
        "--out.",
    )
    kendall.add_argument("folders", nargs="+", metavar="ATTRIBUTION_DIR", help="folders written by attribute")
    kendall.add_argument("--out", required=True, help="Kendall folder: new, empty or an earlier Kendall folder")
    kendall.add_argument("--debug", action="store_true", help="show the traceback of an error")


def add_report(commands) -> None:
    v = subcommand(
        commands,
        "report",
        "one self-contained HTML file: tables, plots, attention views, attribution",
        "Write one HTML file (no network needed to open it) from result folders: each summary and its per-layer "
        "tables, per-layer curves and per-head heatmaps, circuitsvis attention views of the first result (the model "
        "re-loaded from its config, or --model), and attribution tables.",
    )
    v.add_argument("runs", nargs="+", metavar="RUN_DIR", help="result folders written by compare (or a sweep's runs)")
    v.add_argument("--html", required=True, help="the report file")
    v.add_argument("--queries", type=int, nargs="+", default=[0], help="queries of the first result to draw")
    v.add_argument("--no-views", action="store_true", help="leave out the attention views (no model is loaded)")
    v.add_argument("--attribution", nargs="+", default=[], metavar="DIR", help="folders written by attribute")
    v.add_argument("--lenses", nargs="+", default=[], metavar="DIR", help="folders written by lenses")
    v.add_argument("--overwrite", action="store_true", help="replace an earlier report in --html")
    add_result_model_options(v)


def build_parser() -> argparse.ArgumentParser:
    """Every verb's parser; each verb's function is its `handler` default."""
    parser = OneLineErrorParser(prog="iclgd-lens", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (add_compare, add_reproduce, add_attribute, add_lenses, add_kendall, add_report):
        add(commands)
    return parser
