"""Train the bundled tiny ICL model from scratch on few-shot sequences of the six synthetic tasks.

    make train-model                                       # the shipped model: two stages, see the Makefile
    python analyses/train_tiny_icl.py --tiny --steps 3 --out /tmp/tiny   # a seconds-long smoke run

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
(class_cues), and --p-repeat lets a demonstration repeat an earlier row, which exact-match induction solves first.
A training aid, --class-probe (on by default): a linear probe on the residual stream entering the last block, at
each demonstration's label token, is trained to predict that demonstration's class. It asks for the key feature
that matching a query to its demonstrations needs. Without it the label loss stayed at chance for thousands of
steps in every run. The probe is discarded; the saved model is a plain HookedTransformer.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluate_icl import evaluate, replace_card_table, table  # noqa: E402
from transformer_lens import HookedTransformer  # noqa: E402

from iclgd_lens.sources import (  # noqa: E402
    EXTRA_LABEL_WORDS,
    HUB_TASKS,
    SYNTHETIC_TASKS,
    TINY_ICL_DIR,
    build_tokenizer,
    load_bundled,
    model_config,
    save_bundled,
    synthetic_task,
)


class Batch(NamedTuple):
    tokens: torch.Tensor  # [batch, pos], padded
    lengths: torch.Tensor  # [batch]
    rows: torch.Tensor  # [n_labels]: sequence of each demonstration's label
    cols: torch.Tensor  # [n_labels]: position whose next token is that label (the "Label:" token)
    targets: torch.Tensor  # [n_labels]: label token ids
    classes: torch.Tensor  # [n_labels]: class id for the probe (Mixture.class_offset)


class Mixture:
    """Samples few-shot training sequences of the synthetic tasks' train splits."""

    def __init__(
        self,
        tokenizer,
        tasks,
        n_ctx: int,
        p_real: float,
        p_fixed: float,
        min_demos: int,
        max_demos: int,
        short_demos: int,
        p_long: float,
        seed: int,
        p_cues: float = 0.0,
        p_repeat: float = 0.0,
        shared_classes: bool = False,
    ):
        self.tok = tokenizer
        self.tasks = tasks
        self.p_cues, self.p_repeat = p_cues, p_repeat
        self.cues = [class_cues(t) for t in tasks]
        self.n_ctx = n_ctx
        self.p_real, self.p_fixed = p_real, p_fixed
        self.min_demos, self.max_demos, self.short_demos, self.p_long = min_demos, max_demos, short_demos, p_long
        self.rng = random.Random(seed)
        self.prompts = [[tokenizer.encode(t.prompt(r), add_special_tokens=False) for r in t.train] for t in tasks]
        self.labels = [[r["label"] for r in t.train] for t in tasks]
        # class ids for the class probe: one id per (task, class), or class c of every task shares id c
        if shared_classes:
            self.class_offset, self.n_classes = [0] * len(tasks), max(len(t.label_words) for t in tasks)
        else:
            self.class_offset = [sum(len(u.label_words) for u in tasks[:i]) for i in range(len(tasks))]
            self.n_classes = sum(len(t.label_words) for t in tasks)
        self.real = [[self._word_id(w) for w in t.label_words] for t in tasks]
        pool = {w for spec in HUB_TASKS.values() for w in spec.label_words} | set(EXTRA_LABEL_WORDS)
        self.pool = sorted(self._word_id(w) for w in pool)
        # A fixed class -> word mapping per task onto words that are no task's label word: direct supervision of
        # the class features (a zero-shot route) that gives the real label words no prior.
        spare = [self._word_id(w) for w in EXTRA_LABEL_WORDS]
        self.fixed, start = [], 0
        for real in self.real:
            self.fixed.append(spare[start : start + len(real)])
            start += len(real)

    def _word_id(self, word: str) -> int:
        ids = self.tok.encode(" " + word, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"label word {word!r} is not a single token")
        return ids[0]

    def sequence(self, t: int, max_demos: int) -> tuple[list[int], list[int], list[int], list[int]]:
        """(tokens, positions whose next token is a label, label ids, classes) for one sequence of task t."""
        rng = self.rng
        n_classes = len(self.real[t])
        draw = rng.random()
        if draw < self.p_real:
            words = rng.sample(self.real[t], n_classes)
        elif draw < self.p_real + self.p_fixed:
            words = self.fixed[t]
        else:
            words = rng.sample(self.pool, n_classes)
        cues = self.cues[t] is not None and rng.random() < self.p_cues
        tokens = [self.tok.bos_token_id]
        positions, targets, classes, used = [], [], [], []
        for _ in range(rng.randint(self.min_demos, max_demos)):
            # a repeated row is solved by matching the query to its earlier copy: the induction step of ICL
            repeat = used and rng.random() < self.p_repeat
            i = rng.choice(used) if repeat else rng.randrange(len(self.prompts[t]))
            used.append(i)
            prompt = self.cue_prompt(t, i) if cues else self.prompts[t][i]
            if len(tokens) + len(prompt) + 2 > self.n_ctx:
                break
            tokens += prompt
            positions.append(len(tokens) - 1)
            classes.append(self.labels[t][i])
            targets.append(words[classes[-1]])
            tokens += [targets[-1], self.tok.eos_token_id]
        return tokens, positions, targets, classes

    def cue_prompt(self, t: int, i: int) -> list[int]:
        """Row i of task t cut down to one or two of its class-specific words, in order (the curriculum)."""
        task, (field, words) = self.tasks[t], self.cues[t]
        text = task.train[i][field].split()
        keep = [j for j, w in enumerate(text) if w in words] or [self.rng.randrange(len(text))]
        keep = sorted(self.rng.sample(keep, min(len(keep), self.rng.randint(1, 2))))
        prompt = task.template.format(**{field: " ".join(text[j] for j in keep)})
        return self.tok.encode(prompt, add_special_tokens=False)

    def batch(self, batch_size: int, device: str) -> Batch:
        t = self.rng.randrange(len(self.tasks))  # one task per batch: similar lengths, little padding
        # Most batches are short (many cheap updates); a share --p-long run up to the full context.
        max_demos = self.max_demos if self.rng.random() < self.p_long else self.short_demos
        seqs = [self.sequence(t, max_demos) for _ in range(batch_size)]
        length = max(len(s[0]) for s in seqs)
        tokens = torch.full((batch_size, length), self.tok.pad_token_id, dtype=torch.long)
        rows, cols, targets, classes = [], [], [], []
        for b, (ids, pos, tgt, cls) in enumerate(seqs):
            tokens[b, : len(ids)] = torch.tensor(ids)
            rows += [b] * len(pos)
            cols += pos
            targets += tgt
            classes += [self.class_offset[t] + c for c in cls]
        lengths = [len(s[0]) for s in seqs]
        extras = (torch.tensor(x, device=device) for x in (lengths, rows, cols, targets, classes))
        return Batch(tokens.to(device), *extras)


