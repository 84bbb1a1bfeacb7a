"""Train the bundled tiny ICL model from scratch on few-shot sequences of the six synthetic tasks.

    make train-model                                       # the shipped model: two stages, see the Makefile
    python scripts/train_tiny_icl.py --tiny --steps 3 --out /tmp/tiny   # a seconds-long smoke run

Every training sequence is one task: [BOS] + demo_1 + EOS + demo_2 + EOS + ..., demo = template.format(row) +
" " + label word, with the task's real template and train split. The label words are re-assigned to the classes
in every sequence, so a query alone does not say which word names its class: ICL is needed.
  - with probability --p-real: the task's own label words in a random order (a random permutation, so the
    task's usual mapping is no more likely than any other);
  - with probability --p-fixed: a fixed per-task mapping onto spare words that are no task's label word (a
    zero-shot route to the class features);
  - otherwise: distinct words drawn from a pool (all tasks' label words + EXTRA_LABEL_WORDS).
The number of demonstrations varies per sequence (uniform in [--min-demos, --short-demos], or in a share --p-long
of the batches [--min-demos, --max-demos], cut to the context),
and the loss is the cross-entropy of every demonstration's label token (the prediction after "Label:" etc.),
so one sequence trains every k from 0 to its length, plus (--lm-weight) the next-token loss on all tokens.
Two curricula: --p-cues cuts a share of the sequences' demonstrations to one or two class-specific words
(tiny_icl_training.class_cues), and --p-repeat lets a demonstration repeat an earlier row, which exact-match
induction solves first.
A training aid, --class-probe (on by default): a linear probe on the residual stream entering the last block, at
each demonstration's label token, is trained to predict that demonstration's class. It asks for the key feature
that matching a query to its demonstrations needs. Without it the label loss stayed at chance for thousands of
steps in every run. The probe is discarded; the saved model is a plain HookedTransformer.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluate_icl import evaluate, replace_card_table, table  # noqa: E402
from tiny_icl_training import Mixture, training_loss  # noqa: E402
from transformer_lens import HookedTransformer  # noqa: E402

from iclgd_lens.sources import (  # noqa: E402
    SYNTHETIC_TASKS,
    TINY_ICL_DIR,
    build_tokenizer,
    load_bundled,
    model_config,
    save_bundled,
    synthetic_task,
)


def copy_parameters(source: HookedTransformer, model: HookedTransformer) -> None:
    """Continue from `source`'s parameters (fresh optimizer and schedule). Positional buffers stay `model`'s own,
    so a model trained with ALiBi can continue with rotary positions: the same parameters, other positions."""
    ours = dict(model.named_parameters())
    # TransformerLens keeps an (unused) pos_embed.W_pos beside ALiBi; a rotary model has none
    theirs = {name: q for name, q in source.named_parameters() if name in ours or not name.startswith("pos_embed.")}
    shapes = {name: tuple(q.shape) for name, q in theirs.items()}
    other = {name: shapes.get(name) for name, q in ours.items() if shapes.get(name) != tuple(q.shape)}
    if other or theirs.keys() != ours.keys():
        raise ValueError(
            f"--init has other parameters or shapes ({other or sorted(theirs.keys() ^ ours.keys())}); "
            "train with the --n-layers/--d-model/--n-heads of the model it starts from"
        )
    with torch.no_grad():
        for name, parameter in ours.items():
            parameter.copy_(theirs[name])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3600, help="length of the learning-rate schedule")
    p.add_argument(
        "--stop-at", type=int, default=None, help="stop after this many steps of that schedule (default: --steps)"
    )
    p.add_argument("--out", default=str(TINY_ICL_DIR))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--tiny", action="store_true", help="a tiny model and short sequences, for smoke tests")
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--n-ctx", type=int, default=1024)
    p.add_argument("--pos", default="rotary", choices=["standard", "rotary", "alibi"])
    p.add_argument(
        "--no-unembed-bias",
        action="store_true",
        help="keep the unembedding bias at zero (untrained): a Hugging Face layout (GPT-NeoX) has none, so a model "
        "trained this way exports exactly",
    )
    p.add_argument("--batch-size", type=int, default=6)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--p-real", type=float, default=0.5, help="share of sequences with the task's own label words")
    p.add_argument(
        "--p-fixed",
        type=float,
        default=0.2,
        help="share of sequences with a fixed per-task mapping onto spare (non-label) words",
    )
    p.add_argument(
        "--p-cues",
        type=float,
        default=0.0,
        help="share of sequences whose demonstrations are cut to one or two class-specific words",
    )
    p.add_argument(
        "--p-repeat",
        type=float,
        default=0.0,
        help="chance that a demonstration repeats an earlier row of its sequence (induction curriculum)",
    )
    p.add_argument(
        "--class-probe",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train a linear class probe at the label tokens entering the last block (see training_loss)",
    )
    p.add_argument(
        "--shared-probe-classes",
        action="store_true",
        help="class c of every task is one probe class (sst2/mr negative = subj objective = 0, ...)",
    )
    p.add_argument(
        "--lm-weight",
        type=float,
        default=1.0,
        help="weight of the next-token loss on all tokens (0: label tokens only)",
    )
    p.add_argument("--min-demos", type=int, default=2)
    p.add_argument("--max-demos", type=int, default=40)
    p.add_argument("--short-demos", type=int, default=8, help="max demonstrations in a short batch")
    p.add_argument("--p-long", type=float, default=0.2, help="share of batches with up to --max-demos")
    p.add_argument(
        "--tasks",
        nargs="+",
        default=list(SYNTHETIC_TASKS),
        choices=SYNTHETIC_TASKS,
        help="the synthetic tasks of the mixture (a first curriculum stage can use a few)",
    )
    p.add_argument("--n-train", type=int, default=4000, help="train rows per synthetic task")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--eval-queries", type=int, default=48, help="queries per task in the periodic evaluation")
    p.add_argument("--final-queries", type=int, default=None, help="queries per task at the end (default: all)")
    p.add_argument(
        "--init",
        default=None,
        help="start from this bundled model's parameters (same shapes; its positions may differ: alibi -> rotary)",
    )
    p.add_argument("--log", default=None, help="write the training log (JSON lines) here")
    args = p.parse_args(argv)
    args.stop_at = min(args.steps, args.stop_at or args.steps)
    if args.tiny:
        args.n_layers, args.d_model, args.n_heads, args.n_ctx = 1, 32, 2, 256
        args.batch_size, args.max_demos, args.short_demos, args.n_train = 2, 6, 3, 200
        args.eval_queries, args.final_queries = 8, 8
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()

    tok = build_tokenizer()
    tasks = [synthetic_task(name, seed=0, n_train=args.n_train) for name in args.tasks]
    mixture = Mixture(
        tok,
        tasks,
        args.n_ctx,
        args.p_real,
        args.p_fixed,
        args.min_demos,
        args.max_demos,
        args.short_demos,
        args.p_long,
        args.seed,
        args.p_cues,
        args.p_repeat,
        args.shared_probe_classes,
    )
    cfg = model_config(
        len(tok),
        args.n_layers,
        args.d_model,
        args.n_heads,
        n_ctx=args.n_ctx,
        positional_embedding_type=args.pos,
        seed=args.seed,
    )
    cfg.device = args.device
    model = HookedTransformer(cfg, tok, move_to_device=True)
    if args.init:
        copy_parameters(load_bundled(args.init, device=args.device), model)
    probe_layer = args.n_layers - 1
    class_probe = torch.nn.Linear(args.d_model, mixture.n_classes, device=args.device) if args.class_probe else None
    if args.no_unembed_bias:
        with torch.no_grad():
            model.unembed.b_U.zero_()
        model.unembed.b_U.requires_grad_(False)
    trained = [q for q in model.parameters() if q.requires_grad] + [*(class_probe.parameters() if class_probe else ())]
    decay = [q for q in trained if q.ndim >= 2]
    no_decay = [q for q in trained if q.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))
    )
    log = open(args.log, "w") if args.log else None
    n_params = sum(q.numel() for q in model.parameters())
    print(f"model: {args.n_layers} layers, d_model {args.d_model}, {n_params / 1e6:.2f}M parameters", flush=True)
    running, tokens_seen = None, 0
    for step in range(1, args.stop_at + 1):
        model.train()
        batch = mixture.batch(args.batch_size, args.device)
        loss = training_loss(model, batch, args.lm_weight, class_probe, probe_layer)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        schedule.step()
        tokens_seen += batch.tokens.numel()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0 or step == args.stop_at:
            print(f"step {step} loss {running:.3f} tokens {tokens_seen} {time.time() - started:.0f}s", flush=True)
        if step % args.eval_every == 0 and step < args.stop_at:
            model.eval()
            scores = evaluate(model, k=32, n_queries=args.eval_queries)
            summary = {s.task: (round(s.zs, 3), round(s.icl, 3)) for s in scores}
            print(f"step {step} eval (zs, icl): {summary}", flush=True)
            # a checkpoint, so an interrupted run still leaves a loadable model
            save_bundled(model, tok, args.out, f"# checkpoint at step {step}\n\n{table(scores)}\n")
            if log:
                log.write(
                    json.dumps({"step": step, "loss": running, "time": time.time() - started, "eval": summary}) + "\n"
                )
                log.flush()
    train_time = time.time() - started
    model.eval()
    scores = evaluate(model, k=32, n_queries=args.final_queries)
    result = table(scores)
    print(result, flush=True)
    command = "python scripts/train_tiny_icl.py " + " ".join(argv if argv is not None else sys.argv[1:])
    card = model_card(args, n_params, train_time, command)
    save_bundled(model, tok, args.out, replace_card_table(card, result))
    print(f"saved {args.out} (training {train_time / 60:.1f} min)", flush=True)


def model_card(args, n_params: int, train_time: float, command: str) -> str:
    return f"""# tiny-icl

