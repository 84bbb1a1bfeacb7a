"""The learning-rate search: scored on held-out train rows only, ties to the smaller lr, one-class GD never
chosen silently."""

import pytest

from iclgd_lens import CompareConfig, load_task
from iclgd_lens.core.episodes import demonstration_rows
from iclgd_lens.core.lr_search import choose_lr, heldout_task, search_lr
from iclgd_lens.sources.task import Task


def candidate(lr, accuracy, one_class=False, diverged=False):
    return {"lr": lr, "accuracy": accuracy, "one_class": one_class, "diverged": diverged}


def test_choice_ties_to_the_smaller_lr_and_avoids_one_class():
    assert choose_lr([candidate(0.3, 0.7), candidate(0.1, 0.7), candidate(0.2, 0.6)])["lr"] == 0.1
    # the most accurate candidate answers one class: it is passed over for one that does not
    assert choose_lr([candidate(0.3, 0.9, one_class=True), candidate(0.1, 0.6)])["lr"] == 0.1
    # every candidate answers one class: the best of them, and the search says so (chosen_one_class)
    assert choose_lr([candidate(0.3, 0.5, one_class=True), candidate(0.1, 0.4, one_class=True)])["lr"] == 0.3
    assert choose_lr([candidate(0.3, float("nan"), diverged=True), candidate(0.1, 0.2)])["lr"] == 0.1
    assert choose_lr([candidate(0.3, float("nan"), diverged=True)]) is None


def test_heldout_rows_are_train_rows_that_are_not_demonstrations():
    task = load_task("synth-sst2")
    held = heldout_task(task, 8, seed=3)
    demonstrated = [task.train[i] for i in demonstration_rows(len(task.train), 8, 3)]
    assert len(held.eval) == len(task.train) - 8 and held.eval_split == "heldout-train"
    assert all(row in task.train for row in held.eval) and not any(row in held.eval for row in demonstrated)
    with pytest.raises(ValueError, match="held-out train rows"):
        heldout_task(Task("t", task.template, task.label_words, task.train[:8], task.eval), 8, seed=3)


def test_search_never_reads_the_eval_set(tiny):
    task = load_task("synth-sst2")
    flipped = Task(
        task.name,
        task.template,
        task.label_words,
        task.train,
        [{**row, "label": 1 - row["label"]} for row in task.eval],
    )
    grid = (0.03, 0.3, 3.0)
    config = CompareConfig(k=8, seed=0, lr_grid=grid, n_heldout=24)
    first = search_lr(tiny, task, config)
    second = search_lr(tiny, flipped, config)
    assert first == second  # eval labels that would change any eval-scored choice change nothing
    assert first["n_heldout"] == 24 and [c["lr"] for c in first["candidates"]] == list(grid)
    chosen = [c for c in first["candidates"] if c["lr"] == first["chosen"]][0]
    assert chosen["accuracy"] == max(c["accuracy"] for c in first["candidates"] if not c["one_class"]) or all(
        c["one_class"] for c in first["candidates"]
    )
    assert first["chosen_one_class"] == chosen["one_class"]
