"""Episode: every token id of one comparison, fixed once so that all settings see exactly the same inputs.

ICL prompt = [BOS] + (demonstration + separator) * k + query prompt, demonstration = prompt + " " + label word.
ZS prompt  = [BOS] + query prompt. GD/LCGD train on [BOS] + demonstration, one step per demonstration, on
`train_demos`: ICL's demonstrations in prompt order by default, all k in the reference's order under its preset.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iclgd_lens.core.config import CompareConfig
from iclgd_lens.core.presets import (
    LABEL_CONTROLS,
    REFERENCE_PERMUTATIONS,
    check_choice,
)
from iclgd_lens.sources.task import Task
from iclgd_lens.sources.tokenizers import special_tokens

Tokens = tuple[int, ...]
EVAL_SHUFFLE_SEED = 1  # docs/science.md: the evaluation set is shuffled with seed 1
LABEL_SHUFFLE_STREAM = 7  # the shuffled label control's permutation: numpy Generator seeded with [seed, 7]
DEFAULT_N_EVAL = 2000
# Hendel et al.'s dummy queries: this many undemonstrated train rows of each class, so that θ, their ICL streams'
# mean, carries no one dummy's answer (docs/science.md, "Task vectors").
DUMMIES_PER_CLASS = 4


@dataclass(frozen=True)
class Episode:
    """Every token id of one comparison (`build_episode` makes it): the demonstrations ICL shows and GD trains on,
    the queries, the label words' tokens and the rows each came from, fixed once so that all settings see the same
    inputs."""

    task: str
    bos: int
    separator: Tokens
    label_tokens: tuple[Tokens, ...]  # per class: tokens of " " + label word
    demos: tuple[Tokens, ...]  # per kept demonstration: prompt + label tokens (no BOS, no separator)
    demo_rows: tuple[int, ...]  # train-split row of each kept demonstration, in prompt order
    train_demos: tuple[Tokens, ...]  # what GD/LCGD train on, in training order (choices.gd_demos, choices.order)
    train_rows: tuple[int, ...]  # train-split row of each of those
    queries: tuple[Tokens, ...]  # per eval query: prompt tokens (no BOS)
    query_rows: tuple[int, ...]  # eval-split row of each query
    labels: tuple[int, ...]
    k: int  # requested number of demonstrations
    n_ctx: int
    demo_labels: tuple[int, ...] = ()  # the class each kept demonstration shows (its own, unless a label control)
    train_labels: tuple[int, ...] = ()  # likewise for GD's demonstrations
    label_control: str | None = None  # None (true labels), "shuffled" or "reversed"
    dummy_queries: tuple[Tokens, ...] = ()  # Hendel's dummy queries: undemonstrated train rows' prompts (no BOS)
    dummy_rows: tuple[int, ...] = ()  # train-split row of each
    dummy_labels: tuple[int, ...] = ()  # the class of each (they balance the classes; no prompt shows it)

    @property
    def effective_k(self) -> int:
        return len(self.demos)

    @property
    def icl_prefix(self) -> Tokens:
        prefix = [self.bos]
        for demo in self.demos:
            prefix += [*demo, *self.separator]
        return tuple(prefix)

    @property
    def zs_prefix(self) -> Tokens:
        return (self.bos,)

    def to_json(self) -> dict:
        return {**asdict(self), "effective_k": self.effective_k, "icl_prefix": list(self.icl_prefix)}

    @classmethod
    def from_json(cls, data: dict) -> Episode:
        # Results written before GD had its own demonstration list trained on ICL's.
        data = {"train_demos": data["demos"], "train_rows": data["demo_rows"]} | data
        fields = {f: data[f] for f in cls.__dataclass_fields__ if f in data}  # older results: no shown labels
        for name in (
            "separator",
            "demo_rows",
            "train_rows",
            "query_rows",
            "labels",
            "demo_labels",
            "train_labels",
            "dummy_rows",
            "dummy_labels",
        ):
            if name in fields:
                fields[name] = tuple(fields[name])
        for name in ("label_tokens", "demos", "train_demos", "queries", "dummy_queries"):
            if name in fields:
                fields[name] = tuple(tuple(t) for t in fields[name])
        return cls(**fields)

    def save(self, path: Path, record_positions: dict[str, list[int]] | None = None) -> None:
        data = self.to_json()
        if record_positions is not None:
            data["record_positions"] = record_positions
        path.write_text(json.dumps(data))


def check_k(task: Task, k: int) -> None:
    if k < 1 or k > len(task.train):
        raise ValueError(
            f"k={k} demonstrations requested but the train split has {len(task.train)}; use 1 <= k <= "
            f"{len(task.train)} (with k=0 ICL is ZS and there is no update to compare)"
        )


def demonstration_orders(rows: list[int], seed: int, permutation: int, order: str) -> tuple[list[int], list[int]]:
    """(ICL's order, GD's order) of the first-k shuffled train rows for permutation p.

    `toolkit`: p > 0 applies numpy.random.default_rng([seed, p]).permutation; GD trains in the prompt's order.
    `reference`: as each reference process does, np.random.seed(seed) then five permutation draws for ICL and, in
    the finetuning process (which builds the ICL data first), five more for GD: ICL uses draw p + 1, GD draw 6 + p.
    """
    if permutation == 0:
        return rows, rows
    if order == "toolkit":
        icl = [rows[i] for i in np.random.default_rng([seed, permutation]).permutation(len(rows))]
        return icl, icl
    legacy = np.random.RandomState(seed)  # the same stream as np.random.seed(seed), without global state
    draws = [legacy.permutation(len(rows)) for _ in range(2 * REFERENCE_PERMUTATIONS)]
    return [rows[i] for i in draws[permutation]], [rows[i] for i in draws[REFERENCE_PERMUTATIONS + permutation]]


def text_encoder(tokenizer, raw: bool, eos: int | None) -> Callable[[str], Tokens]:
    """Text -> token ids without special tokens. Raw text with newlines is encoded line by line (empty lines
    dropped) and the lines joined by the end-of-sequence token, as the reference code's fairseq encoder does."""

    def encode(text: str) -> Tokens:
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])

    if not raw:
        return encode

    def encode_lines(text: str) -> Tokens:
        lines = [line for line in text.splitlines() if line]
        if len(lines) <= 1:
            return encode(text)
        if eos is None:
            raise ValueError("raw text with newlines is joined by the end-of-sequence token; the tokenizer has none")
        joined: list[int] = []
        for line in lines:
            joined += [*encode(line), eos]
        return tuple(joined[:-1])

    return encode_lines


