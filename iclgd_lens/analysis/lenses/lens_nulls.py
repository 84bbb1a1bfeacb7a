"""Nulls for the cosine lenses: what a cosine between two updates is without the structure a finding would claim.

- **Random direction**: against a direction uniform on the sphere of the updates' space (dimension D), a cosine is
  0 on average with sd 1/√D, and its absolute value averages E|cos| = Γ(D/2) / (√π Γ((D+1)/2)) ≈ √(2/(πD)).
  `random_scales` gives E|cos| per layer: D is a layer's MLP input weights (every input matrix) for the implicit
  update's cosine, d_model for the residual shift's.
- **Structured (another task)**: the same cosine against the update the method learns from *another task's*
  demonstrations on the same model, with the same k and the same number of classes: the subject
  "model [FT on <task>]", whose methods' deltas are the other result's, read on this task's queries. What two
  updates of one model on prompts of one format share (the model's own geometry, the format, the label words'
  positions) survives into this null; what is specific to learning this task does not.
"""

from __future__ import annotations

import math

import numpy as np

from iclgd_lens.analysis.lenses.implicit_update import matrix_names
from iclgd_lens.analysis.lenses.lens_runs import POINTS, SubjectRuns
from iclgd_lens.backend import LensModel
from iclgd_lens.core.recording import Prompts, read_points
from iclgd_lens.core.results import Result, other_task_name


def random_abs_cos(dimension: int) -> float:
    """E|cos(v, r)| for a fixed v and r uniform on the unit sphere in `dimension` dimensions."""
    return math.exp(math.lgamma(dimension / 2) - math.lgamma((dimension + 1) / 2)) / math.sqrt(math.pi)


def random_scales(model: LensModel) -> dict[str, np.ndarray]:
    """E|cos| against a random direction, [1, layer] for the implicit update (a layer's MLP input weights) and
    [1, point] for the residual shift (d_model)."""
    cfg = model.cfg
    implicit = len(matrix_names(model)) * cfg.d_model * cfg.d_mlp
    return {
        "random_abs_cos_implicit": np.full((1, cfg.n_layers), random_abs_cos(implicit)),
        "random_abs_cos_shift": np.full((1, cfg.n_layers + 1), random_abs_cos(cfg.d_model)),
    }


def check_null_result(result: Result, null: Result, model: LensModel) -> None:
    """The structured null's result: the same model, k and number of classes, another task, the same methods, with
    saved deltas; refused in one line naming what differs."""
    where = f"the null run ({null.config['task']}) for {result.config['task']}"
    differ = []
    if null.config["task"] == result.config["task"]:
        differ.append("the same task (the null needs another task's demonstrations)")
    if null.config["k"] != result.config["k"]:
        differ.append(f"k {null.config['k']} (this run's {result.config['k']})")
    classes = len(result.episode.label_tokens), len(null.episode.label_tokens)
    if classes[0] != classes[1]:
        differ.append(f"{classes[1]} classes (this task's {classes[0]})")
    missing = [method for method in result.methods if method not in null.deltas]
    if missing:
        differ.append(f"no saved delta of {missing}")
    if differ:
        raise ValueError(
            f"{where} has {'; '.join(differ)}: give a result of another task with the same model, k, "
            "number of classes and methods"
        )
    null.check_model(model)


def other_task_subject(trained: SubjectRuns, result: Result, null: Result, batch_size: int) -> SubjectRuns:
    """The structured null's subject: the trained model's ZS and ICL runs on `result`'s queries, and each method's
    delta learned on `null`'s demonstrations (another task), read through on the same queries."""
    model, episode = trained.model, result.episode
    deltas = {method: null.deltas[method].to(model.cfg.device, model.cfg.dtype) for method in result.methods}
    readings = {setting: trained.readings[setting] for setting in ("zs", "icl")}
    readings |= {
        method: read_points(model, Prompts.of(episode, episode.zs_prefix), POINTS, delta, batch_size)
        for method, delta in deltas.items()
    }
    return SubjectRuns(other_task_name(null.config["task"]), model, deltas, readings, {})
