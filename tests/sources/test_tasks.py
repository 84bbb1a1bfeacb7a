"""Tasks from local files, custom definitions and the hub (a stand-in for it)."""

import json

import pytest

from iclgd_lens.sources import load_task
from iclgd_lens.sources.hub_tasks import HUB_TASKS
from iclgd_lens.sources.task import Task
from tests.helpers import toy_rows


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_papers_task_from_local_files_uses_its_template_and_labels(tmp_path):
    rows = [{"sentence": r["sentence"], "label": r["label"], "idx": i} for i, r in enumerate(toy_rows(20, 0))]
    files = {
        "train": write_jsonl(tmp_path / "train.jsonl", rows),
        "eval": write_jsonl(tmp_path / "eval.jsonl", rows[:5]),
    }
    task = load_task("sst2", files)
    assert task.template == "Sentence: {sentence} Label:" and task.label_words == ("Negative", "Positive")
    assert task.prompt(task.train[0]) == f"Sentence: {rows[0]['sentence']} Label:"
    assert len(task.eval) == 5


def test_every_format_and_string_labels(tmp_path):
    import pandas as pd

    rows = [{"text": r["sentence"], "label": ["bad", "good"][r["label"]]} for r in toy_rows(12, 0)]
    frame = pd.DataFrame(rows)
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    (tmp_path / "t.json").write_text(json.dumps(rows))
    for suffix in ("csv", "parquet", "json"):
        path = tmp_path / f"t.{suffix}"
        task = load_task(
            "mine", {"train": path, "eval": path}, template="Text: {text} Verdict:", label_words=["bad", "good"]
        )
        assert [r["label"] for r in task.train] == [["bad", "good"].index(r["label"]) for r in rows]


def test_custom_task_in_python():
    task = Task(
        "custom",
        "Q: {q} A:",
        ["no", "yes"],
        [{"q": "is it", "label": 1}, {"q": "not", "label": 0}],
        [{"q": "x", "label": 0}],
    )
    assert task.prompt({"q": "line\nbreak  here"}) == "Q: line break here A:"


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda p: load_task("sst9"),
            r"unknown task 'sst9'; valid tasks: \['agnews', 'cb', 'mr', 'sst2', 'sst5', 'subj'",
        ),
        (lambda p: load_task("sst2", {"train": p / "missing.csv", "eval": p / "missing.csv"}), "does not exist"),
        (lambda p: load_task("sst2", {"train": p / "rows.jsonl"}), "a 'train' file and one evaluation file"),
        (
            lambda p: load_task("mr", {"train": p / "rows.jsonl", "eval": p / "rows.jsonl"}),
            r"columns \['text'\] are missing",
        ),
        (
            lambda p: load_task(
                "x",
                {"train": p / "rows.jsonl", "eval": p / "rows.jsonl"},
                template="{sentence}",
                label_words=["a", "b", "c"],
            ),
            r"label words \['c'\] are absent from the train data",
        ),
        (
            lambda p: load_task(
                "x",
                {"train": p / "strings.jsonl", "eval": p / "strings.jsonl"},
                template="{sentence}",
                label_words=["neg", "pos"],
            ),
            "label 'positive' is not one of the label words",
        ),
    ],
    ids=[
        "unknown-task",
        "missing-file",
        "missing-split",
        "missing-column",
        "absent-label-word",
        "unknown-string-label",
    ],
)
def test_bad_task_input_is_refused_clearly(tmp_path, call, message):
    write_jsonl(tmp_path / "rows.jsonl", toy_rows(10, 0))
    write_jsonl(tmp_path / "strings.jsonl", [{"sentence": "a", "label": "positive"}])
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        call(tmp_path)


def test_hub_tasks_match_the_papers():
    assert HUB_TASKS["cb"].template == "{premise} Question: {hypothesis}. True, False, or Neither? Answer:"
    assert HUB_TASKS["agnews"].label_words == ("World", "Sports", "Business", "Technology")
    assert HUB_TASKS["subj"].eval_split == "test" and HUB_TASKS["sst5"].label_words[0] == "terrible"


def test_hub_loading_path_with_a_stand_in_for_the_hub(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, config):
        calls.append((path, config))
        rows = [{"premise": f"p {i}", "hypothesis": f"h {i}", "label": i % 3, "idx": i} for i in range(9)]
        split = datasets.Dataset.from_list(rows)
        return datasets.DatasetDict({"train": split, "validation": split.select(range(4))})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = load_task("cb")
    assert calls == [("aps/super_glue", "cb")]
    assert task.eval_split == "validation" and len(task.eval) == 4
    assert task.prompt(task.train[1]) == "p 1 Question: h 1. True, False, or Neither? Answer:"
