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

Each head's value is exact (every head of a layer in one batched forward, `head_runs.ZSBatch.run_heads`; ICL's
patching, which changes the prediction position alone, runs that position alone against the plain run's cached keys
and values where the model allows it, `ZSBatch.run_heads_at_prediction`) or a
first-order estimate (attribution patching, `ZSBatch.estimate`: one forward and one backward pass per label class and
batch for every head of every layer at once). `estimate="atp+verify"` estimates every head, then runs the
`verify_top` heads with the largest estimated effect exactly, and reports the two side by side with Spearman's rank
correlation between them on those heads. The whole-delta and every-head rows are always exact (one forward each).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import pandas as pd
import torch
from jaxtyping import Float, Int
from scipy.stats import spearmanr
from torch import Tensor

from iclgd_lens.analysis.protocol.bootstrap import percentile_interval
from iclgd_lens.backend import LensModel
from iclgd_lens.core.episodes import Episode
from iclgd_lens.core.finetuning import frozen_parameters
from iclgd_lens.core.hooks import hook_name
from iclgd_lens.core.metrics import logodds
from iclgd_lens.core.presets import VERIFY_TOP
from iclgd_lens.core.projections import projections_laid_out_once
from iclgd_lens.core.readout import Readout
from iclgd_lens.core.recording import Prompts, record
from iclgd_lens.core.results import Result
from iclgd_lens.core.zs_batch import ZSBatch

ALL = "all"  # the head of a whole-layer row; the layer and head of the whole delta's row
POSITION = "all+position"  # the head of the patching row that patches every head and the positional embedding
ICL = "icl"  # the method of a patching row that no delta row carries
MIN_ICL_EFFECT = 0.1  # nats of mean label log-odds: below it `patch_restored` is NaN
DRAWS, LEVEL, SEED = 1000, 0.95, 0  # the bootstrap interval of `patch_restored` over queries
ESTIMATES = ("atp+verify", "atp", "exact")
VERIFY = "atp+verify"
ATP = "_atp"  # the suffix of a first-order estimate's column
CHANGES = ("logodds_change", "abs_logodds_change", "majority_share_change", "acc_change")
ATP_CHANGES = tuple(name + ATP for name in CHANGES)
PATCH_COLUMNS = ("patch_logodds_change", "patch_restored", "patch_low", "patch_high")


def check_attributable(result: Result, model: LensModel) -> None:
    if result.config.get("position", "prediction") != "prediction":
        raise ValueError(
            "attribution reads the prediction position; this result recorded at the first option's label token "
            "(position 'first_option'): run compare with --position prediction"
        )
    firsts = [tokens[0] for tokens in result.episode.label_tokens]
    if len(set(firsts)) != len(firsts):
        raise ValueError("the label words share their first token, so first-token log-odds cannot tell them apart")
    result.check_model(model)


def with_queries(result: Result, rows: Sequence[int]) -> Result:
    """The result's records, labels and episode restricted to some of its queries, for attribution (its scores stay
    the whole result's: read no summary from it)."""
    keep = torch.zeros(len(result.labels), dtype=torch.bool)
    keep[list(rows)] = True
    episode = replace(
        result.episode,
        queries=tuple(result.episode.queries[i] for i in rows),
        query_rows=tuple(result.episode.query_rows[i] for i in rows),
        labels=tuple(result.episode.labels[i] for i in rows),
    )
    records = {name: record.select(keep) for name, record in result.records.items()}
    return Result(
        result.config,
        result.scores,
        records,
        result.W_O,
        result.labels[list(rows)],
        episode,
        result.deltas,
        b_O=result.b_O,
    )


def _layers(model: LensModel, layers: Sequence[int] | None) -> list[int]:
    """The layers to attribute: every layer unless some are given."""
    return list(layers) if layers is not None else list(range(model.cfg.n_layers))


def _batches(episode: Episode, size: int) -> tuple[list[list[int]], Tensor]:
    """Query batches of similar lengths (each batch is padded to its longest query: sorted, a SmolLM2 result's 64
    queries carry 24 % fewer padded tokens), and the permutation that puts rows concatenated in batch order back
    in query order."""
    order = sorted(range(len(episode.queries)), key=lambda i: len(episode.queries[i]))
    return [order[i : i + size] for i in range(0, len(order), size)], torch.argsort(torch.tensor(order))


