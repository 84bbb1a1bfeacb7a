"""Function vectors (Todd et al., ICLR 2024): the heads whose mean output carries the task, and their sum added to
zero-shot runs. A head-level view of what ICL writes, set beside the heads the attribution ranks for GD's and LCGD's
updates.

- **Mean head outputs** ā_lh: head h of layer l's output z_lh·W_O^lh at the last position of the ICL prompts (the
  episode's demonstrations, then each query), averaged over the queries.
- **Corrupted prompts**: the same demonstrations with their labels shuffled (`episodes.shown_labels`, the shuffled
  label control's permutation), each query after them: the prompt no longer says the task.
- **Average indirect effect** (AIE) of a head: on every corrupted prompt, the head's output at the last position
  replaced by ā_lh; the change of p(y), the probability of the correct class among the label words (their first
  tokens), averaged over the queries.
- **Function vector** v = Σ ā_lh over the `N_HEADS` heads of highest AIE; added to the residual stream at the
  prediction position of every zero-shot prompt, entering layer l (each l, and after the last layer):
  `fv_correct` [query, point], as the task vectors' points.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from scipy.stats import spearmanr
from torch import Tensor

from iclgd_lens.backend import LensModel
from iclgd_lens.core.episodes import Episode, shown_labels
from iclgd_lens.core.hooks import hook_name, reset_alibi
from iclgd_lens.core.recording import PrefixRun, prefix_attention
from iclgd_lens.core.results import Result

N_HEADS = 10  # Todd et al.'s |A| = 10 for GPT-J's 448 heads; a fixed count, stated beside every result


def corrupted_demos(episode: Episode, seed: int, corruption: str = "shuffled") -> tuple[tuple[int, ...], ...]:
    """The episode's demonstrations with their labels `corruption` ("shuffled", as the run's shuffled label control
    permutes them with its `seed`, or "reversed"): each demonstration's label tokens replaced by those of the label it
    now shows."""
    shown = shown_labels(list(episode.demo_labels), len(episode.label_tokens), seed, corruption)
    out = []
    for demo, own, new in zip(episode.demos, episode.demo_labels, shown):
        prompt = demo[: len(demo) - len(episode.label_tokens[own])]
        out.append((*prompt, *episode.label_tokens[new]))
    return tuple(out)


@torch.no_grad()
def _last_position_run(
    model: LensModel, prefix_run: PrefixRun, queries: Sequence[Sequence[int]], hooks_for=None, batch_size: int = 8
) -> tuple[Float[Tensor, "n vocab"], dict[int, Tensor]]:
    """Logits at the last position of each prompt prefix + query, and each layer's z there ([n, head, d_head]): the
    prefix's keys and values computed once (`prefix_run`, as the recording runs it; the callers reuse it for every
    head or entry point), each batch of queries right-padded after them. `hooks_for(rows, last)` gives extra hooks
    for a batch (`last`: where each row ends, the prefix not counted)."""
    logits, z = [], {layer: [] for layer in range(model.cfg.n_layers)}
    with prefix_attention(model):
        for start in range(0, len(queries), batch_size):
            batch = [list(query) for query in queries[start : start + batch_size]]
            width = max(len(q) for q in batch)
            tokens = torch.tensor([q + [q[-1]] * (width - len(q)) for q in batch], device=model.cfg.device)
            last = torch.tensor([len(q) - 1 for q in batch], device=model.cfg.device)
            rows = torch.arange(len(batch), device=model.cfg.device)

            def keep(layer: int):
                def hook(value: Tensor, hook) -> None:
                    z[layer].append(value[rows, last].double().cpu())

                return hook

            hooks = [(hook_name("z", layer), keep(layer)) for layer in range(model.cfg.n_layers)]
            reset_alibi(model)
            with model.hooks(hooks + (hooks_for(rows, last) if hooks_for else [])):
                logits.append(model(tokens, **prefix_run.attended_by(tokens))[rows, last].double().cpu())
    return torch.cat(logits), {layer: torch.cat(values) for layer, values in z.items()}


def class_probabilities(logits: Float[Tensor, "n vocab"], episode: Episode) -> Float[Tensor, "n class"]:
    """p(class) among the label words' first tokens."""
    firsts = torch.tensor([tokens[0] for tokens in episode.label_tokens])
    return logits[:, firsts].softmax(-1)


@torch.no_grad()
def indirect_effects(
    model: LensModel, episode: Episode, seed: int, corruption: str = "shuffled", batch_size: int = 8
) -> tuple[Float[Tensor, "layer head"], Float[Tensor, "layer head d_head"]]:
    """Each head's AIE on the corrupted prompts (module docstring; `corrupted_demos`), and the mean z at the ICL
    prompts' last position it patches in."""
    labels = torch.tensor(episode.labels)
    _, z = _last_position_run(model, PrefixRun.of(model, episode.icl_prefix), episode.queries, batch_size=batch_size)
    mean_z = torch.stack([z[layer].mean(0) for layer in range(model.cfg.n_layers)])  # [layer, head, d_head]
    corrupted = PrefixRun.of(model, replace(episode, demos=corrupted_demos(episode, seed, corruption)).icl_prefix)
    base, _ = _last_position_run(model, corrupted, episode.queries, batch_size=batch_size)
    p_base = class_probabilities(base, episode).gather(1, labels[:, None])[:, 0]
    effects = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.float64)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            value = mean_z[layer, head].to(model.cfg.device, model.cfg.dtype)

            def patch(rows: Tensor, last: Tensor, layer: int = layer, head: int = head, value: Tensor = value):
                def hook(z: Tensor, hook) -> Tensor:
                    z = z.clone()
                    z[rows, last, head] = value
                    return z

                return [(hook_name("z", layer), hook)]

            patched, _ = _last_position_run(model, corrupted, episode.queries, patch, batch_size)
            p = class_probabilities(patched, episode).gather(1, labels[:, None])[:, 0]
            effects[layer, head] = (p - p_base).mean()
    return effects, mean_z


