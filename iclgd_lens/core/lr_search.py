"""Learning-rate search for GD (or LCGD), scored on held-out train rows and never on the evaluation set.

Dai et al. choose each task's lr from a grid by finetuned accuracy. Here each candidate trains the method (GD or,
searched on its own, LCGD) on the run's own
demonstrations and is scored by accuracy on train rows that are not demonstrations; the evaluation split is not
read at all. Ties go to the smaller lr. A candidate whose GD answers one class for every held-out query (or whose
loss diverges) is reported as such and chosen only when every candidate is; the choice then says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from iclgd_lens.backend import LensModel
from iclgd_lens.core.accuracy import record_settings
from iclgd_lens.core.baselines import half_copy
from iclgd_lens.core.deltas import trained_parameters
from iclgd_lens.core.episodes import build_episode, demonstration_rows
from iclgd_lens.core.finetuning import fit
from iclgd_lens.core.metrics import accuracy
from iclgd_lens.core.presets import DEFAULT_GROUPS, Choices, resolve
from iclgd_lens.core.scoring import majority
from iclgd_lens.sources.task import Task

DEFAULT_HELDOUT = 128  # held-out train rows that score each candidate


def heldout_task(task: Task, k: int, seed: int) -> Task:
    """`task` with its evaluation split replaced by the train rows the run with `seed` does not demonstrate."""
    demonstrated = set(demonstration_rows(len(task.train), k, seed))
    heldout = [row for i, row in enumerate(task.train) if i not in demonstrated]
    if not heldout:
        raise ValueError(
            f"task {task.name!r}: all {len(task.train)} train rows are demonstrations at k={k}; the learning-rate "
            "search needs held-out train rows (lower k or give a number to --lr)"
        )
    return Task(task.name, task.template, task.label_words, task.train, heldout, eval_split="heldout-train")


def search_lr(
    model: LensModel,
    task: Task,
    grid: Sequence[float],
    k: int = 32,
    seed: int = 0,
    permutation: int = 0,
    *,
    choices: Choices | None = None,
    n_heldout: int = DEFAULT_HELDOUT,
    batch_size: int = 8,
    groups: Sequence[str] = DEFAULT_GROUPS,
    biases: str = "checkpoint",
    method: str = "gd",
) -> dict:
    """`method`'s accuracy (GD or LCGD) on held-out train rows for every lr of `grid`, and the chosen lr.

    Returns {"chosen", "chosen_one_class", "n_heldout", "candidates": [{lr, accuracy, majority_class,
    majority_share, one_class, diverged}]}."""
    if not grid:
        raise ValueError("the learning-rate grid is empty")
    choices = choices or resolve("toolkit")
    if choices.precision == "fp16-mixed" and model.cfg.dtype != torch.float16:
        model = half_copy(model)
    episode = build_episode(
        heldout_task(task, k, seed), model.tokenizer, model.cfg.n_ctx, k, seed, permutation, n_heldout, choices
    )
    labels = torch.tensor(episode.labels)
    parameters = trained_parameters(model, groups, biases)
    candidates = []
    for lr in sorted(set(grid)):
        try:
            delta = fit(model, episode.train_demos, episode.bos, method, lr, parameters, precision=choices.precision)
        except FloatingPointError:
            candidates.append(
                {
                    "lr": lr,
                    "accuracy": float("nan"),
                    "majority_class": None,
                    "majority_share": None,
                    "one_class": False,
                    "diverged": True,
                }
            )
            continue
        settings = record_settings(
            model, episode, {method: delta}, prompts=(), position=choices.position, batch_size=batch_size
        )
        recorded = settings[method]
        top = majority(recorded.pred)
        candidates.append(
            {
                "lr": lr,
                "accuracy": accuracy(recorded.pred, labels),
                "majority_class": top["class"],
                "majority_share": top["share"],
                "one_class": top["share"] == 1.0,
                "diverged": False,
            }
        )
    chosen = choose_lr(candidates)
    return {
        "chosen": chosen["lr"] if chosen else None,
        "chosen_one_class": bool(chosen and chosen["one_class"]),
        "n_heldout": len(episode.queries),
        "candidates": candidates,
    }


def choose_lr(candidates: list[dict]) -> dict | None:
    """The most accurate candidate, ties to the smaller lr; one-class candidates only when every candidate is one.
    None when every candidate diverged."""
    finite = [c for c in candidates if not c["diverged"]]
    pool = [c for c in finite if not c["one_class"]] or finite
    if not pool:
        return None
    return min(pool, key=lambda c: (-c["accuracy"], c["lr"]))
