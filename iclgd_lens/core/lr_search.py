"""Learning-rate search for GD (or LCGD), scored on held-out train rows and never on the evaluation set.

Dai et al. choose each task's lr from a grid by finetuned accuracy. Here each candidate trains the method (GD or,
searched on its own, LCGD) on the run's own
demonstrations and is scored by accuracy on train rows that are not demonstrations; the evaluation split is not
read at all. Ties go to the smaller lr. A candidate whose GD answers one class for every held-out query (or whose
loss diverges) is reported as such and chosen only when every candidate is; the choice then says so.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from iclgd_lens.backend import LensModel
from iclgd_lens.core.accuracy import record_settings
from iclgd_lens.core.baselines import half_copy
from iclgd_lens.core.config import CompareConfig
from iclgd_lens.core.deltas import trained_parameters
from iclgd_lens.core.episodes import build_episode, demonstration_rows
from iclgd_lens.core.finetuning import fit
from iclgd_lens.core.methods import MethodContext
from iclgd_lens.core.metrics import accuracy
from iclgd_lens.core.scoring import majority
from iclgd_lens.sources.task import Task


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


def search_lr(model: LensModel, task: Task, config: CompareConfig, method: str = "gd") -> dict:
    """`method`'s accuracy (GD or LCGD) for every lr of `config.lr_grid`, trained on the run's demonstrations (the
    config's k, seed, permutation, choices, groups and biases) and scored on `config.n_heldout` held-out train rows;
    and the chosen lr.

    Returns {"chosen", "chosen_one_class", "n_heldout", "candidates": [{lr, accuracy, majority_class,
    majority_share, one_class, diverged}]}."""
    if not config.lr_grid:
        raise ValueError("the learning-rate grid is empty")
    precision = config.choices.precision
    if precision == "fp16-mixed" and model.cfg.dtype != torch.float16:
        model = half_copy(model)
    scored = replace(config, n_eval=config.n_heldout, label_control=None)
    episode = build_episode(heldout_task(task, config.k, config.seed), model.tokenizer, model.cfg.n_ctx, scored)
    labels = torch.tensor(episode.labels)
    parameters = trained_parameters(model, config.groups, config.biases)
    candidates = []
    for lr in sorted(set(config.lr_grid)):
        try:
            context = MethodContext(lr, parameters, precision=precision)
            delta = fit(model, episode.train_demos, episode.bos, context, method)
        except FloatingPointError:
            candidates.append(_candidate(lr, None, labels))
            continue
        settings = record_settings(
            model, episode, {method: delta}, prompts=(), position=config.choices.position, batch_size=config.batch_size
        )
        candidates.append(_candidate(lr, settings[method].pred, labels))
    chosen = choose_lr(candidates)
    return {
        "chosen": chosen["lr"] if chosen else None,
        "chosen_one_class": bool(chosen and chosen["one_class"]),
        "n_heldout": len(episode.queries),
        "candidates": candidates,
    }


def _candidate(lr: float, pred: Tensor | None, labels: Tensor) -> dict:
    """One lr's row of the search: its accuracy and majority class (`pred` None: the fit diverged)."""
    top = majority(pred) if pred is not None else {"class": None, "share": None}
    return {
        "lr": lr,
        "accuracy": accuracy(pred, labels) if pred is not None else float("nan"),
        "majority_class": top["class"],
        "majority_share": top["share"],
        "one_class": top["share"] == 1.0,
        "diverged": pred is None,
    }


def choose_lr(candidates: list[dict]) -> dict | None:
    """The most accurate candidate, ties to the smaller lr; one-class candidates only when every candidate is one.
    None when every candidate diverged."""
    finite = [c for c in candidates if not c["diverged"]]
    pool = [c for c in finite if not c["one_class"]] or finite
    if not pool:
        return None
    return min(pool, key=lambda c: (-c["accuracy"], c["lr"]))