def function_vector(
    model: LensModel, effects: Float[Tensor, "layer head"], mean_z: Tensor, n_heads: int = N_HEADS
) -> tuple[Float[Tensor, " d_model"], list[tuple[int, int]]]:
    """v = Σ ā_lh over the `n_heads` heads of highest AIE (ā = z̄·W_O of that head), and those heads."""
    order = torch.argsort(effects.flatten(), descending=True)[:n_heads]
    heads = [(int(i) // model.cfg.n_heads, int(i) % model.cfg.n_heads) for i in order]
    W_O = model.W_O.detach().double().cpu()  # [layer, head, d_head, d_model]
    vector = sum(mean_z[layer, head] @ W_O[layer, head] for layer, head in heads)
    return vector, heads


@torch.no_grad()
def function_vector_accuracy(
    model: LensModel, episode: Episode, vector: Float[Tensor, " d_model"], batch_size: int = 8
) -> Float[Tensor, "n point"]:
    """Whether each zero-shot prompt answers correctly with `vector` added at the prediction position entering
    layer l (point l), or after the last layer (point L)."""
    labels = torch.tensor(episode.labels)
    value = vector.to(model.cfg.device, model.cfg.dtype)
    zero_shot = PrefixRun.of(model, episode.zs_prefix)
    columns = []
    for point in range(model.cfg.n_layers + 1):
        name = hook_name("resid_pre", point) if point < model.cfg.n_layers else hook_name("resid_post", point - 1)

        def add(rows: Tensor, last: Tensor, name: str = name):
            def hook(resid: Tensor, hook) -> Tensor:
                resid = resid.clone()
                resid[rows, last] += value
                return resid

            return [(name, hook)]

        logits, _ = _last_position_run(model, zero_shot, episode.queries, add, batch_size)
        columns.append((class_probabilities(logits, episode).argmax(-1) == labels).double())
    return torch.stack(columns, 1)


def ranking_agreement(effects: Float[Tensor, "layer head"], heads: pd.DataFrame, top: int = N_HEADS) -> pd.DataFrame:
    """The function vector's heads beside the attribution's (heads.csv: per method, head by |Δ log-odds|): per
    method, the overlap of the two top-`top` sets and Spearman's rank correlation over every head. Heads are ranked
    by the exact change where every head has one (`--estimate exact`), else by the first-order estimate every head
    has (`abs_logodds_change_atp`; the default verifies only the estimate's top heads): `ranked_by` says which."""
    single = heads[heads["head"] != "all"].astype({"layer": int, "head": int})
    rows = []
    for method, part in single.groupby("method", sort=False):
        exact = part["abs_logodds_change"].notna().all()
        column = "abs_logodds_change" if exact else "abs_logodds_change_atp"
        score = part.set_index(["layer", "head"])[column]
        keys = list(score.index)
        aie = np.array([float(effects[layer, head]) for layer, head in keys])
        attributed = score.to_numpy(dtype=np.float64)
        fv_top = {keys[i] for i in np.argsort(-aie, kind="stable")[:top]}
        attr_top = {keys[i] for i in np.argsort(-attributed, kind="stable")[:top]}
        rows.append(
            {
                "method": method,
                "ranked_by": "exact" if exact else "estimate",
                "top": top,
                "overlap": len(fv_top & attr_top),
                "chance_overlap": top * top / len(keys),
                "spearman": spearmanr(aie, attributed).statistic,
            }
        )
    return pd.DataFrame(rows)


def function_vector_tables(model: LensModel, result: Result, heads: pd.DataFrame, batch_size: int = 8) -> dict:
    """What `attribute --function-vectors` writes: per head its AIE ("heads"), the function vector's accuracy per
    point beside ZS's and ICL's ("points"), its top heads, and their agreement with the attribution's per method
    ("agreement"); "seconds" its time."""
    started = time.perf_counter()
    episode = result.episode
    effects, mean_z = indirect_effects(model, episode, result.config["seed"], batch_size=batch_size)
    vector, top = function_vector(model, effects, mean_z)
    correct = function_vector_accuracy(model, episode, vector, batch_size)
    accuracy = result.scores["model"].accuracy
    per_head = pd.DataFrame(
        [
            {"layer": layer, "head": head, "aie": float(effects[layer, head]), "in_vector": (layer, head) in top}
            for layer in range(model.cfg.n_layers)
            for head in range(model.cfg.n_heads)
        ]
    )
    points = pd.DataFrame(
        {
            "point": range(correct.shape[1]),
            "fv_accuracy": correct.mean(0).numpy(),
            "zs_accuracy": accuracy["zs"],
            "icl_accuracy": accuracy["icl"],
        }
    )
    return {
        "heads": per_head.sort_values("aie", ascending=False),
        "points": points,
        "top": top,
        "agreement": ranking_agreement(effects, heads),
        "seconds": time.perf_counter() - started,
    }