def _first_token_record(model, episode: Episode, prefix, batch_size: int) -> Tensor:
    """First-token label log-probs through the recorder (ICL: the cached demonstration prefix)."""
    firsts = [tokens[:1] for tokens in episode.label_tokens]
    prompts = Prompts(episode.queries, firsts, prefix, pad_token=episode.bos)
    return record(model, prompts, batch_size=batch_size).label_logprobs


def majority_share(predicted: Int[Tensor, " n"], n_classes: int) -> float:
    """The share of queries answered with the most-answered class."""
    return float(torch.bincount(predicted, minlength=n_classes).max() / len(predicted))


def change_against(logprobs: Float[Tensor, "n class"], zs: Float[Tensor, "n class"], labels: Int[Tensor, " n"]) -> dict:
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


Source = Callable[[ZSBatch, int], Tensor]  # (batch, layer) -> the z [batch, pos, head, d_head] a replacement takes


@dataclass
class _Subject:
    """What an attribution replaces, head by head: a method's delta or ICL's outputs; filled by `_per_head` with
    each key's class scores over the queries, exact (log-probs) and first-order (class logits)."""

    source: Source
    # (estimated scores, ZS class logits) -> the size by which atp+verify picks the heads it runs exactly
    rank: Callable[[Tensor, Tensor], float]
    extra_rows: Callable[[ZSBatch], dict]  # exact rows beside the heads, per batch: {(layer, head): scores}
    # (batch, layer, heads) -> exact scores [head, batch, class] with each head's z from `source`; None: run_heads
    run_heads: Callable[[ZSBatch, int, list[int]], Tensor] | None = None
    exact: dict = field(default_factory=dict)

    def exact_heads(self, batch: ZSBatch, layer: int, heads: list[int]) -> Tensor:
        if self.run_heads is not None:
            return self.run_heads(batch, layer, heads)
        return batch.run_heads(layer, heads, self.source(batch, layer))

    approx: dict = field(default_factory=dict)


def check_estimate(estimate: str, verify_top: int) -> None:
    if estimate not in ESTIMATES:
        raise ValueError(f"estimate must be one of {', '.join(ESTIMATES)}, got {estimate!r}")
    if verify_top < 1:
        raise ValueError(f"verify_top must be at least 1, got {verify_top}")


def _per_head(
    model: LensModel,
    episode: Episode,
    layers: Sequence[int],
    batch_size: int,
    estimate: str,
    verify_top: int,
    subjects: Sequence[_Subject],
) -> tuple[Float[Tensor, "n class"], Float[Tensor, "n class"]]:
    """Fills each subject's per-(layer, head) scores: exact (`exact`), or first-order with (layer, ALL) the layer's
    heads together (the others), and with `atp+verify` the `verify_top` heads of largest `rank` exact too. One plain
    forward (and its gradients) per query batch serves every subject. Returns the ZS log-probs and class logits."""
    readout, gradients = Readout(model), estimate != "exact"
    zs, zs_logits, kept = [], [], []
    batches, in_query_order = _batches(episode, batch_size)
    for rows in batches:
        batch = ZSBatch(model, episode, rows, readout, gradients)
        zs.append(batch.plain)
        zs_logits.append(batch.class_logits)
        for subject in subjects:
            for key, scores in subject.extra_rows(batch).items():
                subject.exact.setdefault(key, []).append(scores)
            for layer in layers:
                replacement = subject.source(batch, layer)
                if gradients:
                    terms = batch.estimate(layer, replacement)
                    for head, term in enumerate(terms):
                        subject.approx.setdefault((layer, head), []).append(batch.class_logits + term)
                    subject.approx.setdefault((layer, ALL), []).append(batch.class_logits + terms.sum(0))
                else:
                    every = list(range(model.cfg.n_heads))
                    for head, scores in zip(every, subject.exact_heads(batch, layer, every)):
                        subject.exact.setdefault((layer, head), []).append(scores)
        if estimate == VERIFY:
            batch.grads.clear()  # kept for the verification's runs; its gradients are spent
            kept.append(batch)
    zs_class_logits = torch.cat(zs_logits)[in_query_order]
    for subject in subjects:
        subject.approx = {key: torch.cat(parts)[in_query_order] for key, parts in subject.approx.items()}
        if estimate == VERIFY:
            heads = [key for key in subject.approx if key[1] != ALL]
            sizes = {key: subject.rank(subject.approx[key], zs_class_logits) for key in heads}
            chosen = sorted(heads, key=sizes.__getitem__, reverse=True)[:verify_top]
            by_layer = {layer: [head for l, head in chosen if l == layer] for layer, _ in chosen}
            for batch in kept:
                for layer, layer_heads in by_layer.items():
                    scores = subject.exact_heads(batch, layer, layer_heads)
                    for head, head_scores in zip(layer_heads, scores):
                        subject.exact.setdefault((layer, head), []).append(head_scores)
        subject.exact = {key: torch.cat(parts)[in_query_order] for key, parts in subject.exact.items()}
    return torch.cat(zs)[in_query_order], zs_class_logits


