"""Dai et al.'s Kendall measure: does ICL attend to the demonstration tokens that GD's training "attends" to?

Per eval query and layer (Dai et al., `compute_training_example_attn.py`):
- ICL side: the pre-softmax scores from the recorded position to every demonstration token of the ICL prompt,
  summed over heads (BOS and separator tokens left out);
- FT side: for every demonstration token, the attention query q' recorded at that token during its own training
  step (BOS left out), dotted over all of d_model (every head's q concatenated) with the finetuned model's query q at
  the recorded position: m_FT = Σ_h q'_h · q_h. (TransformerLens' hook_q, before any rotary embedding.)
Both are softmaxed; Kendall's tau (scipy.stats.kendalltau) between them at token level and at demonstration level
(the softmaxed scores summed per demonstration); top-k recall: the share of FT's k most-attended items that are
among ICL's k most-attended (k capped at the number of items); the random baseline replaces the FT side by U[0, 1)
scores. Means over the first `n_queries` eval queries (100 in the paper).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.stats import kendalltau
from transformer_lens import HookedTransformer

from iclgd_lens.deltas import fit
from iclgd_lens.results import Result

RECALL_KS = (5, 100)
RANDOM_SEED = 0


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def top_k_recall(icl: np.ndarray, ft: np.ndarray, k: int) -> float:
    """Share of FT's k highest items that are among ICL's k highest (k capped at the number of items)."""
    k = min(k, len(icl))
    return len(set(np.argsort(-ft, kind="stable")[:k]) & set(np.argsort(-icl, kind="stable")[:k])) / k


def measures(icl_scores: np.ndarray, ft_scores: np.ndarray, groups: np.ndarray, random: np.ndarray) -> dict:
    """Token- and demonstration-level tau, random tau and top-k recalls for one query and layer.
    `groups[t]`: the demonstration of token t; `random`: U[0, 1) scores, one per token."""
    icl, ft, noise = softmax(icl_scores), softmax(ft_scores), softmax(random)
    out = {}
    for level, (a, b, r) in {
        "token": (icl, ft, noise),
        "demonstration": tuple(np.bincount(groups, weights=v) for v in (icl, ft, noise)),
    }.items():
        out[level] = {"tau": kendalltau(a, b).statistic, "tau_random": kendalltau(a, r).statistic}
        out[level] |= {f"recall_at_{k}": top_k_recall(a, b, k) for k in RECALL_KS}
    return out


@torch.no_grad()
def _icl_scores(model: HookedTransformer, result: Result, n: int, keep: np.ndarray) -> np.ndarray:
    """[n, layer, kept tokens]: ICL's pre-softmax scores from the recorded position to the prefix tokens `keep`,
    summed over heads."""
    prefix = list(result.episode.icl_prefix)
    keys = torch.as_tensor(keep, device=model.cfg.device)
    out = np.zeros((n, model.cfg.n_layers, len(keep)))
    for i in range(n):
        query = list(result.episode.queries[i])
        found = {}

        def grab(scores: torch.Tensor, hook) -> None:
            found[hook.layer()] = scores[0, :, -1, keys].sum(0).double().cpu().numpy()

        hooks = [(f"blocks.{l}.attn.hook_attn_scores", grab) for l in range(model.cfg.n_layers)]
        with model.hooks(hooks):
            model(torch.tensor([prefix + query], device=model.cfg.device), stop_at_layer=model.cfg.n_layers)
        out[i] = np.stack([found[l] for l in range(model.cfg.n_layers)])
    return out


@torch.no_grad()
def _finetuned_queries(model: HookedTransformer, result: Result, delta, n: int) -> torch.Tensor:
    """[n, layer, head * d_head]: the finetuned model's query at the recorded position of each ZS prompt."""
    out = []
    for i in range(n):
        query = list(result.episode.queries[i])
        found = {}

        def grab(q: torch.Tensor, hook) -> None:
            found[hook.layer()] = q[0, -1].reshape(-1).double().cpu()

        hooks = delta.hooks(model) + [(f"blocks.{l}.attn.hook_q", grab) for l in range(model.cfg.n_layers)]
        with model.hooks(hooks):
            model(
                torch.tensor([[result.episode.bos, *query]], device=model.cfg.device), stop_at_layer=model.cfg.n_layers
            )
        out.append(torch.stack([found[l] for l in range(model.cfg.n_layers)]))
    return torch.stack(out)


def kendall_table(model: HookedTransformer, result: Result, method: str = "gd", n_queries: int = 100) -> pd.DataFrame:
    """kendall.csv: layer, level, tau, tau_random, recall_at_5, recall_at_100 (means over queries), defined (the
    queries whose tau is defined), queries."""
    config, episode = result.config, result.episode
    if config.get("position", "prediction") != "prediction":
        raise ValueError("Kendall is read at the prediction position; run compare with --position prediction")
    if config.get("precision") == "fp16-mixed":
        raise ValueError("Kendall refits the method in native precision; it does not support fp16-mixed results")
    # Refit, recording every training step's queries; the refit must be the saved delta (same demonstrations,
    # order and lr: a deterministic computation).
    training_queries: list[torch.Tensor] = []
    delta = fit(model, episode.train_demos, episode.bos, method, result.lr_of(method), result.trained_parameters,
                config["lcgd_exit"], training_queries=training_queries)  # fmt: skip
    if method in result.deltas:
        for name, saved in result.deltas[method].tensors.items():
            if not torch.allclose(delta.tensors[name].cpu().float(), saved.float(), atol=1e-5, rtol=1e-4):
                raise ValueError(f"the refitted {method} delta differs from the saved one at {name}: is this the model "
                                 "the result was computed on?")  # fmt: skip
    # Align: demonstrations both ICL and the training saw, by train row; tokens in ICL-prompt order.
    step_of_row = {row: step for step, row in enumerate(episode.train_rows)}
    keep, groups, ft_index, position = [], [], [], 1  # ICL prefix position 0 is BOS
    for j, (row, demo) in enumerate(zip(episode.demo_rows, episode.demos)):
        if row in step_of_row:
            keep += range(position, position + len(demo))
            groups += [len(set(groups))] * len(demo)
            ft_index += [(step_of_row[row], t) for t in range(len(demo))]
        position += len(demo) + len(episode.separator)
    if not keep:
        raise ValueError("no demonstration is both in the ICL prompt and in the training set")
    n = min(n_queries, len(episode.queries))
    icl = _icl_scores(model, result, n, np.array(keep))
    q = _finetuned_queries(model, result, delta, n)  # [n, layer, d]
    q_train = torch.stack([training_queries[s][:, t].reshape(model.cfg.n_layers, -1).double() for s, t in ft_index], 1)
    ft = torch.einsum("nld,ltd->nlt", q, q_train).numpy()  # [n, layer, tokens]
    rng = np.random.default_rng(RANDOM_SEED)
    groups_array = np.array(groups)
    rows = []
    for layer in range(model.cfg.n_layers):
        per_query = [measures(icl[i, layer], ft[i, layer], groups_array, rng.random(len(keep))) for i in range(n)]
        for level in ("token", "demonstration"):
            values = pd.DataFrame([m[level] for m in per_query])
            # tau is undefined (NaN) where one side is constant: the mean skips those, `defined` counts the rest
            rows.append({"layer": layer, "level": level, **values.mean().to_dict(), "defined": int(values.tau.notna().sum()),
                         "queries": n})  # fmt: skip
    columns = ["layer", "level", "tau", "tau_random", *[f"recall_at_{k}" for k in RECALL_KS], "defined", "queries"]
    return pd.DataFrame(rows, columns=columns)