def keep_demonstrations(lengths: list[int], budget: int, truncation: str) -> list[int]:
    """Indices of the demonstrations (token lengths incl. separator) the context keeps after [BOS].

    `fit`: 1 + kept lengths <= budget, skipping each one that would overflow; `reference`: the reference's loop,
    1 + kept lengths + 2 <= budget (its strict test with BOS counted twice), stopping at the first overflow."""
    kept, used = [], 1
    limit = budget if truncation == "fit" else budget - 2
    for i, length in enumerate(lengths):
        if used + length <= limit:
            kept.append(i)
            used += length
        elif truncation == "reference":
            break
    return kept


def demonstration_rows(n_train: int, k: int, seed: int) -> list[int]:
    """The train rows a run with this seed demonstrates: the first k of a seeded shuffle."""
    return [int(i) for i in np.random.default_rng(seed).permutation(n_train)[:k]]


def dummy_rows(task: Task, k: int, seed: int, fits: Callable[[int], bool]) -> list[int]:
    """Hendel's dummy queries for a run with this seed: in the seeded shuffle's order past the k demonstrated rows,
    the first `DUMMIES_PER_CLASS` rows of each class whose prompt `fits` the context after the demonstrations."""
    taken: dict[int, list[int]] = {}
    for row in (int(i) for i in np.random.default_rng(seed).permutation(len(task.train))[k:]):
        label = task.train[row]["label"]
        if len(taken.setdefault(label, [])) < DUMMIES_PER_CLASS and fits(row):
            taken[label].append(row)
    return [row for label in sorted(taken) for row in taken[label]]