def _delta_subject(model: LensModel, result: Result, method: str, layers: Sequence[int], estimate: str):
    if method not in result.deltas:
        raise ValueError(f"this result has no saved {method!r} delta; re-run compare (it saves deltas.safetensors)")
    delta = result.deltas[method].to(model.cfg.device, model.cfg.dtype)
    layer_hooks = {layer: delta.restricted([layer]).hooks(model) for layer in layers}

    def source(batch: ZSBatch, layer: int) -> Tensor:  # layer l's delta changes nothing below layer l
        return batch.layer_z(layer, layer_hooks[layer])

    def extra_rows(batch: ZSBatch) -> dict:
        rows = {(ALL, ALL): batch.run(delta.hooks(model))}
        if estimate == "exact":  # whole layers: exact runs cost half a forward each, so estimates otherwise
            rows |= {(layer, ALL): batch.run(layer_hooks[layer], from_layer=layer) for layer in layers}
        return rows

    def rank(scores: Tensor, zs_logits: Tensor) -> float:
        return change_against(scores, zs_logits, result.labels)["abs_logodds_change"]

    return _Subject(source, rank, extra_rows)


def _delta_frame(method: str, subject: _Subject, zs: Tensor, zs_logits: Tensor, labels: Tensor) -> pd.DataFrame:
    rows = []
    for key in sorted(subject.exact.keys() | subject.approx.keys(), key=_order):
        row = {"layer": key[0], "head": key[1], "method": method}
        exact, approx = subject.exact.get(key), subject.approx.get(key)
        row |= dict.fromkeys(CHANGES, float("nan")) if exact is None else change_against(exact, zs, labels)
        if subject.approx:  # an estimate was asked for
            row |= (
                dict.fromkeys(ATP_CHANGES, float("nan"))
                if approx is None
                else {name + ATP: value for name, value in change_against(approx, zs_logits, labels).items()}
            )
        rows.append(row)
    return pd.DataFrame(rows)


def delta_effects(
    model: LensModel,
    result: Result,
    method: str,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    estimate: str = "exact",
    verify_top: int = VERIFY_TOP,
) -> pd.DataFrame:
    """(a): rows (layer, head, method, logodds_change, abs_logodds_change, majority_share_change, acc_change)
    against ZS over the queries, exact, and with `estimate` "atp" or "atp+verify" the same four first-order
    (suffix `_atp`; NaN exact values on heads not verified); head "all" for a whole layer (exact when `estimate`
    is "exact", else the sum of its heads' estimates), layer and head "all" for the whole delta (always exact)."""
    check_attributable(result, model)
    check_estimate(estimate, verify_top)
    layers = _layers(model, layers)
    subject = _delta_subject(model, result, method, layers, estimate)
    zs, zs_logits = _per_head(model, result.episode, layers, batch_size, estimate, verify_top, [subject])
    return _delta_frame(method, subject, zs, zs_logits, result.labels)


def _order(key: tuple) -> tuple:
    """Whole delta first, then by layer, the layer's whole row before its heads."""
    layer, head = key
    return (layer != ALL, -1 if layer == ALL else layer, head != ALL, -1 if head == ALL else head)


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


