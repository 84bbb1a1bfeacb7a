"""`reproduce`: the papers' protocol as a resumable sweep of comparisons, one result folder per run.

Sweep folder layout (docs/reproduction.md):
- sweep.json: what the sweep is (model, tasks, runs, lr, every compare option); a restart must ask the same;
- runs/<task>/seed<S>-perm<P>/: one result folder per run, written atomically by `Result.save`;
- lr-search/<task>-seed<S>-perm<P>.json: GD's learning-rate search of that run (with `lr="search"`), and
  ...-lcgd.json LCGD's own (with `lr_lcgd="search"`);
- the tables and plots that `tables.write_tables` makes from the finished runs.

A run is finished when its folder is a complete result of the same run; a restart skips finished runs and redoes
the others from scratch (every run is deterministic given its seed), so a sweep killed at any point ends with the
same tables. Runs are independent: they go to local processes (`jobs`) or through submitit to Slurm.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import ClassVar

from iclgd_lens.analysis.protocol.plan import Run, plan_runs
from iclgd_lens.core.config import CompareConfig, option
from iclgd_lens.core.presets import METHODS
from iclgd_lens.files import check_output, write_text_atomic

SWEEP_FORMAT = "iclgd-lens sweep 1"
SWEEP_FILE = "sweep.json"
EXECUTORS = ("local", "slurm", "submitit-local")
# Options that change how a sweep runs, not what it computes: a restart may change them.
RUNTIME_OPTIONS = ("jobs", "executor", "threads", "slurm")
LCGD_RULES = ("matched", "gd", "search")  # LCGD's lr in a sweep, besides a number


@dataclass(frozen=True)
class SweepConfig:
    """What a sweep computes: the model, the tasks, the runs, GD's and LCGD's lr rules and `compare`, the
    comparison every run makes (the plan sets each run's task, seed, permutation and lrs: `PER_RUN`). A search
    (`lr="search"`, `lr_lcgd="search"` or the baselines' `searched`) tries `compare.lr_grid`, scored on
    `compare.n_heldout` held-out train rows."""

    PER_RUN: ClassVar[tuple[str, ...]] = ("seed", "permutation", "lr", "lr_lcgd")  # the plan's, not the options'

    model: str
    tasks: tuple[str, ...] = field(
        metadata={"help": "tasks (space- or comma-separated), any that compare --task takes by name", "list": True}
    )
    runs: str = option(
        "paper",
        "'paper' (each task's paper seeds, permutations 0-2), 'paper:N' (N runs continuing the papers' seeds; the "
        "first 3 are theirs) or a number N (seeds 0..N-1 with permutations 0..N-1)",
    )
    lr: str = option(
        "paper", "'paper' (the papers' per-task lr), 'search' (Dai's grid, scored on held-out train rows) or a number"
    )
    lr_lcgd: str = option(
        "matched",
        "LCGD's lr: 'matched' (its update as large as GD's), 'gd' (GD's lr, as the papers do), 'search' (its own "
        "search) or a number",
        conditional=True,
        default_text="search with --lr search, else matched",
    )
    compare: CompareConfig = field(default_factory=CompareConfig)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if self.lr_lcgd not in LCGD_RULES:
            try:
                value = float(self.lr_lcgd)
            except ValueError:
                raise ValueError(
                    f"--lr-lcgd takes 'matched', 'gd', 'search' or a number, got {self.lr_lcgd!r}"
                ) from None
            if not 0 < value < float("inf"):
                raise ValueError(f"--lr-lcgd must be a positive finite number, got {self.lr_lcgd}")
        if self.searched:
            if not self.compare.lr_grid:
                raise ValueError("the learning-rate grid is empty; give --lr-grid values")
            bad = [lr for lr in self.compare.lr_grid if not 0 < lr < float("inf")]
            if bad:
                raise ValueError(f"--lr-grid values must be positive finite numbers, got {bad}")

    @property
    def searched(self) -> bool:
        """Whether any lr of the sweep comes from a search (GD's, LCGD's or the baselines')."""
        return "search" in (self.lr, self.lr_lcgd) or self.compare.baseline_lr == "searched"

    def check_given(self, given: list[str]) -> None:
        """Refuse a sweep option given where it does nothing: LCGD's lr without LCGD, a grid with nothing searched."""
        methods = self.compare.methods
        if "lr_lcgd" in given and "lcgd" not in methods:
            raise ValueError(
                f"--lr-lcgd sets LCGD's learning rate, and LCGD is not run (methods {list(methods)}): leave it out"
            )
        for name in ("lr_grid", "n_heldout"):
            if name in given and not self.searched:
                raise ValueError(
                    f"--{name.replace('_', '-')} applies to a learning-rate search (--lr search, "
                    "--lr-lcgd search or --baseline-lr searched), and nothing is searched: leave it out"
                )

    def plan(self) -> list[Run]:
        return plan_runs(list(self.tasks), self.runs, self.lr)

    def to_dict(self) -> dict:
        """sweep.json's config: the sweep's fields, and `compare` as the options set (the preset's choices left
        unset stay out); the grid and held-out rows at the top, only where something is searched."""
        data = {name: getattr(self, name) for name in ("model", "tasks", "runs", "lr", "lr_lcgd", "dtype")}
        options = {name: getattr(self.compare, name) for name in self.compare.option_names()}
        search = {name: options.pop(name) for name in ("lr_grid", "n_heldout")}
        data["compare"] = {k: v for k, v in options.items() if k not in self.PER_RUN and v is not None}
        data |= search if self.searched else {}
        return json.loads(json.dumps(data))  # as sweep.json holds it (lists, not tuples)

    @classmethod
    def from_dict(cls, data: dict) -> SweepConfig:
        """The config `to_dict` wrote (or an earlier version, whose `compare` held only the options given)."""
        search = {name: data[name] for name in ("lr_grid", "n_heldout") if name in data}
        compare = CompareConfig(**data.get("compare", {}), **search)
        sweep = {name: data[name] for name in ("model", "tasks", "runs", "lr", "lr_lcgd", "dtype") if name in data}
        return cls(**sweep, compare=compare)


@dataclass(frozen=True)
class SweepRuntime:
    """How a sweep runs, not what it computes: a restart may change it."""

    jobs: int = option(1, "runs at once (local processes, or the Slurm array's limit)")
    executor: str = option(
        "local", "local processes; slurm through submitit; submitit-local: submitit on this machine", choices=EXECUTORS
    )
    threads: int | None = option(None, "torch CPU threads per run", default_text="cores / jobs")
    device: str | None = None  # the command line's --device
    slurm_partition: str | None = option(None, "Slurm partition")
    slurm_time: int = option(60, "Slurm time limit per run, minutes")
    slurm_gpus: int = option(0, "GPUs per Slurm job")
    slurm_cpus: int = option(4, "CPUs per Slurm job")

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"unknown executor {self.executor!r}; use one of {list(EXECUTORS)}")
        if self.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {self.jobs}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")

    @property
    def slurm(self) -> dict:
        """submitit's parameters for a Slurm job."""
        partition = {"slurm_partition": self.slurm_partition} if self.slurm_partition else {}
        return {"timeout_min": self.slurm_time, "cpus_per_task": self.slurm_cpus, "gpus_per_node": self.slurm_gpus} | (
            partition
        )


@dataclass(frozen=True)
class RunJob:
    """One run, as a worker process needs it: picklable, self-contained."""

    config: SweepConfig
    run: Run
    folder: str
    out: str  # the sweep folder (its lr-search files)
    device: str | None = None
    threads: int | None = None


def run_folder(out: Path, run: Run) -> Path:
    return out / "runs" / run.task / f"seed{run.seed}-perm{run.permutation}"


def lr_file(out: Path, run: Run, method: str = "gd") -> Path:
    suffix = "" if method == "gd" else f"-{method}"
    return out / "lr-search" / f"{run.task}-seed{run.seed}-perm{run.permutation}{suffix}.json"


def check_sweep_folder(out: Path, config: SweepConfig) -> None:
    """Refuse, before anything runs, a folder that is neither new, empty, nor this same sweep."""
    written = _written_sweep(out)
    check_output(out, "sweep", lambda _: written is not None)
    if written is not None:
        differences = _differences(written["config"], config)
        if differences:
            raise ValueError(
                f"{str(out)!r} holds another sweep ({'; '.join(differences)}); resume it with the same options or "
                "choose another --out"
            )


def _written_sweep(out: Path) -> dict | None:
    """The sweep.json this toolkit wrote into `out`, or None."""
    try:
        written = json.loads((out / SWEEP_FILE).read_text())
    except (OSError, ValueError):
        return None
    ours = isinstance(written, dict) and written.get("format") == SWEEP_FORMAT and "config" in written
    return written if ours else None


def _differences(old: dict, new: SweepConfig) -> list[str]:
    """What differs between the sweep a sweep.json holds and `new`, field by field (compare's options one by one,
    each with its default where a sweep.json leaves it out)."""
    try:
        written = SweepConfig.from_dict(old)
    except (TypeError, ValueError) as error:
        return [f"its sweep.json does not read as a sweep of this version ({error})"]
    pairs = [(name, getattr(written, name), getattr(new, name)) for name in ("model", "tasks", "runs", "lr", "lr_lcgd")]
    pairs += [("dtype", written.dtype, new.dtype)]
    pairs += [(n, getattr(written.compare, n), getattr(new.compare, n)) for n in new.compare.option_names()]
    return [f"{name}: {a!r} there, {b!r} now" for name, a, b in pairs if a != b]


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def is_finished(job: RunJob) -> bool:
    """The run's folder holds a complete result of this run (same task, seed, permutation and lr; sweep.json
    guards the rest)."""
    from iclgd_lens.core.results import CONTROL_PREFIX, is_result_folder

    folder = Path(job.folder)
    if not is_result_folder(folder):
        return False
    try:
        config = json.loads((folder / "result.json").read_text())["config"]
    except (OSError, ValueError, KeyError):
        return False
    expected_lr = job.run.lr if job.run.lr is not None else _searched_lr(lr_file(Path(job.out), job.run))
    rule = job.config.lr_lcgd
    if rule == "search":
        expected_lcgd = _searched_lr(lr_file(Path(job.out), job.run, "lcgd"))
    elif rule in ("gd", "matched"):
        expected_lcgd = expected_lr if rule == "gd" else None  # matched: found by the run itself
    else:
        expected_lcgd = float(rule)
    if "lcgd" not in config.get("methods", METHODS):
        rule, expected_lcgd = "not run", None  # LCGD's lr is neither used nor recorded
    same_rule = rule != "matched" or config.get("lr_lcgd_rule") == "matched"
    same_baselines = config.get("baseline_lr", "paper") == job.config.compare.baseline_lr
    same_run = (config["task"], config["seed"], config["permutation"]) == (
        job.run.task,
        job.run.seed,
        job.run.permutation,
    )
    control = job.config.compare.label_control
    return (
        same_run
        and (control is None or (folder / f"{CONTROL_PREFIX}{control}" / "result.json").is_file())
        and (expected_lr is None or config["lr"] == expected_lr)
        and (expected_lcgd is None or config.get("lr_lcgd", config["lr"]) == expected_lcgd)
        and same_rule
        and same_baselines
    )


def _searched_lr(path: Path) -> float | None:
    try:
        return json.loads(path.read_text())["chosen"]
    except (OSError, ValueError, KeyError):
        return None


@lru_cache(maxsize=1)
def _model(name: str, device: str | None, dtype: str):
    from iclgd_lens.sources import load_model

    return load_model(name, device=device, dtype=dtype)


@cache
def _task(name: str):
    from iclgd_lens.sources import load_task

    return load_task(name)


def execute(job: RunJob) -> str:
    """Run one comparison (after its learning-rate search, when asked) and save it; returns its folder.
    Runs in the sweep's process, a local worker process or a Slurm job alike."""
    import torch

    from iclgd_lens.core.comparison import compare

    if job.threads:
        torch.set_num_threads(job.threads)
    config, run = job.config, job.run
    model, task = _model(config.model, job.device, config.dtype), _task(run.task)
    lr = run.lr if run.lr is not None else searched_lr(job, model, task, "gd")
    lr_lcgd: float | str = config.lr_lcgd
    if config.lr_lcgd == "search":
        lr_lcgd = searched_lr(job, model, task, "lcgd") if "lcgd" in config.compare.methods else "matched"
    elif config.lr_lcgd not in ("gd", "matched"):
        lr_lcgd = float(config.lr_lcgd)
    compare_config = replace(config.compare, seed=run.seed, permutation=run.permutation, lr=lr, lr_lcgd=lr_lcgd)
    compare(model, task, compare_config, out=job.folder, overwrite=True, progress=False)
    return job.folder


def searched_lr(job: RunJob, model, task, method: str) -> float:
    """The run's learning-rate search for `method`, read back when an earlier attempt finished it."""
    from iclgd_lens.core.lr_search import search_lr

    path = lr_file(Path(job.out), job.run, method)
    chosen = _searched_lr(path)
    if chosen is not None:
        return chosen
    config = replace(job.config.compare, seed=job.run.seed, permutation=job.run.permutation)
    search = search_lr(model, task, config, method)
    write_json_atomic(
        path,
        search | {"task": job.run.task, "seed": job.run.seed, "permutation": job.run.permutation, "method": method},
    )
    if search["chosen"] is None:
        raise FloatingPointError(
            f"{job.run.name}: {method} diverged at every learning rate of the grid; lower the grid"
        )
    return search["chosen"]


@dataclass
class SweepOutcome:
    finished: list[Run]  # already there before this call
    done: list[Run]  # computed by this call
    failed: dict[str, str]  # run name -> error


def run_sweep(
    config: SweepConfig,
    out: str | Path,
    runtime: SweepRuntime | None = None,
    *,
    on_start: Callable[[list[Run], list[Run]], None] | None = None,
    on_run: Callable[[Run, str | None], None] | None = None,
) -> SweepOutcome:
    """Run every unfinished run of `config` into `out` as `runtime` says, and return what happened (the runs
    finished before, done now, and failed with their errors). `runtime.executor`: `local` (`jobs` processes; 1: in
    this process), `slurm` (submitit's Slurm executor) or `submitit-local` (submitit's local executor: the Slurm
    path on this machine). `on_start(finished, pending)` is called once the finished runs are known, before any run
    starts; `on_run(run, error)` as each run ends."""
    out, runtime = Path(out), runtime or SweepRuntime()
    jobs, executor = runtime.jobs, runtime.executor
    plan = config.plan()
    check_sweep_folder(out, config)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / SWEEP_FILE).is_file():
        write_json_atomic(out / SWEEP_FILE, {"format": SWEEP_FORMAT, "config": config.to_dict()})
    all_jobs = [
        RunJob(config, run, str(run_folder(out, run)), str(out), runtime.device, runtime.threads) for run in plan
    ]
    todo = [job for job in all_jobs if not is_finished(job)]
    pending = {job.run for job in todo}
    outcome = SweepOutcome([run for run in plan if run not in pending], [], {})
    if on_start is not None:
        on_start(outcome.finished, [job.run for job in todo])

    def ended(job: RunJob, error: BaseException | None) -> None:
        if error is None:
            outcome.done.append(job.run)
        else:
            outcome.failed[job.run.name] = f"{type(error).__name__}: {error}"
        if on_run is not None:
            on_run(job.run, None if error is None else outcome.failed[job.run.name])

    if executor == "local" and jobs == 1:
        for job in todo:
            try:
                execute(job)
                ended(job, None)
            except Exception as error:  # one failed run (a diverging lr, out of memory) does not stop the others
                ended(job, error)
    elif executor == "local":
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(execute, job): job for job in todo}
            for future in as_completed(futures):
                ended(futures[future], future.exception())
    else:
        _submitit(todo, out, executor, jobs, runtime.slurm, ended)
    return outcome


def _submitit(todo: list[RunJob], out: Path, executor: str, jobs: int, slurm: dict, ended: Callable) -> None:
    try:
        import submitit
    except ImportError:
        raise ValueError("--executor slurm needs submitit: pip install submitit") from None
    logs = out / "submitit"
    if executor == "slurm":
        pool = submitit.AutoExecutor(folder=logs, cluster="slurm")
        pool.update_parameters(**({"slurm_array_parallelism": jobs} | slurm))
    else:
        pool = submitit.LocalExecutor(folder=logs)
        pool.update_parameters(timeout_min=slurm.get("timeout_min", 60 * 24))
    if not todo:
        return
    submitted = pool.map_array(execute, todo)
    for job, handle in zip(todo, submitted):
        try:
            handle.result()
            ended(job, None)
        except Exception as error:  # submitit re-raises the job's error (or its own) here
            ended(job, error)