def class_cues(task, min_count: int = 5, min_purity: float = 0.9) -> tuple[str, set[str]] | None:
    """(field, words that are almost always of one class in the train split); None for two-field tasks (cb)."""
    if len(task.fields) != 1:
        return None
    field, n_classes = task.fields[0], len(task.label_words)
    counts: dict[str, list[int]] = {}
    for row in task.train:
        for word in set(row[field].split()):
            counts.setdefault(word, [0] * n_classes)[row["label"]] += 1
    return field, {
        w for w, c in counts.items() if sum(c) >= min_count and (max(c) + 1) / (sum(c) + n_classes) >= min_purity
    }


def training_loss(
    model: HookedTransformer,
    batch: Batch,
    lm_weight: float,
    class_probe: torch.nn.Linear | None = None,
    probe_layer: int = 0,
) -> torch.Tensor:
    """Label cross-entropy (every demonstration's label token) + lm_weight * next-token loss on all tokens
    + the class probe's cross-entropy, when one is given.

    The language-modelling part teaches what the label loss alone learns slowly: which words go together (the
    class features) and copying from earlier in the context (the repeated templates).
    The class probe reads the residual stream entering block probe_layer at each demonstration's label token and
    predicts that demonstration's class. ICL needs exactly this feature there: the query must find the label
    tokens whose demonstration has its class. Without the probe nothing asks for it until an attention head
    already matches on it, and the label loss stays at chance for thousands of steps. The probe is a training
    aid only; it is not part of the saved model.
    """
    captured: dict[str, torch.Tensor] = {}

    def capture(resid, hook):
        captured["resid"] = resid

    hooks = [(f"blocks.{probe_layer}.hook_resid_pre", capture)] if class_probe is not None else []
    with model.hooks(fwd_hooks=hooks):
        if lm_weight == 0:  # unembed only the label positions
            resid = model(batch.tokens, stop_at_layer=model.cfg.n_layers)
            logits = model.unembed(model.ln_final(resid[batch.rows, batch.cols][None]))[0].float()
            lm = 0.0
        else:
            all_logits = model(batch.tokens).float()
            logits = all_logits[batch.rows, batch.cols]
            tokens = batch.tokens
            real = torch.arange(tokens.shape[1] - 1, device=tokens.device)[None] < (batch.lengths[:, None] - 1)
            lm = torch.nn.functional.cross_entropy(all_logits[:, :-1][real], tokens[:, 1:][real])
    loss = torch.nn.functional.cross_entropy(logits, batch.targets) + lm_weight * lm
    if class_probe is not None:
        label_tokens = captured["resid"][batch.rows, batch.cols + 1]
        loss = loss + torch.nn.functional.cross_entropy(class_probe(label_tokens).float(), batch.classes)
    return loss


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
    p.add_argument("--init", default=None, help="start from this bundled model's weights (same architecture)")
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
        # continue from a bundled model of the same architecture (fresh optimizer and schedule)
        model.load_state_dict(load_bundled(args.init, device=args.device).state_dict())
    probe_layer = args.n_layers - 1
    class_probe = torch.nn.Linear(args.d_model, mixture.n_classes, device=args.device) if args.class_probe else None
    trained = [*model.parameters(), *(class_probe.parameters() if class_probe else ())]
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
    command = "python analyses/train_tiny_icl.py " + " ".join(argv if argv is not None else sys.argv[1:])
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
    } (short batches: many cheap updates). To make the demonstrations necessary, the label words are re-assigned to the classes in every
sequence: with probability {args.p_real}, the task's own label words in a random order (its usual mapping is just one
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
demonstrations. Recompute with `python analyses/evaluate_icl.py --write-card`.
"""


if __name__ == "__main__":
    main()