def shown_labels(labels: list[int], n_classes: int, seed: int, control: str | None) -> list[int]:
    """The labels the demonstrations show, in draw order: their own (`None`); a permutation of them seeded by the
    run's seed (`shuffled`: the label counts stay, each demonstration's pairing is broken); or class c named by the
    word of class n − 1 − c (`reversed`: a consistent mapping the model must learn from the prompt against the words'
    prior)."""
    if control is None:
        return list(labels)
    check_choice("label control", control, LABEL_CONTROLS)
    if control == "reversed":
        return [n_classes - 1 - label for label in labels]
    order = np.random.default_rng([seed, LABEL_SHUFFLE_STREAM]).permutation(len(labels))
    return [labels[i] for i in order]


def build_episode(task: Task, tokenizer, n_ctx: int, config: CompareConfig | None = None, **options: Any) -> Episode:
    """Every token id of one comparison of `task` for a model with this tokenizer and context (`n_ctx` tokens), as
    `config` says (a `CompareConfig`, or its fields by name: `build_episode(task, tok, 512, k=8, n_eval=10)`).

    The demonstrations are the first k of a seeded shuffle of train (reordered for permutation > 0), the queries
    eval shuffled with seed 1 and capped at n_eval. Demonstrations that would overflow the context are dropped from
    the ICL prompt (effective k) as `choices.truncation` says; GD trains on `choices.gd_demos`. With a
    `label_control` the demonstrations (ICL's and GD's alike) show `shown_labels` instead of their own; the queries
    and their labels are the same. Returns the `Episode`."""
    config = CompareConfig.build(config, **options) if options or config is None else config
    choices, k, seed, label_control = config.choices, config.k, config.seed, config.label_control
    check_k(task, k)
    bos, eos = special_tokens(tokenizer)
    encode = text_encoder(tokenizer, choices.text == "raw", eos)
    separator = _separator(choices.separator, encode, eos)
    label_tokens = _label_tokens(task, encode)
    raw = choices.text == "raw"

    def prompt(row: dict) -> Tokens:
        return encode(task.prompt(row, raw))

    icl_rows, gd_rows, shown, eval_rows = _drawn_rows(task, config)
    queries = tuple(prompt(task.eval[i]) for i in eval_rows)
    longest_row = _check_queries(queries, eval_rows, label_tokens, n_ctx)

    def demonstration(row: int) -> Tokens:
        return prompt(task.train[row]) + label_tokens[shown[row]]

    icl_demos = [demonstration(row) for row in icl_rows]
    longest_query = max(len(q) for q in queries)  # the prefix's budget leaves room for it, and for no longer dummy
    dummies = dummy_rows(task, k, seed, lambda row: len(prompt(task.train[row])) <= longest_query)
    # Every query must fit after the prefix: the budget leaves room for the longest query row.
    kept = keep_demonstrations(
        [len(d) + len(separator) for d in icl_demos], n_ctx - longest_row + 1, choices.truncation
    )
    if choices.gd_demos == "kept":
        gd_rows = [row for row in gd_rows if row in {icl_rows[i] for i in kept}]
    train_demos = tuple(demonstration(row) for row in gd_rows)
    _check_trainable(train_demos, gd_rows, n_ctx)
    return Episode(
        task=task.name,
        bos=bos,
        separator=separator,
        label_tokens=label_tokens,
        demos=tuple(icl_demos[i] for i in kept),
        demo_rows=tuple(icl_rows[i] for i in kept),
        train_demos=train_demos,
        train_rows=tuple(gd_rows),
        queries=queries,
        query_rows=tuple(eval_rows),
        labels=tuple(task.eval[i]["label"] for i in eval_rows),
        k=k,
        n_ctx=n_ctx,
        demo_labels=tuple(shown[icl_rows[i]] for i in kept),
        train_labels=tuple(shown[row] for row in gd_rows),
        label_control=label_control,
        dummy_queries=tuple(prompt(task.train[row]) for row in dummies),
        dummy_rows=tuple(dummies),
        dummy_labels=tuple(task.train[row]["label"] for row in dummies),
    )


