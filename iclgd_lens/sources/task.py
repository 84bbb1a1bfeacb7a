"""A classification task: a prompt template, label words and labelled examples (every source builds one)."""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Example = dict[str, Any]  # the template's fields plus an int "label"


@dataclass(frozen=True)
class Task:
    """A classification task. `label_words[c]` is the answer for class c; the answer text is " " + label word."""

    name: str
    template: str
    label_words: tuple[str, ...]
    train: tuple[Example, ...]
    eval: tuple[Example, ...]
    eval_split: str = "eval"

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_words", tuple(self.label_words))
        object.__setattr__(self, "train", tuple(_normalise_rows(self.train, self, "train")))
        object.__setattr__(self, "eval", tuple(_normalise_rows(self.eval, self, "eval")))
        if len(set(self.label_words)) != len(self.label_words) or len(self.label_words) < 2:
            raise ValueError(f"task {self.name!r}: label_words {self.label_words} must be at least two distinct words")
        missing = [w for c, w in enumerate(self.label_words) if all(r["label"] != c for r in self.train)]
        if missing:
            raise ValueError(
                f"task {self.name!r}: label words {missing} are absent from the train data; "
                "check the label column or the label words"
            )

    @property
    def fields(self) -> tuple[str, ...]:
        return template_fields(self.template)

    def prompt(self, example: Example, raw: bool = False) -> str:
        """The query prompt, e.g. 'Sentence: a fine film Label:'. Whitespace inside the inputs is collapsed unless
        `raw` (the reference code's raw text: SST-2's trailing space and any newline stay)."""
        return self.template.format(**{f: str(example[f]) if raw else _clean(example[f]) for f in self.fields})


def template_fields(template: str) -> tuple[str, ...]:
    return tuple(f for _, f, _, _ in string.Formatter().parse(template) if f)


def _clean(value: Any) -> str:
    # Newlines and doubled spaces inside an input would blur the demonstration boundaries.
    return " ".join(str(value).split())


def _normalise_rows(rows: Sequence[Mapping[str, Any]], task: Task, split: str) -> list[Example]:
    fields = template_fields(task.template)
    if not fields:
        raise ValueError(f"task {task.name!r}: template {task.template!r} has no {{field}} placeholder")
    out = []
    for i, row in enumerate(rows):
        absent = [f for f in (*fields, "label") if f not in row]
        if absent:
            raise ValueError(
                f"task {task.name!r}, {split} row {i}: columns {absent} are missing (the row has "
                f"{sorted(row)}); the template {task.template!r} needs {list(fields)} and a 'label' column"
            )
        example = {f: row[f] for f in fields}
        example["label"] = _label_id(row["label"], task, split, i)
        out.append(example)
    if not out:
        raise ValueError(f"task {task.name!r}: the {split} split is empty; it needs labelled rows")
    return out


def _label_id(label: Any, task: Task, split: str, row: int) -> int:
    if isinstance(label, str) and not label.strip().lstrip("-").isdigit():
        if label not in task.label_words:
            raise ValueError(
                f"task {task.name!r}, {split} row {row}: label {label!r} is not one of the label words "
                f"{list(task.label_words)}; pass label_words that name every label in the data"
            )
        return task.label_words.index(label)
    label_id = int(label)
    if not 0 <= label_id < len(task.label_words):
        raise ValueError(
            f"task {task.name!r}, {split} row {row}: label id {label_id} has no label word "
            f"(label_words has {len(task.label_words)}: {list(task.label_words)})"
        )
    return label_id
