"""Benchmark: ICL recording with the cached, batched prefix against a naive full forward per query.

    python analyses/benchmark.py                       # GPT-2-small-shaped random model, CPU
    python analyses/benchmark.py --layers 4 --d-model 256 --queries 16

The naive baseline is what a first implementation does: `run_with_cache` on every whole prompt
([BOS] + k demonstrations + query + first label), reading the recorded position from the cache. Both paths record
the same tensors (checked here to 1e-4) and the table prints time, throughput and the activation memory each
keeps per query.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from helpers import make_tokenizer, toy_task  # noqa: E402  (the tests' offline word-level toy task)

from iclgd_lens.episodes import build_episode  # noqa: E402
from iclgd_lens.recording import record, record_offset  # noqa: E402

NAMES = ("hook_attn_out", "attn.hook_z", "attn.hook_attn_scores")


def naive_record(model: HookedTransformer, prefix, queries, label_tokens) -> tuple[torch.Tensor, int]:
    """Whole prompt per query through run_with_cache; returns attn_out [n, layer, d_model] and bytes cached."""
    outs, cached_bytes = [], 0
    with torch.no_grad():
        for query in queries:
            at = len(prefix) + record_offset(query, label_tokens, "prediction")
            tokens = torch.tensor([[*prefix, *query, *label_tokens[0]]], device=model.cfg.device)
            logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(NAMES))
            cached_bytes = max(cached_bytes, sum(t.numel() * t.element_size() for t in cache.values()))
            logits[0, at].log_softmax(-1)
            outs.append(torch.stack([cache[f"blocks.{l}.hook_attn_out"][0, at] for l in range(model.cfg.n_layers)]))
    return torch.stack(outs).cpu(), cached_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=50257, help="unembedding size (the toy words use the first ids)")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    tokenizer = make_tokenizer()
    cfg = HookedTransformerConfig(
        n_layers=args.layers,
        d_model=args.d_model,
        n_heads=args.heads,
        d_head=args.d_model // args.heads,
        d_mlp=4 * args.d_model,
        n_ctx=1024,
        d_vocab=max(args.vocab, len(tokenizer)),
        act_fn="gelu_new",
        normalization_type="LN",
        seed=0,
        device=args.device,
    )
    model = HookedTransformer(cfg, tokenizer).eval()
    task = toy_task(n_train=200, n_eval=args.queries)
    episode = build_episode(task, tokenizer, cfg.n_ctx, k=args.k, n_eval=args.queries)
    prefix, queries = episode.icl_prefix, episode.queries
    print(
        f"model: {args.layers} layers, d_model {args.d_model}, vocab {cfg.d_vocab}, {args.device}; "
        f"ICL prefix {len(prefix)} tokens (k={episode.effective_k}), {len(queries)} queries of "
        f"{min(map(len, queries))}-{max(map(len, queries))} tokens"
    )

    def timed(fn):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    (naive, naive_bytes), naive_s = timed(lambda: naive_record(model, prefix, queries, episode.label_tokens))
    fast, fast_s = timed(
        lambda: record(model, queries, episode.label_tokens, prefix, batch_size=args.batch_size, pad_token=episode.bos)
    )
    assert (fast.attn_out - naive).abs().max() < 1e-4, "the two paths disagree"
    fast_bytes = sum(t.numel() * t.element_size() for t in fast.tensors().values()) // len(queries)

    rows = [
        ("naive: run_with_cache per whole prompt", naive_s, naive_bytes),
        (f"iclgd-lens: cached prefix, batch {args.batch_size}", fast_s, fast_bytes),
    ]
    print(f"\n| {'ICL recording':<42} | {'seconds':>8} | {'queries/s':>9} | {'speed-up':>8} | {'kept per query':>14} |")
    print(f"|{'-' * 44}|{'-' * 10}|{'-' * 11}|{'-' * 10}|{'-' * 16}|")
    for name, seconds, kept in rows:
        print(
            f"| {name:<42} | {seconds:>8.2f} | {len(queries) / seconds:>9.2f} | {naive_s / seconds:>7.1f}x "
            f"| {kept / 2**20:>11.2f} MB |"
        )


if __name__ == "__main__":
    main()
