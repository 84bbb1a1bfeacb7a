"""(b) The naive pipeline, written the way the reference works: one query at a time, the whole prompt through
`run_with_cache` keeping the full cache; GD and LCGD as plain finetuning of a model copy (torch.optim.SGD; LCGD's
per-layer losses written out block by block); metrics in Python loops.

It is timed at `--naive-queries` queries (its fits do not depend on the number of queries, its recordings and
metrics grow linearly with it) and extrapolated, labelled as such, beyond (benchmarks/run.py).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import TypedDict

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from benchmarks.machine import Monitor
from iclgd_lens import Episode
from iclgd_lens.core.recording import record_offset

KV_WEIGHTS = ("attn.W_K", "attn.W_V")  # the toolkit's default groups, k and v
KV_BIASES = ("attn.b_K", "attn.b_V")  # trained only where the checkpoint has them (not all zero), as the toolkit does


class Row(TypedDict):
    """One query's recording, float64 on the CPU, per layer where a list."""

    attn_out: list[Float[Tensor, " d_model"]]
    z: list[Float[Tensor, "head d_head"]]
    scores: list[Float[Tensor, "head query_len"]]  # to the query's own tokens, up to the recorded position
    label_logprobs: list[float]  # per class: mean log-prob of its label's tokens
    pred: int


def naive_compare(model: HookedTransformer, episode: Episode, lr: float, seed: int, monitor: Monitor) -> dict:
    """The naive pipeline, stage by stage: {"scores", "records", "stages": {name: {seconds, peak_rss_bytes}}}."""
    stages, records = {}, {}
    for name, prefix in (("zs", episode.zs_prefix), ("icl", episode.icl_prefix)):
        with monitor.stage(f"naive record {name}") as stages[f"record {name}"]:
            records[name] = naive_record(model, episode, prefix)
    for method in ("gd", "lcgd"):
        with monitor.stage(f"naive fit {method}") as stages[f"fit {method}"]:
            tuned = naive_finetune(model, episode, method, lr)
        with monitor.stage(f"naive record {method}") as stages[f"record {method}"]:
            records[method] = naive_record(tuned, episode, episode.zs_prefix)
        del tuned
    with monitor.stage("naive metrics") as stages["metrics"]:
        scores = naive_scores(records, episode.labels, model.W_O.detach().float().cpu(), seed)
    return {"scores": scores, "records": records, "stages": stages}


