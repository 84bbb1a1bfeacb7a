"""The lenses command's runs: each run's lens values read back from the lenses folder where an earlier (interrupted)
call computed them, the others computed here or, with `--jobs`, in that many processes, and kept as each finishes
(`views.lens_run_values`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch

from iclgd_lens.analysis.lenses.values import lens_values
from iclgd_lens.analysis.protocol.pooled import RunValues
from iclgd_lens.backend import LensModel
from iclgd_lens.core.results import Result
from iclgd_lens.sources import load_model
from iclgd_lens.views.lens_run_values import read_run_values, run_key, start_run_values, write_run_values


@dataclass(frozen=True)
class LensOptions:
    """The lenses options that change a run's values (`lens_values`' arguments)."""

    baselines: list[str] | None
    batch_size: int | None
    path: bool
    transfer: int | None


@dataclass(frozen=True)
class LensRun:
    """One run the lenses read: its folder and result, and the null run's (another task's) where given."""

    folder: str
    result: Result
    null_folder: str | None = None
    null: Result | None = None


@dataclass(frozen=True)
class ModelLoad:
    """How to load the results' model again (in a `--jobs` process)."""

    name: str  # a name or folder `load_model` reads
    device: str | None
    dtype: str

    def load(self) -> LensModel:
        return load_model(self.name, device=self.device, dtype=self.dtype)


@dataclass(frozen=True)
class LensJob:
    """One run's lenses in a `--jobs` process: what it loads, and the key its values are kept under."""

    run: str
    null_run: str | None
    model: ModelLoad
    threads: int
    options: LensOptions
    out: str
    key: dict


def lens_runs(
    runs: Sequence[LensRun],
    model: LensModel,
    model_load: ModelLoad,
    options: LensOptions,
    out: Path,
    jobs: int,
    threads: int,
) -> list[RunValues]:
    """Every run's lens values, in the order of `runs`: those kept in `out` from an earlier call with the same
    results and options are read, the others computed (in `jobs` processes of `threads // jobs` threads each, each
    loading the model by `model_load` and its run from its folder; with one job, on `model` and the results given)
    and kept as each finishes. A failed run stops nothing: the others finish and are kept, then its error is
    raised."""
    keys = [run_key(run.folder, run.null_folder, vars(options)) for run in runs]
    start_run_values(out)
    todo = [index for index, key in enumerate(keys) if read_run_values(out, key) is None]
    if len(todo) < len(runs):
        print(f"{len(runs) - len(todo)} of {len(runs)} runs' values read from {out} (computed before)", flush=True)
    started = time.perf_counter()

    def done(index: int) -> None:
        print(
            f"[{index + 1}/{len(runs)}] {runs[index].folder} read ({time.perf_counter() - started:.0f} s)", flush=True
        )

    if jobs == 1 or len(todo) == 1:
        for index in todo:
            write_run_values(out, keys[index], _values(model, runs[index].result, runs[index].null, options))
            done(index)
    elif todo:
        per_job = max(1, threads // jobs)
        lens_jobs = {
            index: LensJob(
                runs[index].folder, runs[index].null_folder, model_load, per_job, options, str(out), keys[index]
            )
            for index in todo
        }
        errors = []
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_lens_job, job): index for index, job in lens_jobs.items()}
            for future in as_completed(futures):
                if future.exception() is None:
                    done(futures[future])
                else:
                    errors.append((runs[futures[future]].folder, future.exception()))
        for run, error in errors:
            print(f"the lenses of {run} failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        if errors:
            raise errors[0][1]  # its own type: the command line reports a ValueError in one line
    return [read_run_values(out, key) for key in keys]


def run_lens_job(job: LensJob) -> None:
    """One run's lenses in a `--jobs` process, kept in the lenses folder."""
    torch.set_num_threads(job.threads)
    model = job.model.load()
    null = None if job.null_run is None else Result.load(job.null_run)
    write_run_values(Path(job.out), job.key, _values(model, Result.load(job.run), null, job.options))


def _values(model: LensModel, result: Result, null: Result | None, options: LensOptions) -> RunValues:
    return lens_values(model, result, options.baselines, options.batch_size, options.path, null, options.transfer)
