"""The training mixture of scripts/train_tiny_icl.py: few-shot sequences of the synthetic tasks with re-assigned
label words, their curricula, and the loss (the module docstring of train_tiny_icl.py explains each)."""

from __future__ import annotations

import random
from typing import NamedTuple

import torch
from transformer_lens import HookedTransformer

from iclgd_lens.sources import EXTRA_LABEL_WORDS, HUB_TASKS


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
