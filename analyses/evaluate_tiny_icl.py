"""Zero-shot vs in-context accuracy of a bundled model on the synthetic tasks' eval sets.

    python analyses/evaluate_tiny_icl.py                        # the shipped tiny-icl, k = 32, every eval query
    python analyses/evaluate_tiny_icl.py --n-queries 100 --write-card

ZS: [BOS] + query prompt. ICL: [BOS] + k demonstrations (prompt + " " + label word, each followed by EOS) +
query prompt; the demonstrations are the first k train examples after a seeded shuffle, and those that would
not fit the context (with the longest query) are dropped. Prediction: the label word with the highest
log-probability after the prompt. The demonstration prefix is run once and its keys/values reused (frozen
TransformerLens key-value cache) for every query batch.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformer_lens import HookedTransformer  # noqa: E402
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache  # noqa: E402

from iclgd_lens.synthetic import SYNTHETIC_TASKS, synthetic_task  # noqa: E402
from iclgd_lens.tasks import Task  # noqa: E402
from iclgd_lens.tiny_model import TINY_ICL_DIR, load_bundled  # noqa: E402

CARD_START, CARD_END = "<!-- accuracy-table -->", "<!-- /accuracy-table -->"


@dataclass
class TaskScore:
    task: str
    k: int  # effective number of demonstrations
    n: int
    zs: float
    icl: float


def label_token_ids(tokenizer, task: Task) -> list[int]:
    ids = []
    for word in task.label_words:
        encoded = tokenizer.encode(" " + word, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"label word {word!r} of {task.name!r} is {len(encoded)} tokens, expected one")
        ids.append(encoded[0])
    return ids


def demonstrations(task: Task, k: int, seed: int) -> list[dict]:
    """The first k train examples after a seeded shuffle."""
    order = list(range(len(task.train)))
    random.Random(seed).shuffle(order)
    return [task.train[i] for i in order[:k]]


def icl_prefix(tokenizer, task: Task, demos: list[dict], budget: int) -> list[int]:
    """[BOS] + demonstrations (each followed by EOS), keeping those that fit in `budget` tokens."""
    prefix = [tokenizer.bos_token_id]
    for demo in demos:
        ids = tokenizer.encode(f"{task.prompt(demo)} {task.label_words[demo['label']]}", add_special_tokens=False)
        if len(prefix) + len(ids) + 1 > budget:
            break
        prefix += ids + [tokenizer.eos_token_id]
    return prefix


@torch.no_grad()
def label_logprobs(
    model: HookedTransformer, queries: list[list[int]], label_ids: list[int], prefix: list[int],
    batch_size: int = 32,
) -> torch.Tensor:
    """[n_queries, n_labels] log-probs of each label word after prefix + query (right padding, no mask needed)."""
    device = model.cfg.device
    cache = None
    if prefix:
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, batch_size=1)
        prefix_tokens = torch.tensor([prefix], device=device)
        # An explicit mask: TransformerLens would otherwise mask every pad-id (= EOS separator) token.
        model(prefix_tokens, past_kv_cache=cache, attention_mask=torch.ones_like(prefix_tokens), return_type=None)
    out = []
    for start in range(0, len(queries), batch_size):
        batch = queries[start:start + batch_size]
        lengths = torch.tensor([len(q) for q in batch], device=device)
        tokens = torch.full((len(batch), int(lengths.max())), model.tokenizer.pad_token_id, device=device)
        for i, q in enumerate(batch):
            tokens[i, : len(q)] = torch.tensor(q, device=device)
        kwargs = {}
        if cache is not None:
            kwargs["past_kv_cache"] = _expanded(cache, len(batch))
            kwargs["attention_mask"] = torch.ones_like(tokens)
        logits = model(tokens, **kwargs)
        last = logits[torch.arange(len(batch), device=device), lengths - 1].float().log_softmax(-1)
        out.append(last[:, label_ids].cpu())
    return torch.cat(out)


def _expanded(cache: TransformerLensKeyValueCache, batch: int) -> TransformerLensKeyValueCache:
    """A frozen copy of a batch-1 prefix cache, broadcast to `batch` rows."""
    return TransformerLensKeyValueCache(
        entries=[type(e)(past_keys=e.past_keys.expand(batch, -1, -1, -1),
                         past_values=e.past_values.expand(batch, -1, -1, -1), frozen=True) for e in cache.entries],
        previous_attention_mask=cache.previous_attention_mask.expand(batch, -1),
        frozen=True,
    )


def evaluate_task(
    model: HookedTransformer, task: Task, k: int = 32, seed: int = 0, n_queries: int | None = None,
    batch_size: int = 32,
) -> TaskScore:
    tok = model.tokenizer
    rows = list(task.eval[:n_queries] if n_queries else task.eval)
    labels = torch.tensor([r["label"] for r in rows])
    label_ids = label_token_ids(tok, task)
    queries = [tok.encode(task.prompt(r), add_special_tokens=False) for r in rows]
    zs = label_logprobs(model, [[tok.bos_token_id] + q for q in queries], label_ids, [], batch_size)
    prefix = icl_prefix(tok, task, demonstrations(task, k, seed), model.cfg.n_ctx - max(map(len, queries)))
    icl = label_logprobs(model, queries, label_ids, prefix, batch_size)
    return TaskScore(
        task=task.name, k=prefix.count(tok.eos_token_id) - 1, n=len(rows),  # BOS = EOS
        zs=(zs.argmax(-1) == labels).float().mean().item(), icl=(icl.argmax(-1) == labels).float().mean().item(),
    )


def evaluate(model, tasks=SYNTHETIC_TASKS, k=32, seed=0, n_queries=None, data_seed=0) -> list[TaskScore]:
    return [evaluate_task(model, synthetic_task(name, seed=data_seed), k, seed, n_queries) for name in tasks]


def gd_zs_accuracy(model: HookedTransformer, task: Task, lr: float, k: int = 32, seed: int = 0,
                   n_queries: int | None = None) -> float:
    """ZS accuracy after plain SGD on every layer's W_K, b_K, W_V, b_V over the k demonstrations (a rough check of
    the papers' GD setting: batch 1, one epoch, demonstration order, mean NLL over [BOS] + input + label)."""
    import copy

    tok = model.tokenizer
    tuned = copy.deepcopy(model)
    params = [p for n, p in tuned.named_parameters() if n.split(".")[-1] in ("W_K", "b_K", "W_V", "b_V")]
    for p in tuned.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=lr)
    for demo in demonstrations(task, k, seed):
        ids = [tok.bos_token_id] + tok.encode(f"{task.prompt(demo)} {task.label_words[demo['label']]}")
        tokens = torch.tensor([ids], device=model.cfg.device)
        loss = tuned(tokens, return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
    tuned.eval()
    rows = list(task.eval[:n_queries] if n_queries else task.eval)
    queries = [[tok.bos_token_id] + tok.encode(task.prompt(r)) for r in rows]
    scores = label_logprobs(tuned, queries, label_token_ids(tok, task), [])
    labels = torch.tensor([r["label"] for r in rows])
    return (scores.argmax(-1) == labels).float().mean().item()


def table(scores: list[TaskScore]) -> str:
    lines = ["| task | k (effective) | eval queries | ZS acc | ICL acc | ICL - ZS |", "|---|---|---|---|---|---|"]
    for s in scores:
        lines.append(f"| {s.task} | {s.k} | {s.n} | {100 * s.zs:.1f} | {100 * s.icl:.1f} | {100 * (s.icl - s.zs):+.1f} |")
    mean_zs = sum(s.zs for s in scores) / len(scores)
    mean_icl = sum(s.icl for s in scores) / len(scores)
    lines.append(f"| mean | | | {100 * mean_zs:.1f} | {100 * mean_icl:.1f} | {100 * (mean_icl - mean_zs):+.1f} |")
    return "\n".join(lines)


def replace_card_table(card: str, new_table: str) -> str:
    block = f"{CARD_START}\n{new_table}\n{CARD_END}"
    if CARD_START in card:
        return re.sub(re.escape(CARD_START) + ".*?" + re.escape(CARD_END), lambda _: block, card, flags=re.S)
    return card.rstrip("\n") + "\n\n" + block + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(TINY_ICL_DIR), help="a bundled model folder")
    parser.add_argument("--tasks", nargs="+", default=list(SYNTHETIC_TASKS))
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="demonstration shuffle seed")
    parser.add_argument("--n-queries", type=int, default=None, help="eval queries per task (default: all)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gd-lrs", type=float, nargs="*", default=[],
                        help="also report ZS accuracy after SGD on the K/V weights over the demonstrations")
    parser.add_argument("--write-card", action="store_true", help="rewrite the accuracy table in MODEL_CARD.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_bundled(args.model, device=args.device)
    scores = evaluate(model, args.tasks, args.k, args.seed, args.n_queries)
    text = table(scores)
    print(text)
    for score in scores:
        if args.gd_lrs:
            task = synthetic_task(score.task)
            gd = {lr: gd_zs_accuracy(model, task, lr, args.k, args.seed, args.n_queries) for lr in args.gd_lrs}
            print(f"{score.task}: ZS {100 * score.zs:.1f}; GD (K/V SGD) ZS by lr: "
                  + ", ".join(f"{lr:g}: {100 * a:.1f}" for lr, a in gd.items()), flush=True)
    if args.write_card:
        card_path = Path(args.model) / "MODEL_CARD.md"
        card = card_path.read_text() if card_path.is_file() else ""
        card_path.write_text(replace_card_table(card, text))
        print(f"wrote {card_path}")


if __name__ == "__main__":
    main()
