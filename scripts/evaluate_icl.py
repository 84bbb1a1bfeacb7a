"""Zero-shot vs in-context accuracy of a model on tasks' eval sets (the model cards' tables).

    python scripts/evaluate_icl.py                        # the shipped tiny-icl, synthetic tasks, k = 32
    python scripts/evaluate_icl.py --n-queries 100 --write-card
    python scripts/evaluate_icl.py --model smollm2-135m --separator '\n' --n-queries 100 \
        --tasks synth-sst2 rt-snippets --card docs/models.md

ZS: [BOS] + query prompt. ICL: [BOS] + k demonstrations (prompt + " " + label word, each followed by the
separator: EOS unless --separator) + query prompt. The toolkit's own protocol (iclgd_lens.build_episode / record):
demonstrations are the first k of a
seeded shuffle of train, those that would overflow the context are dropped, the eval set is shuffled with seed 1
and capped at --n-queries. Prediction: the label word with the highest log-probability after the prompt.

The "reversed" columns repeat ZS and ICL with the label words in reverse order (class c is named by the word of
class n - 1 - c, in the demonstrations and in the scoring). A model that learns the mapping from its
demonstrations scores as high with it; a zero-shot tilt towards the usual mapping scores 100 - ZS on binary tasks.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iclgd_lens import (  # noqa: E402
    CompareConfig,
    MethodContext,
    build_episode,
    episode_accuracy,
    fit,
    load_model,
    load_task,
    separator_text,  # noqa: E402
)
from iclgd_lens.sources import SYNTHETIC_TASKS, TINY_ICL_DIR, Task  # noqa: E402

CARD_START, CARD_END = "<!-- accuracy-table -->", "<!-- /accuracy-table -->"


@dataclass
class TaskScore:
    task: str
    k: int  # effective number of demonstrations
    n: int
    zs: float
    icl: float
    zs_reversed: float  # label words in reverse order (see the module docstring)
    icl_reversed: float


def evaluate_task(
    model: torch.nn.Module,
    task: Task,
    k: int = 32,
    seed: int = 0,
    n_queries: int | None = None,
    batch_size: int = 32,
    config: CompareConfig | None = None,
) -> TaskScore:
    """ZS and ICL accuracy through the toolkit's own episode and recording (the papers' protocol), with the task's
    label words and with them reversed."""
    scores = []
    config = replace(config or CompareConfig(), k=k, seed=seed, n_eval=n_queries or len(task.eval))
    choices = config.choices
    for words in (task.label_words, task.label_words[::-1]):
        episode = build_episode(replace(task, label_words=words), model.tokenizer, model.cfg.n_ctx, config)
        accuracy = episode_accuracy(model, episode, position=choices.position, batch_size=batch_size)
        scores += [accuracy["zs"], accuracy["icl"]]
    return TaskScore(task.name, episode.effective_k, len(episode.queries), *scores)


def evaluate(model, tasks=SYNTHETIC_TASKS, k=32, seed=0, n_queries=None, config=None) -> list[TaskScore]:
    return [evaluate_task(model, load_task(name), k, seed, n_queries, config=config) for name in tasks]


def gd_zs_accuracy(
    model: torch.nn.Module, task: Task, lr: float, k: int = 32, seed: int = 0, n_queries: int | None = None
) -> float:
    """ZS accuracy after the papers' GD (plain SGD on every layer's K/V over the k demonstrations)."""
    episode = build_episode(task, model.tokenizer, model.cfg.n_ctx, k=k, seed=seed, n_eval=n_queries or len(task.eval))
    delta = fit(model, episode.train_demos, episode.bos, MethodContext(lr))
    return episode_accuracy(model, episode, {"gd": delta}, prompts=())["gd"]


def table(scores: list[TaskScore]) -> str:
    lines = [
        "| task | k (effective) | eval queries | ZS acc | ICL acc | ICL - ZS | ZS, reversed words "
        "| ICL, reversed words |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [(s.task, s.k, s.n, s.zs, s.icl, s.zs_reversed, s.icl_reversed) for s in scores]
    rows.append(("mean", "", "", *(sum(r[i] for r in rows) / len(rows) for i in range(3, 7))))
    for task, k, n, zs, icl, zs_reversed, icl_reversed in rows:
        lines.append(
            f"| {task} | {k} | {n} | {100 * zs:.1f} | {100 * icl:.1f} | {100 * (icl - zs):+.1f} | "
            f"{100 * zs_reversed:.1f} | {100 * icl_reversed:.1f} |"
        )
    return "\n".join(lines)


def replace_card_table(card: str, new_table: str) -> str:
    block = f"{CARD_START}\n{new_table}\n{CARD_END}"
    if CARD_START in card:
        return re.sub(re.escape(CARD_START) + ".*?" + re.escape(CARD_END), lambda _: block, card, flags=re.S)
    return card.rstrip("\n") + "\n\n" + block + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(TINY_ICL_DIR), help="any model load_model takes")
    parser.add_argument("--tasks", nargs="+", default=list(SYNTHETIC_TASKS))
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="demonstration shuffle seed")
    parser.add_argument("--separator", type=separator_text, default="eos", help="between demonstrations")
    parser.add_argument("--n-queries", type=int, default=None, help="eval queries per task (default: all)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--gd-lrs",
        type=float,
        nargs="*",
        default=[],
        help="also report ZS accuracy after SGD on the K/V weights over the demonstrations",
    )
    parser.add_argument("--write-card", action="store_true", help="rewrite the accuracy table in --card")
    parser.add_argument("--card", default=None, help="the card to rewrite (default: the model folder's MODEL_CARD.md)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    scores = evaluate(model, args.tasks, args.k, args.seed, args.n_queries, CompareConfig(separator=args.separator))
    text = table(scores)
    print(text)
    for score in scores:
        if args.gd_lrs:
            task = load_task(score.task)
            gd = {lr: gd_zs_accuracy(model, task, lr, args.k, args.seed, args.n_queries) for lr in args.gd_lrs}
            print(
                f"{score.task}: ZS {100 * score.zs:.1f}; GD (K/V SGD) ZS by lr: "
                + ", ".join(f"{lr:g}: {100 * a:.1f}" for lr, a in gd.items()),
                flush=True,
            )
    if args.write_card:
        card_path = Path(args.card) if args.card else Path(args.model) / "MODEL_CARD.md"
        card = card_path.read_text() if card_path.is_file() else ""
        card_path.write_text(replace_card_table(card, text))
        print(f"wrote {card_path}")


if __name__ == "__main__":
    main()
