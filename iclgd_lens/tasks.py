"""Classification tasks: a prompt template, label words and labelled examples.

The six tasks of the papers load from the Hugging Face hub with `datasets` (real code for users who have the
hub), from local files (csv/json/jsonl/parquet), or are built directly as custom tasks.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from iclgd_lens.errors import error_summary

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


@dataclass(frozen=True)
class HubTaskSpec:
    """Where one of the papers' tasks lives on the hub and how it is prompted (docs/science.md, "Tasks")."""

    path: str
    config: str | None
    train_split: str
    eval_split: str
    template: str
    label_words: tuple[str, ...]
    columns: Mapping[str, str] = field(default_factory=dict)  # template field -> dataset column


# The papers name glue/sst2, rotten_tomatoes, ag_news and super_glue/cb: these are their current hub ids.
HUB_TASKS: dict[str, HubTaskSpec] = {
    "sst2": HubTaskSpec(
        "nyu-mll/glue", "sst2", "train", "validation", "Sentence: {sentence} Label:", ("Negative", "Positive")
    ),
    "sst5": HubTaskSpec(
        "SetFit/sst5",
        None,
        "train",
        "validation",
        "Sentence: {text} Label:",
        ("terrible", "bad", "neutral", "good", "great"),
    ),
    "mr": HubTaskSpec(
        "cornell-movie-review-data/rotten_tomatoes",
        None,
        "train",
        "validation",
        "Review: {text} Sentiment:",
        ("Negative", "Positive"),
    ),
    "subj": HubTaskSpec("SetFit/subj", None, "train", "test", "Input: {text} Type:", ("objective", "subjective")),
    "agnews": HubTaskSpec(
        "fancyzhx/ag_news",
        None,
        "train",
        "test",
        "Classify the news articles into the categories of World, Sports, Business, and Technology. "
        "Article: {text} Answer:",
        ("World", "Sports", "Business", "Technology"),
    ),
    "cb": HubTaskSpec(
        "aps/super_glue",
        "cb",
        "train",
        "validation",
        "{premise} Question: {hypothesis}. True, False, or Neither? Answer:",
        ("True", "False", "Neither"),
    ),
}

LOCAL_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SPLIT_ALIASES = {"train": "train", "eval": "eval", "validation": "eval", "test": "eval"}


def available_tasks() -> list[str]:
    from iclgd_lens.packaged_tasks import PACKAGED_TASKS
    from iclgd_lens.synthetic import SYNTHETIC_TASKS

    return sorted(HUB_TASKS) + sorted(PACKAGED_TASKS) + sorted(SYNTHETIC_TASKS)


def load_task(
    name: str,
    data_files: Mapping[str, str | Path] | None = None,
    *,
    template: str | None = None,
    label_words: Sequence[str] | None = None,
) -> Task:
    """Load a task by name.

    - `"sst2"`, `"sst5"`, `"mr"`, `"subj"`, `"agnews"`, `"cb"`: from the hub, or from local files when
      `data_files={"train": path, "eval": path}` is given (columns named as in the hub dataset);
    - `"rt-snippets"`, `"bbc-headlines"`, `"trec"`: real data shipped in installed packages (offline;
      docs/tasks.md);
    - `"synth-*"`: the bundled synthetic tasks (offline);
    - any other name with `data_files`, `template` and `label_words`: a custom task from local files.
    """
    from iclgd_lens.packaged_tasks import PACKAGED_TASKS, packaged_task
    from iclgd_lens.synthetic import SYNTHETIC_TASKS, synthetic_task

    if name in SYNTHETIC_TASKS and data_files is None:
        return synthetic_task(name)
    if name in PACKAGED_TASKS and data_files is None:
        return packaged_task(name)
    spec = HUB_TASKS.get(name)
    if spec is None and (data_files is None or template is None or label_words is None):
        raise ValueError(
            f"unknown task {name!r}; valid tasks: {available_tasks()}, or a custom task from local files "
            "(pass data_files, template and label_words)"
        )
    template = template or spec.template
    label_words = tuple(label_words or spec.label_words)
    columns = dict(spec.columns) if spec else {}
    if data_files is not None:
        splits = _load_local_splits(name, data_files)
        eval_split = "eval"
    else:
        splits = _load_hub_splits(name, spec)
        eval_split = spec.eval_split
    return Task(
        name=name,
        template=template,
        label_words=label_words,
        train=_rename(splits["train"], columns),
        eval=_rename(splits["eval"], columns),
        eval_split=eval_split,
    )


def _rename(rows: list[Example], columns: Mapping[str, str]) -> list[Example]:
    if not columns:
        return rows
    return [{**row, **{f: row[c] for f, c in columns.items() if c in row}} for row in rows]


def _local_split_names(name: str, data_files: Mapping[str, str | Path]) -> dict[str, Path]:
    """{"train": path, "eval": path}; the evaluation split may also be named after the hub's `validation`/`test`."""
    unknown = sorted(set(data_files) - set(SPLIT_ALIASES))
    evals = [split for split in data_files if SPLIT_ALIASES.get(split) == "eval"]
    if unknown or "train" not in data_files or len(evals) != 1:
        raise ValueError(
            f"task {name!r}: data_files needs a 'train' file and one evaluation file ('eval', 'validation' or "
            f"'test'), got {sorted(data_files)}"
        )
    return {"train": Path(data_files["train"]), "eval": Path(data_files[evals[0]])}


def _load_local_splits(name: str, data_files: Mapping[str, str | Path]) -> dict[str, list[Example]]:
    import datasets

    splits = {}
    for split, path in _local_split_names(name, data_files).items():
        if not path.is_file():
            raise FileNotFoundError(f"task {name!r}: {split} file {str(path)!r} does not exist; check the path")
        fmt = LOCAL_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"task {name!r}: cannot read {str(path)!r}; use one of {sorted(LOCAL_FORMATS)} files")
        if path.stat().st_size == 0:
            raise ValueError(f"task {name!r}: the {split} file {str(path)!r} is empty; it needs labelled rows")
        try:
            dataset = datasets.load_dataset(fmt, data_files={split: str(path)}, split=split)
        except Exception as error:  # a user's file: any failure to parse it is reported as unreadable
            raise ValueError(
                f"task {name!r}: cannot read {split} file {str(path)!r} as {path.suffix} "
                f"({error_summary(error)}); check that it is valid {path.suffix}"
            ) from error
        splits[split] = [dict(row) for row in dataset]
    return splits


def _load_hub_splits(name: str, spec: HubTaskSpec) -> dict[str, list[Example]]:
    import datasets

    try:
        dataset = datasets.load_dataset(spec.path, spec.config)
    except Exception as error:  # the hub: offline, unknown, or refused
        raise ValueError(
            f"task {name!r} could not be loaded from the Hugging Face hub ({spec.path}; {error_summary(error)}); "
            "offline, give local files: --data-files train=PATH eval=PATH "
            f"(load_task({name!r}, {{'train': ..., 'eval': ...}})), or use a synthetic task"
        ) from error
    return {
        "train": [dict(row) for row in dataset[spec.train_split]],
        "eval": [dict(row) for row in dataset[spec.eval_split]],
    }

