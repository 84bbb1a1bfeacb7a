"""The papers' six tasks from the Hugging Face hub (real code for users who have the hub), and any task from local
csv/json/jsonl/parquet files (the papers' tasks with their hub columns, or a custom template and label words).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from iclgd_lens.errors import error_summary
from iclgd_lens.sources.task import Example, Task


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


def hub_or_file_task(
    name: str,
    data_files: Mapping[str, str | Path] | None,
    template: str | None = None,
    label_words: Sequence[str] | None = None,
) -> Task:
    """One of the papers' tasks from the hub, or from local files when `data_files={"train": path, "eval": path}`
    is given (columns named as in the hub dataset); any other name from local files with `template` and
    `label_words` (a custom task)."""
    spec = HUB_TASKS.get(name)
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
