"""Per-head attribution: which heads carry GD's and LCGD's update, and which carry the ICL effect.

Both read the label log-odds at the prediction position (the last prompt token) of the ZS prompt:
log p(y) − log Σ_{c≠y} p(c), over the first token of each label word (full-vocabulary log-probabilities).

(a) `delta_effects`: a method's saved delta through one head at a time. Head h of layer l computes its output
    (z, at every position) as the model with layer l's delta would; every other head and layer is the model's
    own. (For grouped-query attention a K/V delta belongs to a key-value head; this gives each query head's share
    of it.) One row per layer too: the delta of that layer alone, every head.
(b) `patch_effects`: activation patching. Head h's output z at layer l and the recorded position, taken from the
    ICL run (the result's own record), replaces the ZS run's; `restored` is the share of the ICL effect on the mean
    log-odds that it brings back: (mean patched − mean ZS) / (mean ICL − mean ZS). Patching every head of every
    layer gives the recorded position ICL's whole residual stream, hence exactly ICL's log-odds (restored = 1).
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from iclgd_lens.deltas import logit_lens
from iclgd_lens.episodes import Episode
from iclgd_lens.recording import record
from iclgd_lens.results import Result

ALL = "all"  # the head of a whole-layer row


def check_attributable(result: Result, model: HookedTransformer) -> None:
    if result.config.get("position", "prediction") != "prediction":
        raise ValueError(
            "attribution reads the prediction position; this result recorded at the first option's label token "
            "(position 'first_option'): run compare with --position prediction"
        )
    firsts = [tokens[0] for tokens in result.episode.label_tokens]
    if len(set(firsts)) != len(firsts):
        raise ValueError("the label words share their first token, so first-token log-odds cannot tell them apart")
    if model.cfg.n_layers != result.W_O["model"].shape[0] or model.cfg.n_heads != result.W_O["model"].shape[1]:
        raise ValueError(f"the model ({model.cfg.model_name}) is not the one this result was computed on "
                         f"({result.config['model']})")  # fmt: skip


def logodds(logprobs: Float[Tensor, "n class"], labels: Int[Tensor, "n"]) -> Float[Tensor, "n"]:
    """log p(y) − log Σ_{c≠y} p(c) per query."""
    logprobs = logprobs.double()
    correct = logprobs.gather(1, labels[:, None])[:, 0]
    others = logprobs.masked_fill(torch.nn.functional.one_hot(labels, logprobs.shape[1]).bool(), float("-inf"))
    return correct - others.logsumexp(1)


def _batches(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


class _ZSBatch:
    """Some queries' ZS prompts, right-padded, with the residual stream entering each of `layers` from one plain
    forward: a run that changes nothing below layer l starts there (TransformerLens' start_at_layer) instead of
    recomputing the layers it shares with the plain run."""

    @torch.no_grad()
    def __init__(self, model: HookedTransformer, episode: Episode, rows: list[int], layers: Sequence[int]) -> None:
        queries = [list(episode.queries[i]) for i in rows]
        width = 1 + max(len(q) for q in queries)
        self.model, self.rows = model, rows
        self.tokens = torch.tensor([[episode.bos, *q] + [episode.bos] * (width - 1 - len(q)) for q in queries],
                                   device=model.cfg.device)  # fmt: skip
        self.positions = torch.tensor([len(q) for q in queries], device=model.cfg.device)
        self.firsts = torch.tensor([t[0] for t in episode.label_tokens], device=model.cfg.device)
        self.resid_pre: dict[int, Tensor] = {}

        def keep(resid: Tensor, hook) -> None:
            self.resid_pre[hook.layer()] = resid.clone()

        with model.hooks([(f"blocks.{l}.hook_resid_pre", keep) for l in layers]):
            self.plain = self._read(model(self.tokens, stop_at_layer=model.cfg.n_layers))

    def _read(self, resid: Tensor) -> Float[Tensor, "batch class"]:
        picked = resid[torch.arange(len(self.rows), device=resid.device), self.positions]
        return logit_lens(self.model, picked).float().log_softmax(-1)[:, self.firsts].cpu()

    @torch.no_grad()
    def run(self, hooks: list, from_layer: int = 0) -> Float[Tensor, "batch class"]:
        """First-token label log-probs at each row's prediction position under `hooks`, which must leave the
        layers below `from_layer` unchanged."""
        model = self.model
        with model.hooks(hooks):
            if from_layer == 0:
                resid = model(self.tokens, stop_at_layer=model.cfg.n_layers)
            else:
                resid = model(self.resid_pre[from_layer], start_at_layer=from_layer, stop_at_layer=model.cfg.n_layers)
        return self._read(resid)


def _first_token_record(model, episode: Episode, prefix, batch_size: int) -> Tensor:
    """First-token label log-probs through the recorder (ICL: the cached demonstration prefix)."""
    firsts = [tokens[:1] for tokens in episode.label_tokens]
    return record(model, episode.queries, firsts, prefix, "prediction", None, batch_size, episode.bos).label_logprobs


def delta_effects(
    model: HookedTransformer,
    result: Result,
    method: str,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
) -> pd.DataFrame:
    """(a): rows (layer, head or "all", method, logodds_change, acc_change) against ZS, means over the queries."""
    check_attributable(result, model)
    if method not in result.deltas:
        raise ValueError(f"this result has no saved {method!r} delta; re-run compare (it saves deltas.safetensors)")
    delta = result.deltas[method].to(model.cfg.device, model.cfg.dtype)
    episode, labels = result.episode, result.labels
    layers = list(layers) if layers is not None else list(range(model.cfg.n_layers))
    plain: list[Tensor] = []
    outcome: dict[tuple[int, object], list[Tensor]] = {}
    for rows in _batches(len(episode.queries), batch_size):
        batch = _ZSBatch(model, episode, rows, layers)
        plain.append(batch.plain)
        for layer in layers:  # layer l's delta changes nothing below layer l
            captured: dict[str, Tensor] = {}

            def keep(z: Tensor, hook) -> None:
                captured["z"] = z.clone()

            layer_delta = delta.restricted([layer]).hooks(model)
            whole = batch.run(layer_delta + [(f"blocks.{layer}.attn.hook_z", keep)], from_layer=layer)
            outcome.setdefault((layer, ALL), []).append(whole)
            for head in range(model.cfg.n_heads):

                def one_head(z: Tensor, hook, head=head) -> Tensor:
                    z = z.clone()
                    z[:, :, head] = captured["z"][:, :, head]
                    return z

                patched = batch.run([(f"blocks.{layer}.attn.hook_z", one_head)], from_layer=layer)
                outcome.setdefault((layer, head), []).append(patched)
    zs = torch.cat(plain)
    base_odds, base_acc = logodds(zs, labels).mean(), (zs.argmax(1) == labels).double().mean()
    rows_out = []
    for (layer, head), parts in outcome.items():
        logprobs = torch.cat(parts)
        rows_out.append({
            "layer": layer, "head": head, "method": method,
            "logodds_change": float(logodds(logprobs, labels).mean() - base_odds),
            "acc_change": float((logprobs.argmax(1) == labels).double().mean() - base_acc),
        })  # fmt: skip
    return pd.DataFrame(rows_out)


def patch_effects(
    model: HookedTransformer, result: Result, layers: Sequence[int] | None = None, batch_size: int = 8
) -> tuple[pd.DataFrame, dict]:
    """(b): rows (layer, head, patch_restored), and the totals {zs, icl, all_heads} of the mean log-odds (with
    every head of every layer patched, and its `restored`, which must be 1)."""
    check_attributable(result, model)
    episode, labels = result.episode, result.labels
    layers = list(layers) if layers is not None else list(range(model.cfg.n_layers))
    icl_z = result.records["icl"].z.to(model.cfg.device, model.cfg.dtype)  # [n, layer, head, d_head]
    icl = logodds(_first_token_record(model, episode, episode.icl_prefix, batch_size), labels).mean()

    def patch(rows: list[int], positions: Tensor, layer: int, heads: Sequence[int]) -> list:
        def hook(z: Tensor, hook) -> Tensor:
            z = z.clone()
            index = torch.arange(len(rows), device=z.device)
            for h in heads:
                z[index, positions, h] = icl_z[rows, layer, h]
            return z

        return [(f"blocks.{layer}.attn.hook_z", hook)]

    every = range(model.cfg.n_heads)
    plain: list[Tensor] = []
    parts: dict[object, list[Tensor]] = {}
    for rows in _batches(len(episode.queries), batch_size):
        batch = _ZSBatch(model, episode, rows, layers)
        plain.append(batch.plain)
        at = batch.positions
        parts.setdefault(ALL, []).append(batch.run([h for l in range(model.cfg.n_layers) for h in patch(rows, at, l, every)]))
        for layer in layers:
            for head in every:
                parts.setdefault((layer, head), []).append(batch.run(patch(rows, at, layer, [head]), from_layer=layer))
    zs = logodds(torch.cat(plain), labels).mean()
    effect = icl - zs

    def restored(logprobs: Tensor) -> float:
        return float((logodds(logprobs, labels).mean() - zs) / effect) if effect != 0 else float("nan")

    table = pd.DataFrame([{"layer": l, "head": h, "patch_restored": restored(torch.cat(p))}
                          for key, p in parts.items() if key != ALL for l, h in [key]])  # fmt: skip
    every_head = torch.cat(parts[ALL])
    totals = {"zs": float(zs), "icl": float(icl), "all_heads": float(logodds(every_head, labels).mean()),
              "all_heads_restored": restored(every_head)}  # fmt: skip
    return table, totals


def attribution_table(
    model: HookedTransformer, result: Result, layers: Sequence[int] | None = None, batch_size: int = 8
) -> tuple[pd.DataFrame, dict]:
    """heads.csv: layer, head, method, logodds_change, acc_change, patch_restored (the patching value is ICL's,
    the same for every method; whole-layer rows have head "all" and no patching value), ranked by effect."""
    patches, totals = patch_effects(model, result, layers, batch_size)
    frames = [delta_effects(model, result, method, layers, batch_size) for method in result.methods
              if method in result.deltas]  # fmt: skip
    if not frames:
        raise ValueError("this result has no saved deltas; re-run compare (it saves deltas.safetensors)")
    effects = pd.concat(frames, ignore_index=True).astype({"head": str})
    table = effects.merge(patches.astype({"head": str}), on=["layer", "head"], how="left")
    table = table.assign(size=table.logodds_change.abs()).sort_values(["method", "size"], ascending=[True, False])
    return table.drop(columns="size").reset_index(drop=True), totals
