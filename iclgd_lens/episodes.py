"""Episode: every token id of one comparison, fixed once so that all settings see exactly the same inputs.

ICL prompt = [BOS] + (demonstration + separator) * k + query prompt, demonstration = prompt + " " + label word.
ZS prompt  = [BOS] + query prompt. GD/LCGD train on [BOS] + demonstration, one step per demonstration.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from iclgd_lens.tasks import Task

Tokens = tuple[int, ...]
EVAL_SHUFFLE_SEED = 1  # PAPERS.md: the evaluation set is shuffled with seed 1
DEFAULT_N_EVAL = 2000


@dataclass(frozen=True)
class Episode:
    task: str
    bos: int
    separator: Tokens
    label_tokens: tuple[Tokens, ...]  # per class: tokens of " " + label word
    demos: tuple[Tokens, ...]  # per kept demonstration: prompt + label tokens (no BOS, no separator)
    demo_rows: tuple[int, ...]  # train-split row of each kept demonstration, in prompt order
    queries: tuple[Tokens, ...]  # per eval query: prompt tokens (no BOS)
    query_rows: tuple[int, ...]  # eval-split row of each query
    labels: tuple[int, ...]
    k: int  # requested number of demonstrations
    n_ctx: int

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
    def from_json(cls, data: dict) -> "Episode":
        fields = {f: data[f] for f in cls.__dataclass_fields__}
        for name in ("separator", "demo_rows", "query_rows", "labels"):
            fields[name] = tuple(fields[name])
        for name in ("label_tokens", "demos", "queries"):
            fields[name] = tuple(tuple(t) for t in fields[name])
        return cls(**fields)

    def save(self, path: Path, record_positions: dict[str, list[int]] | None = None) -> None:
        data = self.to_json()
        if record_positions is not None:
            data["record_positions"] = record_positions
        path.write_text(json.dumps(data))


def check_k(task: Task, k: int) -> None:
    if k < 0 or k > len(task.train):
        raise ValueError(
            f"k={k} demonstrations requested but the train split has {len(task.train)}; use k <= {len(task.train)}"
        )


def build_episode(
    task: Task,
    tokenizer,
    n_ctx: int,
    k: int = 32,
    seed: int = 0,
    permutation: int = 0,
    n_eval: int | None = None,
    separator: str = "eos",
) -> Episode:
    """Tokenise the demonstrations (first k of a seeded shuffle of train) and the queries (eval, shuffled with
    seed 1, capped at n_eval). Demonstrations that would overflow the context are dropped (effective k)."""
    check_k(task, k)
    if permutation < 0:
        raise ValueError(f"permutation must be >= 0 (0 keeps the shuffled order), got {permutation}")
    n_eval = DEFAULT_N_EVAL if n_eval is None else n_eval
    if n_eval < 1:
        raise ValueError(f"n_eval must be >= 1, got {n_eval}")

    def encode(text: str) -> Tokens:
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])

    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if separator == "eos":
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no end-of-sequence token; pass a text separator such as '\\n'")
        separator_tokens: Tokens = (tokenizer.eos_token_id,)
    else:
        separator_tokens = encode(separator)
    label_tokens = tuple(encode(" " + word) for word in task.label_words)
    if len(set(label_tokens)) != len(label_tokens):
        raise ValueError(f"label words {list(task.label_words)} tokenise identically; choose distinct label words")

    demo_rows = [int(i) for i in np.random.default_rng(seed).permutation(len(task.train))[:k]]
    if permutation > 0:
        demo_rows = [demo_rows[i] for i in np.random.default_rng([seed, permutation]).permutation(len(demo_rows))]
    eval_rows = [int(i) for i in np.random.default_rng(EVAL_SHUFFLE_SEED).permutation(len(task.eval))[:n_eval]]

    queries = tuple(encode(task.prompt(task.eval[i])) for i in eval_rows)
    longest_row = 1 + max(len(q) for q in queries) + max(len(t) for t in label_tokens)
    if longest_row > n_ctx:
        worst = max(range(len(queries)), key=lambda i: len(queries[i]))
        raise ValueError(
            f"eval query (row {eval_rows[worst]}) needs {longest_row} tokens with BOS and label but the model "
            f"context is {n_ctx}; use a model with a longer context or drop long examples from the eval data"
        )
    # Every query must fit after the prefix: keep demonstrations in order while they fit, drop the rest.
    budget = n_ctx - longest_row + 1  # the BOS is counted in the prefix
    demos, kept_rows, used = [], [], 1
    for row in demo_rows:
        example = task.train[row]
        demo = encode(task.prompt(example)) + label_tokens[example["label"]]
        if used + len(demo) + len(separator_tokens) <= budget:
            demos.append(demo)
            kept_rows.append(row)
            used += len(demo) + len(separator_tokens)
    return Episode(
        task=task.name,
        bos=bos,
        separator=separator_tokens,
        label_tokens=label_tokens,
        demos=tuple(demos),
        demo_rows=tuple(kept_rows),
        queries=queries,
        query_rows=tuple(eval_rows),
        labels=tuple(task.eval[i]["label"] for i in eval_rows),
        k=k,
        n_ctx=n_ctx,
    )