def _separator(separator: str, encode: Callable[[str], Tokens], eos: int | None) -> Tokens:
    """The tokens between demonstrations: the tokenizer's end-of-sequence token (`eos`) or the encoded text."""
    if separator != "eos":
        return encode(separator)
    if eos is None:
        raise ValueError("the tokenizer has no end-of-sequence token; pass a text separator such as '\\n'")
    return (eos,)


def _label_tokens(task: Task, encode: Callable[[str], Tokens]) -> tuple[Tokens, ...]:
    """Per class, the tokens of " " + its label word; each nonempty and distinct."""
    label_tokens = tuple(encode(" " + word) for word in task.label_words)
    empty = [word for word, tokens in zip(task.label_words, label_tokens) if not tokens]
    if empty:
        raise ValueError(f"label words {empty} tokenise to nothing; choose label words the tokenizer can encode")
    if len(set(label_tokens)) != len(label_tokens):
        raise ValueError(f"label words {list(task.label_words)} tokenise identically; choose distinct label words")
    return label_tokens


def _check_queries(
    queries: tuple[Tokens, ...], eval_rows: list[int], label_tokens: tuple[Tokens, ...], n_ctx: int
) -> int:
    """Refuse an empty query prompt and a query that cannot fit the context with BOS and its longest label; returns
    the longest such row's length."""
    empty_queries = [eval_rows[i] for i, q in enumerate(queries) if not q]
    if empty_queries:
        raise ValueError(f"eval rows {empty_queries[:5]} give empty prompts; check the template and the data")
    longest_row = 1 + max(len(q) for q in queries) + max(len(t) for t in label_tokens)
    if longest_row > n_ctx:
        worst = max(range(len(queries)), key=lambda i: len(queries[i]))
        raise ValueError(
            f"eval query (row {eval_rows[worst]}) needs {longest_row} tokens with BOS and label but the model "
            f"context is {n_ctx}; use a model with a longer context or drop long examples from the eval data"
        )
    return longest_row


def _check_trainable(train_demos: tuple[Tokens, ...], rows: list[int], n_ctx: int) -> None:
    """Refuse a demonstration GD must train on that does not fit the context even alone, after BOS."""
    too_long = [row for row, demo in zip(rows, train_demos) if 1 + len(demo) > n_ctx]
    if too_long:
        raise ValueError(
            f"train rows {too_long[:5]} do not fit the {n_ctx}-token context even alone, so GD cannot train on them; "
            "use gd_demos='kept' (--gd-demos kept) or drop long examples from the train data"
        )


def _drawn_rows(task: Task, config: CompareConfig) -> tuple[list[int], list[int], dict[int, int], list[int]]:
    """The train rows ICL shows and GD trains on (each in its order), the class each demonstrated row shows, and
    the evaluation rows."""
    shuffled = demonstration_rows(len(task.train), config.k, config.seed)
    labels = [task.train[row]["label"] for row in shuffled]
    shown = dict(zip(shuffled, shown_labels(labels, len(task.label_words), config.seed, config.label_control)))
    icl_rows, gd_rows = demonstration_orders(shuffled, config.seed, config.permutation, config.choices.order)
    n_eval = DEFAULT_N_EVAL if config.n_eval is None else config.n_eval
    eval_rows = [int(i) for i in np.random.default_rng(EVAL_SHUFFLE_SEED).permutation(len(task.eval))[:n_eval]]
    return icl_rows, gd_rows, shown, eval_rows