def naive_finetune(model: HookedTransformer, episode: Episode, method: str, lr: float) -> HookedTransformer:
    """A finetuned copy of the model: SGD on K/V weights (and biases the checkpoint has), one epoch, batch size 1."""
    tuned = copy.deepcopy(model)
    # Grouped-query attention stores K/V as attn._W_K, attn._b_K (one per key-value head).
    by_name: dict[str, list[torch.nn.Parameter]] = {}
    for name, p in tuned.named_parameters():
        by_name.setdefault(name.split(".", 2)[-1].replace("._", "."), []).append(p)
    checkpoint_biases = [n for n in KV_BIASES if any(p.abs().max() > 0 for p in by_name.get(n, []))]
    trained = [p for n in (*KV_WEIGHTS, *checkpoint_biases) for p in by_name.get(n, [])]
    for p in tuned.parameters():
        p.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(trained, lr=lr)
    for demo in episode.train_demos:
        tokens = torch.tensor([[episode.bos, *demo]], device=model.cfg.device)
        loss = tuned(tokens, return_type="loss") if method == "gd" else naive_layer_causal_loss(tuned, tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return tuned.requires_grad_(False)


def naive_layer_causal_loss(model: HookedTransformer, tokens: Int[Tensor, "1 pos"]) -> Float[Tensor, ""]:
    """LCGD's loss written out: each block reads its input detached, its output goes through the final norm and
    unembedding, and the per-layer next-token NLLs are summed."""
    resid, _, shortformer_pos_embed, attention_mask = model.input_to_embed(tokens)
    loss = 0.0
    for block in model.blocks:
        resid = block(resid.detach(), shortformer_pos_embed=shortformer_pos_embed, attention_mask=attention_mask)
        logits = model.unembed(model.ln_final(resid))
        loss = loss + F.cross_entropy(logits[0, :-1].float(), tokens[0, 1:])
    return loss


@torch.no_grad()
def naive_record(model: HookedTransformer, episode: Episode, prefix: Sequence[int]) -> list[Row]:
    """Per query, the whole prompt (prefix + query + first label) through run_with_cache with the full cache."""
    rows = []
    for query in episode.queries:
        at = len(prefix) + record_offset(query, episode.label_tokens, "prediction")
        tokens = torch.tensor([[*prefix, *query, *episode.label_tokens[0]]], device=model.cfg.device)
        logits, cache = model.run_with_cache(tokens)
        label_logprobs = []
        for c, label in enumerate(episode.label_tokens):
            if c > 0 and len(label) > 1:  # a label of several tokens gets its own prompt
                logits = model(torch.tensor([[*prefix, *query, *label]], device=model.cfg.device))
            logprobs = logits[0].float().log_softmax(-1)
            label_logprobs.append(sum(float(logprobs[at + j, t]) for j, t in enumerate(label)) / len(label))
        layers = range(model.cfg.n_layers)
        rows.append(
            {
                "attn_out": [cache[f"blocks.{l}.hook_attn_out"][0, at].double().cpu() for l in layers],
                "z": [cache[f"blocks.{l}.attn.hook_z"][0, at].double().cpu() for l in layers],
                "scores": [
                    cache[f"blocks.{l}.attn.hook_attn_scores"][0, :, at, len(prefix) : at + 1].double().cpu()
                    for l in layers
                ],
                "label_logprobs": label_logprobs,
                "pred": max(range(len(label_logprobs)), key=label_logprobs.__getitem__),
            }
        )
        del cache
    return rows


def cos(a: Float[Tensor, " d"], b: Float[Tensor, " d"]) -> float:
    """Exact cosine; NaN when either vector is zero (the toolkit's arithmetic)."""
    na, nb = float(a.norm()), float(b.norm())
    return float((a / na) @ (b / nb)) if na > 0 and nb > 0 else math.nan


def mean_defined(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def naive_scores(
    records: dict[str, list[Row]], labels: Sequence[int], W_O: Float[Tensor, "layer head d_head d_model"], seed: int
) -> dict:
    """Every metric of result.json's "model" scores, per example, layer and head in Python loops."""
    zs, icl = records["zs"], records["icl"]
    n, n_layers, n_heads = len(zs), len(zs[0]["attn_out"]), zs[0]["z"][0].shape[0]
    W_O = W_O.double()
    # The draw the toolkit makes: Dai's random update r ~ U[0, 1).
    random_update = torch.rand(
        (n, n_layers, W_O.shape[-1]), generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )

    def unit(v):
        return v / v.norm()

    def head_out(row, l, h):
        return row["z"][l][h] @ W_O[l, h]

    def layer_heads(fn) -> dict:
        """fn(i, l, h) -> value: the papers' reduction (heads, examples, layers) and the per-head means."""
        values = [[[fn(i, l, h) for h in range(n_heads)] for l in range(n_layers)] for i in range(n)]
        per_layer = [mean_defined([mean_defined(values[i][l]) for i in range(n)]) for l in range(n_layers)]
        per_head = [
            [mean_defined([values[i][l][h] for i in range(n)]) for h in range(n_heads)] for l in range(n_layers)
        ]
        return {"mean": mean_defined(per_layer), "per_layer": per_layer, "per_head": per_head}

    def layers_only(fn) -> dict:
        per_layer = [mean_defined([fn(i, l) for i in range(n)]) for l in range(n_layers)]
        return {"mean": mean_defined(per_layer), "per_layer": per_layer}

    def against(ft: list[Row]) -> tuple[dict, dict]:
        """A finetuned setting's metrics {name: {mean, per_layer, per_head}} and per-head-only values."""
        metrics = {
            "simaou": layers_only(
                lambda i, l: cos(
                    icl[i]["attn_out"][l] - zs[i]["attn_out"][l], ft[i]["attn_out"][l] - zs[i]["attn_out"][l]
                )
            ),
            "simaou_norm": layers_only(
                lambda i, l: cos(
                    unit(icl[i]["attn_out"][l]) - unit(zs[i]["attn_out"][l]),
                    unit(ft[i]["attn_out"][l]) - unit(zs[i]["attn_out"][l]),
                )
            ),
            "random_simaou": layers_only(
                lambda i, l: cos(unit(icl[i]["attn_out"][l]) - unit(zs[i]["attn_out"][l]), random_update[i, l])
            ),
            "simam_before": layer_heads(lambda i, l, h: cos(icl[i]["scores"][l][h], zs[i]["scores"][l][h])),
            "simam": layer_heads(lambda i, l, h: cos(icl[i]["scores"][l][h], ft[i]["scores"][l][h])),
            "simam_delta": layer_heads(
                lambda i, l, h: cos(
                    icl[i]["scores"][l][h] - zs[i]["scores"][l][h], ft[i]["scores"][l][h] - zs[i]["scores"][l][h]
                )
            ),
        }
        per_head = {
            "simaou": layer_heads(
                lambda i, l, h: cos(
                    head_out(icl[i], l, h) - head_out(zs[i], l, h), head_out(ft[i], l, h) - head_out(zs[i], l, h)
                )
            ),
            "simaou_norm": layer_heads(
                lambda i, l, h: cos(
                    unit(head_out(icl[i], l, h)) - unit(head_out(zs[i], l, h)),
                    unit(head_out(ft[i], l, h)) - unit(head_out(zs[i], l, h)),
                )
            ),
        }
        return metrics, per_head

    accuracy = {s: sum(r["pred"] == y for r, y in zip(rows, labels)) / n for s, rows in records.items()}
    out: dict = {"accuracy": accuracy, "metrics": {}, "per_head": {}}
    for method in (m for m in records if m not in ("zs", "icl")):
        ft = records[method]
        metrics, per_head = against(ft)
        fixed = [i for i in range(n) if ft[i]["pred"] == labels[i] and zs[i]["pred"] != labels[i]]
        rec2ftp = 100.0 * sum(icl[i]["pred"] == labels[i] for i in fixed) / len(fixed) if fixed else math.nan
        out["metrics"][method] = {name: {"mean": v["mean"], "per_layer": v["per_layer"]} for name, v in metrics.items()}
        out["metrics"][method]["rec2ftp"] = rec2ftp
        out["per_head"][method] = {name: v["per_head"] for name, v in per_head.items()} | {
            name: metrics[name]["per_head"] for name in ("simam_before", "simam", "simam_delta")
        }
    if "gd" in records and "lcgd" in records:
        lcgd, gd = records["lcgd"], records["gd"]
        alpha = layer_heads(
            lambda i, l, h: cos(
                lcgd[i]["scores"][l][h] - zs[i]["scores"][l][h], gd[i]["scores"][l][h] - zs[i]["scores"][l][h]
            )
        )
        out["metrics"]["alpha"] = {"mean": alpha["mean"], "per_layer": alpha["per_layer"]}
        out["per_head"]["alpha"] = alpha["per_head"]
    return out
