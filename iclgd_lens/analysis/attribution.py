"""Per-head attribution: which heads carry GD's and LCGD's update, and which carry the ICL effect.

Both read the label log-odds at the prediction position (the last prompt token) of the ZS prompt:
log p(y) − log Σ_{c≠y} p(c), over the first token of each label word (full-vocabulary log-probabilities).

(a) `delta_effects`: a method's saved delta through one head at a time. Head h of layer l computes its output
    (z, at every position) as the model with layer l's delta would; every other head and layer is the model's
    own. (For grouped-query attention a K/V delta belongs to a key-value head; this gives each query head's share
    of it.) One row per layer too (that layer's delta alone, every head), and one for the whole delta (every layer,
    every head). Each row, against ZS: the signed mean change of the log-odds (which cancels when an update
    pushes every query toward one class), the mean absolute change, the change of the majority-class share (the
    share of queries answered with the most-answered class: an update that pushes every query one way shows here)
    and the accuracy change.
(b) `patch_effects`: activation patching. Head h's output z at layer l and the recorded position, taken from the
    ICL run (the result's own record), replaces the ZS run's; `restored` is the share of the ICL effect on the mean
    log-odds that it brings back: (mean patched − mean ZS) / (mean ICL − mean ZS), with a bootstrap interval over
    queries, and NaN when the ICL effect is below MIN_ICL_EFFECT (a ratio of two near-zero means says nothing).
    Patching every head of every layer gives the recorded position every attention output ICL gives it; with
    rotary or ALiBi positions that is ICL's whole residual stream there, hence exactly ICL's log-odds. With learned
    absolute positions (GPT-2, GPT-Neo, OPT) the ZS position also carries W_pos[ZS position] where ICL carries
    W_pos[prefix + ZS position], which no head carries: the `position` total patches that difference as well, and
    all heads + position restore exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from iclgd_lens.analysis.bootstrap import percentile_interval
from iclgd_lens.core.episodes import Episode
from iclgd_lens.core.hooks import hook_name
from iclgd_lens.core.readout import Readout
from iclgd_lens.core.recording import record
from iclgd_lens.core.results import Result

ALL = "all"  # the head of a whole-layer row; the layer and head of the whole delta's row
POSITION = "all+position"  # the head of the patching row that patches every head and the positional embedding
ICL = "icl"  # the method of a patching row that no delta row carries
MIN_ICL_EFFECT = 0.1  # nats of mean label log-odds: below it `patch_restored` is NaN
DRAWS, LEVEL, SEED = 1000, 0.95, 0  # the bootstrap interval of `patch_restored` over queries


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
        self.model, self.rows, self.readout = model, rows, Readout(model)
        self.tokens = torch.tensor([[episode.bos, *q] + [episode.bos] * (width - 1 - len(q)) for q in queries],
                                   device=model.cfg.device)  # fmt: skip
        self.positions = torch.tensor([len(q) for q in queries], device=model.cfg.device)
        self.firsts = torch.tensor([t[0] for t in episode.label_tokens], device=model.cfg.device)
        self.resid_pre: dict[int, Tensor] = {}

        def keep(resid: Tensor, hook) -> None:
            self.resid_pre[hook.layer()] = resid.clone()

        with model.hooks([(hook_name("resid_pre", l), keep) for l in layers]):
            self.plain = self._read(model(self.tokens, stop_at_layer=model.cfg.n_layers))

    def _read(self, resid: Tensor) -> Float[Tensor, "batch class"]:
        picked = resid[torch.arange(len(self.rows), device=resid.device), self.positions]
        return self.readout(picked).float().log_softmax(-1)[:, self.firsts].cpu()

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


def majority_share(predicted: Int[Tensor, "n"], n_classes: int) -> float:
    """The share of queries answered with the most-answered class."""
    return float(torch.bincount(predicted, minlength=n_classes).max() / len(predicted))


def change_against(logprobs: Float[Tensor, "n class"], zs: Float[Tensor, "n class"], labels: Int[Tensor, "n"]) -> dict:
    """logodds_change (signed mean), abs_logodds_change, majority_share_change, acc_change: `logprobs` against ZS."""
    odds, zs_odds = logodds(logprobs, labels), logodds(zs, labels)
    predicted, zs_predicted = logprobs.argmax(1), zs.argmax(1)
    n_classes = logprobs.shape[1]
    return {
        "logodds_change": float(odds.mean() - zs_odds.mean()),
        "abs_logodds_change": float((odds - zs_odds).abs().mean()),
        "majority_share_change": majority_share(predicted, n_classes) - majority_share(zs_predicted, n_classes),
        "acc_change": float((predicted == labels).double().mean() - (zs_predicted == labels).double().mean()),
    }


def delta_effects(
    model: HookedTransformer,
    result: Result,
    method: str,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
) -> pd.DataFrame:
    """(a): rows (layer, head, method, logodds_change, abs_logodds_change, majority_share_change, acc_change)
    against ZS over the queries; head "all" for a whole layer, layer and head "all" for the whole delta."""
    check_attributable(result, model)
    if method not in result.deltas:
        raise ValueError(f"this result has no saved {method!r} delta; re-run compare (it saves deltas.safetensors)")
    delta = result.deltas[method].to(model.cfg.device, model.cfg.dtype)
    episode, labels = result.episode, result.labels
    layers = list(layers) if layers is not None else list(range(model.cfg.n_layers))
    plain: list[Tensor] = []
    outcome: dict[tuple[object, object], list[Tensor]] = {}
    for rows in _batches(len(episode.queries), batch_size):
        batch = _ZSBatch(model, episode, rows, layers)
        plain.append(batch.plain)
        outcome.setdefault((ALL, ALL), []).append(batch.run(delta.hooks(model)))
        for layer in layers:  # layer l's delta changes nothing below layer l
            captured: dict[str, Tensor] = {}

            def keep(z: Tensor, hook) -> None:
                captured["z"] = z.clone()

            layer_delta = delta.restricted([layer]).hooks(model)
            whole = batch.run(layer_delta + [(hook_name("z", layer), keep)], from_layer=layer)
            outcome.setdefault((layer, ALL), []).append(whole)
            for head in range(model.cfg.n_heads):

                def one_head(z: Tensor, hook, head=head) -> Tensor:
                    z = z.clone()
                    z[:, :, head] = captured["z"][:, :, head]
                    return z

                patched = batch.run([(hook_name("z", layer), one_head)], from_layer=layer)
                outcome.setdefault((layer, head), []).append(patched)
    zs = torch.cat(plain)
    return pd.DataFrame([{"layer": layer, "head": head, "method": method, **change_against(torch.cat(parts), zs, labels)}
                         for (layer, head), parts in outcome.items()])  # fmt: skip


def restored_share(patched: Tensor, zs: Tensor, icl: Tensor, counts: Tensor | None = None) -> Tensor:
    """(mean patched − mean ZS) / (mean ICL − mean ZS) of per-query log-odds [n]; with `counts` [draws, n] (query
    weights of bootstrap resamples) one value per draw; NaN where the ICL effect is below MIN_ICL_EFFECT."""
    weights = torch.ones(1, len(zs), dtype=torch.float64) if counts is None else counts
    mean = lambda v: (weights @ v) / weights.sum(1)  # noqa: E731
    effect = mean(icl) - mean(zs)
    share = (mean(patched) - mean(zs)) / effect
    share = torch.where(effect.abs() >= MIN_ICL_EFFECT, share, torch.nan)
    return share if counts is not None else share[0]


def query_resamples(n: int) -> Tensor:
    """[DRAWS, n] seeded bootstrap counts over queries, shared by every head."""
    generator = torch.Generator().manual_seed(SEED)
    picks = torch.randint(0, n, (DRAWS, n), generator=generator)
    return torch.zeros(DRAWS, n, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones_like(picks, dtype=torch.float64)
    )


def patch_effects(
    model: HookedTransformer, result: Result, layers: Sequence[int] | None = None, batch_size: int = 8
) -> tuple[pd.DataFrame, dict]:
    """(b): rows (layer, head, patch_restored, patch_low, patch_high), one per head, one for every head of every
    layer (layer and head "all") and, for learned absolute positions, one for every head and the positional
    embedding (layer "all", head "all+position"); and the totals: the mean log-odds of ZS, ICL, every head patched
    (`all_heads`) and every head and the position (`all_heads_position`), with their restored shares, the ICL effect
    and a `note` when it is below MIN_ICL_EFFECT."""
    check_attributable(result, model)
    episode, labels = result.episode, result.labels
    layers = list(layers) if layers is not None else list(range(model.cfg.n_layers))
    icl_z = result.records["icl"].z.to(model.cfg.device, model.cfg.dtype)  # [n, layer, head, d_head]
    icl = logodds(_first_token_record(model, episode, episode.icl_prefix, batch_size), labels)
    learned_positions = model.cfg.positional_embedding_type == "standard"

    def patch(rows: list[int], positions: Tensor, layer: int, heads: Sequence[int]) -> list:
        def hook(z: Tensor, hook) -> Tensor:
            z = z.clone()
            index = torch.arange(len(rows), device=z.device)
            for h in heads:
                z[index, positions, h] = icl_z[rows, layer, h]
            return z

        return [(hook_name("z", layer), hook)]

    def icl_position(positions: Tensor) -> list:
        """The ICL prompt's positional embedding at each row's recorded position (prefix + ZS position − 1: the
        ZS prompt's BOS is the prefix's first token)."""

        def hook(pos_embed: Tensor, hook) -> Tensor:
            pos_embed = pos_embed.clone()
            index = torch.arange(len(positions), device=pos_embed.device)
            pos_embed[index, positions] = model.W_pos[positions + len(episode.icl_prefix) - 1].to(pos_embed.dtype)
            return pos_embed

        return [(hook_name("pos_embed"), hook)]

    every = range(model.cfg.n_heads)
    plain: list[Tensor] = []
    parts: dict[object, list[Tensor]] = {}
    for rows in _batches(len(episode.queries), batch_size):
        batch = _ZSBatch(model, episode, rows, layers)
        plain.append(batch.plain)
        at = batch.positions
        all_heads = [h for l in range(model.cfg.n_layers) for h in patch(rows, at, l, every)]
        parts.setdefault((ALL, ALL), []).append(batch.run(all_heads))
        if learned_positions:
            parts.setdefault((ALL, POSITION), []).append(batch.run(all_heads + icl_position(at)))
        for layer in layers:
            for head in every:
                parts.setdefault((layer, head), []).append(batch.run(patch(rows, at, layer, [head]), from_layer=layer))
    zs = logodds(torch.cat(plain), labels)
    odds = {key: logodds(torch.cat(p), labels) for key, p in parts.items()}
    counts = query_resamples(len(labels))
    rows_out = []
    for (layer, head), patched in odds.items():
        low, high = percentile_interval(restored_share(patched, zs, icl, counts).numpy(), (1 - LEVEL) / 2)
        rows_out.append({"layer": layer, "head": head, "patch_restored": float(restored_share(patched, zs, icl)),
                         "patch_low": low, "patch_high": high})  # fmt: skip
    effect = float(icl.mean() - zs.mean())
    totals = {"zs": float(zs.mean()), "icl": float(icl.mean()), "icl_effect": effect, "min_icl_effect": MIN_ICL_EFFECT}
    for name, key in (("all_heads", (ALL, ALL)), ("all_heads_position", (ALL, POSITION))):
        if key in odds:
            totals |= {name: float(odds[key].mean()), f"{name}_restored": float(restored_share(odds[key], zs, icl))}
    if abs(effect) < MIN_ICL_EFFECT:
        totals["note"] = (f"the ICL effect on the mean label log-odds is {effect:.3g}, below {MIN_ICL_EFFECT}: no "
                          "restored share is computed (NaN)")  # fmt: skip
    return pd.DataFrame(rows_out, columns=["layer", "head", "patch_restored", "patch_low", "patch_high"]), totals


def attribution_table(
    model: HookedTransformer, result: Result, layers: Sequence[int] | None = None, batch_size: int = 8
) -> tuple[pd.DataFrame, dict]:
    """heads.csv: layer, head, method, the four changes of `delta_effects`, patch_restored with its interval (the
    patching value is ICL's, the same for every method; whole-layer rows have head "all" and no patching value; the
    whole delta's row, layer and head "all", carries every head's patching value; for learned absolute positions a
    row with method "icl", layer "all" and head "all+position" carries the position patch), ranked by the absolute
    log-odds change."""
    patches, totals = patch_effects(model, result, layers, batch_size)
    frames = [delta_effects(model, result, method, layers, batch_size) for method in result.methods
              if method in result.deltas]  # fmt: skip
    if not frames:
        raise ValueError("this result has no saved deltas; re-run compare (it saves deltas.safetensors)")
    effects = pd.concat(frames, ignore_index=True).astype({"layer": str, "head": str})
    patches = patches.astype({"layer": str, "head": str})
    table = effects.merge(patches, on=["layer", "head"], how="left")
    # patching rows no delta row carries (all heads + position): method "icl", no delta columns
    keys = set(zip(effects.layer, effects["head"]))
    icl_only = patches[[key not in keys for key in zip(patches.layer, patches["head"])]].assign(method=ICL)
    table = pd.concat([table, icl_only], ignore_index=True)
    table = table.sort_values(["method", "abs_logodds_change"], ascending=[True, False], kind="stable")
    return table.reset_index(drop=True), totals
