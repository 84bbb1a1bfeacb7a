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
from dataclasses import asdict, dataclass, field
from functools import cache, lru_cache
from multiprocessing import get_context
from pathlib import Path

from iclgd_lens.analysis.protocol.plan import Run, plan_runs
from iclgd_lens.core.presets import DAI_LR_GRID, METHODS
from iclgd_lens.files import check_output, write_text_atomic

SWEEP_FORMAT = "iclgd-lens sweep 1"
SWEEP_FILE = "sweep.json"
EXECUTORS = ("local", "slurm", "submitit-local")
# Options that change how a sweep runs, not what it computes: a restart may change them.
RUNTIME_OPTIONS = ("jobs", "executor", "threads", "slurm")
LCGD_RULES = ("matched", "gd", "search")  # LCGD's lr in a sweep, besides a number


@dataclass(frozen=True)
class SweepConfig:
    """What a sweep computes. `compare` holds the keyword arguments every run passes to `compare` (k, methods,
    baselines, preset and choices, n_eval, ...), besides task, seed, permutation and lr, which the plan sets."""

    model: str
    tasks: tuple[str, ...]
    runs: str = "paper"  # "paper" or a number of runs
    lr: str = "paper"  # "paper", "search" or a number
    lr_lcgd: str = "matched"  # "matched" (its update as large as GD's), "gd" (GD's lr), "search" or a number
    lr_grid: tuple[float, ...] = DAI_LR_GRID
    n_heldout: int = 128
    compare: dict = field(default_factory=dict)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "lr_grid", tuple(float(lr) for lr in self.lr_grid))
        if self.lr_lcgd not in LCGD_RULES:
            try:
                value = float(self.lr_lcgd)
            except ValueError:
                raise ValueError(
                    f"--lr-lcgd takes 'matched', 'gd', 'search' or a number, got {self.lr_lcgd!r}"
                ) from None
            if not 0 < value < float("inf"):
                raise ValueError(f"--lr-lcgd must be a positive finite number, got {self.lr_lcgd}")
        if "search" in (self.lr, self.lr_lcgd) or self.compare.get("baseline_lr") == "searched":
            if not self.lr_grid:
                raise ValueError("the learning-rate grid is empty; give --lr-grid values")
            bad = [lr for lr in self.lr_grid if not 0 < lr < float("inf")]
            if bad:
                raise ValueError(f"--lr-grid values must be positive finite numbers, got {bad}")
        if self.n_heldout < 1:
            raise ValueError(f"n_heldout must be >= 1, got {self.n_heldout}")

    def check_given(self, given: list[str]) -> None:
        """Refuse a sweep option given where it does nothing: LCGD's lr without LCGD, a grid with nothing searched."""
        methods = self.compare.get("methods", METHODS)
        if "lr_lcgd" in given and "lcgd" not in methods:
            raise ValueError(
                f"--lr-lcgd sets LCGD's learning rate, and LCGD is not run (methods {list(methods)}): leave it out"
            )
        searched = "search" in (self.lr, self.lr_lcgd) or self.compare.get("baseline_lr") == "searched"
        for name in ("lr_grid", "n_heldout"):
            if name in given and not searched:
                raise ValueError(
                    f"--{name.replace('_', '-')} applies to a learning-rate search (--lr search, "
                    "--lr-lcgd search or --baseline-lr searched), and nothing is searched: leave it out"
                )

    def plan(self) -> list[Run]:
        return plan_runs(list(self.tasks), self.runs, self.lr)

    def to_dict(self) -> dict:
        data = asdict(self)
        if "search" not in (self.lr, self.lr_lcgd) and self.compare.get("baseline_lr") != "searched":
            # the grid means nothing then: left out, it cannot block a restart
            del data["lr_grid"], data["n_heldout"]
        return json.loads(json.dumps(data))  # as sweep.json holds it (lists, not tuples), so the two compare equal


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
        differences = _differences(written["config"], config.to_dict())
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


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{key}: {old.get(key)!r} there, {new.get(key)!r} now" for key in keys if old.get(key) != new.get(key)]


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
    same_baselines = config.get("baseline_lr", "paper") == job.config.compare.get("baseline_lr", "matched")
    same_run = (config["task"], config["seed"], config["permutation"]) == (
        job.run.task,
        job.run.seed,
        job.run.permutation,
    )
    control = job.config.compare.get("label_control")
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
    options = dict(config.compare)  # only what the comparison uses (`CompareConfig.unused` refuses the rest)
    if "lcgd" in config.compare.get("methods", ("lcgd",)):
        if config.lr_lcgd == "search":
            options["lr_lcgd"] = searched_lr(job, model, task, "lcgd")
        else:
            options["lr_lcgd"] = config.lr_lcgd if config.lr_lcgd in ("gd", "matched") else float(config.lr_lcgd)
    if config.compare.get("baseline_lr") == "searched":
        options |= {"lr_grid": config.lr_grid, "n_heldout": config.n_heldout}
    compare(
        model,
        task,
        seed=run.seed,
        permutation=run.permutation,
        lr=lr,
        **options,
        out=job.folder,
        overwrite=True,
        progress=False,
    )
    return job.folder


def searched_lr(job: RunJob, model, task, method: str) -> float:
    """The run's learning-rate search for `method`, read back when an earlier attempt finished it."""
    from iclgd_lens.core.config import CompareConfig
    from iclgd_lens.core.lr_search import search_lr

    path = lr_file(Path(job.out), job.run, method)
    chosen = _searched_lr(path)
    if chosen is not None:
        return chosen
    run, sweep = job.run, job.config
    searched = {"lr_grid": sweep.lr_grid, "n_heldout": sweep.n_heldout}
    config = CompareConfig(**sweep.compare, seed=run.seed, permutation=run.permutation, **searched)
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
    *,
    jobs: int = 1,
    executor: str = "local",
    threads: int | None = None,
    device: str | None = None,
    slurm: dict | None = None,
    on_start: Callable[[list[Run], list[Run]], None] | None = None,
    on_run: Callable[[Run, str | None], None] | None = None,
) -> SweepOutcome:
    """Run every unfinished run of `config` into `out` and return what happened. `executor`: `local` (`jobs`
    processes; 1: in this process), `slurm` (submitit's Slurm executor, `slurm` its parameters) or
    `submitit-local` (submitit's local executor: the Slurm path on this machine). `on_start(finished, pending)` is
    called once the finished runs are known, before any run starts; `on_run(run, error)` as each run ends."""
    out = Path(out)
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; use one of {list(EXECUTORS)}")
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    plan = config.plan()
    check_sweep_folder(out, config)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / SWEEP_FILE).is_file():
        write_json_atomic(out / SWEEP_FILE, {"format": SWEEP_FORMAT, "config": config.to_dict()})
    all_jobs = [RunJob(config, run, str(run_folder(out, run)), str(out), device, threads) for run in plan]
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
        _submitit(todo, out, executor, jobs, slurm or {}, ended)
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