def _patch_subject(model: LensModel, result: Result) -> _Subject:
    episode, labels = result.episode, result.labels
    icl_z = result.records["icl"].z.to(model.cfg.device, model.cfg.dtype)  # [n, layer, head, d_head]

    def source(batch: ZSBatch, layer: int) -> Tensor:
        """The plain z with ICL's at each row's prediction position."""
        z = batch.z[layer].clone()
        z[torch.arange(len(batch.rows), device=z.device), batch.positions] = icl_z[batch.rows, layer]
        return z

    def every_head(batch: ZSBatch) -> list:
        def hook(z: Tensor, hook) -> Tensor:
            return source(batch, hook.layer())

        return [(hook_name("z", l), hook) for l in range(model.cfg.n_layers)]

    def icl_position(batch: ZSBatch) -> list:
        """The ICL prompt's positional embedding at each row's recorded position (prefix + ZS position − 1: the
        ZS prompt's BOS is the prefix's first token)."""

        def hook(pos_embed: Tensor, hook) -> Tensor:
            pos_embed = pos_embed.clone()
            index = torch.arange(len(batch.rows), device=pos_embed.device)
            shifted = batch.positions + len(episode.icl_prefix) - 1
            pos_embed[index, batch.positions] = model.W_pos[shifted].to(pos_embed.dtype)
            return pos_embed

        return [(hook_name("pos_embed"), hook)]

    def extra_rows(batch: ZSBatch) -> dict:
        rows = {(ALL, ALL): batch.run(every_head(batch))}
        if model.cfg.positional_embedding_type == "standard":  # learned absolute positions
            rows[(ALL, POSITION)] = batch.run(every_head(batch) + icl_position(batch))
        return rows

    def rank(scores: Tensor, zs_logits: Tensor) -> float:
        return abs(float(logodds(scores, labels).mean() - logodds(zs_logits, labels).mean()))

    def run_heads(batch: ZSBatch, layer: int, heads: list[int]) -> Tensor:
        """Only the prediction position changes: run it alone where the model allows (`continues_at_prediction`)."""
        if batch.continues_at_prediction():
            return batch.run_heads_at_prediction(layer, heads, icl_z[batch.rows, layer])
        return batch.run_heads(layer, heads, source(batch, layer))

    return _Subject(source, rank, extra_rows, run_heads)


def _patch_frame(
    subject: _Subject, zs: Tensor, zs_logits: Tensor, labels: Tensor, icl: Tensor
) -> tuple[pd.DataFrame, dict]:
    zs, zs_approx = logodds(zs, labels), logodds(zs_logits, labels)
    counts = query_resamples(len(labels))
    rows = []
    for key in sorted(subject.exact.keys() | {key for key in subject.approx if key[1] != ALL}, key=_order):
        row = {"layer": key[0], "head": key[1]} | dict.fromkeys(PATCH_COLUMNS, float("nan"))
        if key in subject.exact:
            odds = logodds(subject.exact[key], labels)
            low, high = percentile_interval(restored_share(odds, zs, icl, counts).numpy(), (1 - LEVEL) / 2)
            row |= {
                "patch_logodds_change": float(odds.mean() - zs.mean()),
                "patch_restored": float(restored_share(odds, zs, icl)),
                "patch_low": low,
                "patch_high": high,
            }
        if subject.approx:  # an estimate was asked for
            odds = logodds(subject.approx[key], labels) if key in subject.approx else None
            row |= (
                {f"patch_logodds_change{ATP}": float("nan"), f"patch_restored{ATP}": float("nan")}
                if odds is None
                else {
                    f"patch_logodds_change{ATP}": float(odds.mean() - zs_approx.mean()),
                    f"patch_restored{ATP}": float(restored_share(odds, zs_approx, icl)),
                }
            )
        rows.append(row)
    effect = float(icl.mean() - zs.mean())
    totals = {"zs": float(zs.mean()), "icl": float(icl.mean()), "icl_effect": effect, "min_icl_effect": MIN_ICL_EFFECT}
    for name, key in (("all_heads", (ALL, ALL)), ("all_heads_position", (ALL, POSITION))):
        if key in subject.exact:
            odds = logodds(subject.exact[key], labels)
            totals |= {name: float(odds.mean()), f"{name}_restored": float(restored_share(odds, zs, icl))}
    if abs(effect) < MIN_ICL_EFFECT:
        totals["note"] = (
            f"the ICL effect on the mean label log-odds is {effect:.3g}, below {MIN_ICL_EFFECT}: no "
            "restored share is computed (NaN)"
        )
    return pd.DataFrame(rows), totals


def _icl_logodds(model: LensModel, result: Result, batch_size: int) -> Float[Tensor, " n"]:
    return logodds(_first_token_record(model, result.episode, result.episode.icl_prefix, batch_size), result.labels)


