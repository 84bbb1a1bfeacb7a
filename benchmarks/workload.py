"""What is timed: a GPT-2-small-shaped model with random weights (12 layers, d_model 768, 12 heads, vocabulary
50,257, context 1024) and an SST-2-shaped episode: real Rotten Tomatoes snippets (`rt-snippets`, SST-2's source) of
at most 32 tokens with their template, tokenised by SmolLM2's tokenizer: k = 32 demonstrations and queries of about
25 tokens.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from iclgd_lens import Task, load_task
from iclgd_lens.sources.packaged_models import packaged_model_folder

SST2_EVAL_SIZE = 872


def smollm2_tokenizer() -> tuple[Path, PreTrainedTokenizerBase]:
    """SmolLM2-135M's folder and its tokenizer (the packaged GGUF: both work offline)."""
    folder, _ = packaged_model_folder("smollm2-135m-q4_1")
    return folder, AutoTokenizer.from_pretrained(folder)


def sst2_shaped_task(tokenizer, max_tokens: int = 32) -> Task:
    """rt-snippets restricted to rows whose prompt (template included) has at most `max_tokens` tokens: SST-2's
    sentence length (about 25 tokens), so that k = 32 demonstrations fit GPT-2's 1024-token context."""
    task = load_task("rt-snippets")

    def short(rows):
        return tuple(e for e in rows if len(tokenizer(task.prompt(e))["input_ids"]) <= max_tokens)

    return Task(task.name + "-sst2-shaped", task.template, task.label_words, short(task.train), short(task.eval))


def gpt2_small_shaped(tokenizer, device: str, dtype: torch.dtype, args: argparse.Namespace) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=args.layers,
        d_model=args.d_model,
        n_heads=args.heads,
        d_head=args.d_model // args.heads,
        d_mlp=4 * args.d_model,
        n_ctx=args.n_ctx,
        d_vocab=max(args.vocab, len(tokenizer)),
        act_fn="gelu_new",
        normalization_type="LN",
        model_name="gpt2-small-shaped-random",
        seed=0,
        device=device,
        dtype=dtype,
    )
    return HookedTransformer(cfg, tokenizer).eval()


def parameter_bytes(model: HookedTransformer) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())