A small GPT-2-style `HookedTransformer` trained from scratch, offline, to learn the bundled synthetic tasks
(`iclgd_lens.sources.synthetic_tasks`) in context. It is the toolkit's offline default model: with no hub access,
`load_model("tiny-icl")` + `load_task("synth-sst2")` run every comparison of the papers.

## Architecture
{args.n_layers} layers, d_model {args.d_model}, {args.n_heads} heads (d_head {args.d_model // args.n_heads}),
d_mlp {4 * args.d_model}, GELU, LayerNorm (pre-norm), {args.pos} positional embeddings, n_ctx {args.n_ctx},
attention + MLP blocks, GPT-2 initialisation; {n_params / 1e6:.2f}M parameters, stored in fp32
(`model.safetensors`: the TransformerLens state dict, no weight processing).

## Tokenizer
Word-level (`tokenizer.json`, `tokenizers` WordLevel): splits on whitespace and isolates punctuation
(":" "." "?" "," are tokens); the vocabulary is every word of the synthetic lexicon, the six real templates and
the label-word pool. `<|endoftext|>` is BOS = EOS = pad; `<unk>` for anything else. Every label word
(" Positive", " terrible", " World", " Neither", ...) is one token, and "A B" tokenizes as "A" then " B".
The tokenizer adds no BOS itself: callers prepend the BOS id.

## Training data (the mixture)
Sequences of one task each: [BOS] + demo + EOS + demo + EOS + ..., demo = the real task template filled with a
synthetic train row + " " + label word; per batch, with probability {args.p_long} {args.min_demos} to
{args.max_demos} demonstrations per sequence (uniform, cut to the context), otherwise {args.min_demos} to
{
        args.short_demos
    } (short batches: many cheap updates). To make the demonstrations necessary, the label words are re-assigned to
the classes in every sequence: with probability {
        args.p_real
    }, the task's own label words in a random order (its usual mapping is just one
of the permutations); with probability {
        args.p_fixed
    }, a fixed per-task mapping onto spare words that are no task's label
word (a direct route to the class features that gives the real label words no prior); otherwise distinct words
from a pool (all tasks' label words + extras such as yes/no, A-E, colours, animals). Loss: the mean
cross-entropy of every demonstration's label token (so each sequence trains k = 0 up to its length)
+ {args.lm_weight} x the mean next-token cross-entropy over all tokens (language modelling teaches which words go
together and copying from the context). Curricula: with probability {args.p_cues} a sequence's demonstrations are cut
to one or two words that are almost always of one class in the train split (never for cb); each demonstration
repeats an earlier row of its sequence with probability {args.p_repeat}. Class probe: {
        "on" if args.class_probe else "off"
    }{", class c of every task one probe class" if args.shared_probe_classes else ""}
(a linear probe on the residual stream entering the last block, at every demonstration's label token, predicts
that demonstration's class and its cross-entropy is added to the loss. This is what made ICL emerge: without it
no head matched queries to demonstrations of their class. The probe is discarded after training). Train rows: {
        args.n_train
    } per task (synthetic_task(name, seed=0)); the eval rows are disjoint.

## Training
Command: `{command.strip()}`
Seed {args.seed}, {args.stop_at} steps of a {args.steps}-step schedule, batch {args.batch_size} sequences, AdamW (lr {
        args.lr
    }, betas 0.9/0.98,
weight decay 0.05 on matrices), {args.warmup} warm-up steps then cosine decay, gradient clipping 1.0;
{train_time / 60:.1f} min wall time on {args.device} ({args.threads} thread(s)).

## Accuracy on the synthetic eval sets
ZS: [BOS] + query prompt. ICL: [BOS] + k = 32 demonstrations (first 32 train rows after a seeded shuffle, seed 0;
those that would overflow the context dropped) + query. Prediction: the label word with the highest log-probability.
Because the training mixture randomises which word names which class, zero-shot accuracy is expected near chance
(1 / number of classes): the model knows the task's classes but not which label word is which without
demonstrations. Recompute with `python scripts/evaluate_icl.py --write-card`.
"""


if __name__ == "__main__":
    main()