def patch_effects(
    model: LensModel,
    result: Result,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    estimate: str = "exact",
    verify_top: int = VERIFY_TOP,
) -> tuple[pd.DataFrame, dict]:
    """(b): rows (layer, head, patch_logodds_change, patch_restored, patch_low, patch_high), one per head, one for
    every head of every layer (layer and head "all") and, for learned absolute positions, one for every head and the
    positional embedding (layer "all", head "all+position"); with `estimate` "atp" or "atp+verify" the first-order
    `patch_logodds_change_atp` and `patch_restored_atp` too (NaN exact values on heads not verified; the "all" rows
    are always exact). And the totals: the mean log-odds of ZS, ICL, every head patched (`all_heads`) and every head
    and the position (`all_heads_position`), with their restored shares, the ICL effect and a `note` when it is
    below MIN_ICL_EFFECT."""
    check_attributable(result, model)
    check_estimate(estimate, verify_top)
    layers = _layers(model, layers)
    subject = _patch_subject(model, result)
    zs, zs_logits = _per_head(model, result.episode, layers, batch_size, estimate, verify_top, [subject])
    return _patch_frame(subject, zs, zs_logits, result.labels, _icl_logodds(model, result, batch_size))


def attribution_table(
    model: LensModel,
    result: Result,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    estimate: str = VERIFY,
    verify_top: int = VERIFY_TOP,
) -> tuple[pd.DataFrame, dict]:
    """heads.csv: layer, head, method, the four changes of `delta_effects`, the patching columns of `patch_effects`
    (the patching value is ICL's, the same for every method; whole-layer rows have head "all" and no patching
    value; the whole delta's row, layer and head "all", carries every head's patching value; for learned absolute
    positions a row with method "icl", layer "all" and head "all+position" carries the position patch), with the
    first-order columns (`_atp`) unless `estimate` is "exact"; ranked within each method by the absolute log-odds
    change (its estimate where there is one). The totals are `patch_effects`'; with an estimate, also `estimate`,
    `verify_top` and `agreement` (`estimate_agreement`)."""
    check_attributable(result, model)
    check_estimate(estimate, verify_top)
    methods = [method for method in result.methods if method in result.deltas]
    if not methods:
        raise ValueError("this result has no saved deltas; re-run compare (it saves deltas.safetensors)")
    layers = _layers(model, layers)
    patching = _patch_subject(model, result)
    deltas = {method: _delta_subject(model, result, method, layers, estimate) for method in methods}
    with frozen_parameters(model), projections_laid_out_once():  # gradients are taken with respect to z only
        zs, zs_logits = _per_head(
            model, result.episode, layers, batch_size, estimate, verify_top, [patching, *deltas.values()]
        )
        icl_logodds = _icl_logodds(model, result, batch_size)
    patches, totals = _patch_frame(patching, zs, zs_logits, result.labels, icl_logodds)
    frames = [_delta_frame(method, subject, zs, zs_logits, result.labels) for method, subject in deltas.items()]
    effects = pd.concat(frames, ignore_index=True).astype({"layer": str, "head": str})
    patches = patches.astype({"layer": str, "head": str})
    table = effects.merge(patches, on=["layer", "head"], how="left")
    # patching rows no delta row carries (all heads + position): method "icl", no delta columns
    keys = set(zip(effects.layer, effects["head"]))
    icl_only = patches[[key not in keys for key in zip(patches.layer, patches["head"])]].assign(method=ICL)
    table = pd.concat([table, icl_only], ignore_index=True)
    ranking = "abs_logodds_change" + (ATP if estimate != "exact" else "")
    table = table.sort_values(["method", ranking], ascending=[True, False], kind="stable").reset_index(drop=True)
    totals["estimate"] = estimate
    if estimate != "exact":
        totals |= {"verify_top": verify_top, "agreement": estimate_agreement(table)}
    return table, totals


def estimate_agreement(table: pd.DataFrame) -> dict:
    """Per method, and for ICL patching ("icl"), Spearman's rank correlation between the first-order estimate and
    the exact value over the single heads that have both (the verified ones, or every head when both were run):
    on abs_logodds_change, and on patch_logodds_change. NaN with a `note` below 3 heads or for constant values."""
    heads = table[(table.layer != ALL) & (table["head"] != ALL)]
    subjects = [(method, rows, "abs_logodds_change") for method, rows in heads.groupby("method", sort=False)]
    subjects.append((ICL, heads.drop_duplicates(["layer", "head"]), "patch_logodds_change"))
    agreement = {}
    for name, rows, column in subjects:
        both = rows[rows[column].notna() & rows[column + ATP].notna()]
        entry = {"metric": column, "heads": len(both), "spearman": float("nan")}
        if len(both) < 3:
            entry["note"] = f"{len(both)} heads with both values: too few for a rank correlation"
        elif both[column].nunique() < 2 or both[column + ATP].nunique() < 2:
            entry["note"] = "constant values: no rank correlation"
        else:
            entry["spearman"] = float(spearmanr(both[column], both[column + ATP]).statistic)
        agreement[name] = entry
    return agreement
