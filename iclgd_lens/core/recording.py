"""Record, for every query and layer, what the metrics need at one position, through hooks.

The shared prefix ([BOS] for ZS/GD/LCGD, [BOS] + demonstrations for ICL) runs once (`PrefixRun`); its keys/values
are reused by every query batch: on TransformerLens 3 one copy for all rows (`shared_prefix`; where that module does
not reproduce a model's attention, TransformerLens' forward copies the broadcast prefix per row), on TransformerLens
4 (`backend.BRIDGE`) transformers' own cache, copied per batch and repeated per row. Batches are right-padded: in
a causal model padding after a row's last real token changes nothing before it, so each row is read at its own
positions and no attention mask is needed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, fields
from importlib.metadata import version
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from iclgd_lens.backend import BRIDGE, LensModel, final_residual, stacked_output_weights
from iclgd_lens.core.deltas import Delta
from iclgd_lens.core.episodes import Episode
from iclgd_lens.core.hooks import hook_filter, reset_alibi
from iclgd_lens.core.presets import CHOICES, check_choice
from iclgd_lens.core.projections import projections_laid_out_once
from iclgd_lens.core.readout import Readout

if not BRIDGE:  # TransformerLens 3's key-value cache and attention classes
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.components import Attention, GroupedQueryAttention

    from iclgd_lens.core.shared_prefix import shared_prefix_attention, shared_prefix_cache, shared_prefix_supported


@dataclass
class Record:
    """One setting's recording; row i is query i. Scores are zero-padded beyond `query_len`."""

    attn_out: Float[Tensor, "n layer d_model"]  # attention output before the residual add (`attention_output`)
    z: Float[Tensor, "n layer head d_head"]  # per-head mixed values; head h's output is z[:, :, h] @ W_O[l, h]
    scores: Float[Tensor, "n layer head max_query_len"]  # pre-softmax q·k/sqrt(d_head) to the query's own tokens
    query_len: Int[Tensor, " n"]  # number of the query's own keys, from its first token to the recorded position
    label_logprobs: Float[Tensor, "n class"]  # mean log-prob of each label's tokens after the prompt
    position: Int[Tensor, " n"]  # recorded position within the full prompt (prefix included)

    @property
    def pred(self) -> Int[Tensor, " n"]:
        return self.label_logprobs.argmax(-1)

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"pred": self.pred}

    def select(self, rows: Bool[Tensor, " n"]) -> Record:
        """The recording of the queries in `rows` only."""
        return Record(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> Record:
        return cls(**{f.name: tensors[f.name] for f in fields(cls)})


def record_offset(query: Sequence[int], label_tokens: Sequence[Sequence[int]], position: str) -> int:
    """Index of the recorded token within query (+ first label): `prediction` is the last prompt token (the one
    that predicts the label); `first_option` is the last token of the first label (the reference code)."""
    check_choice("position", position, CHOICES["position"])
    return len(query) - 1 + (len(label_tokens[0]) if position == "first_option" else 0)


@dataclass(frozen=True)
class Prompts:
    """What a recording runs: the shared `prefix` + each query (+ label tokens), read at `position`; rows are
    right-padded with `pad_token`. `Prompts.of(episode, prefix)` takes an episode's queries and label words."""

    queries: Sequence[Sequence[int]]
    label_tokens: Sequence[Sequence[int]]
    prefix: Sequence[int]
    position: str = "prediction"
    pad_token: int = 0

    def __post_init__(self) -> None:
        check_choice("position", self.position, CHOICES["position"])

    @classmethod
    def of(
        cls,
        episode: Episode,
        prefix: Sequence[int],
        position: str = "prediction",
        queries: Sequence[Sequence[int]] | None = None,
    ) -> Prompts:
        """`episode`'s queries (or `queries`) after `prefix`, scored on its label words, padded with its BOS."""
        chosen = episode.queries if queries is None else queries
        return cls(chosen, episode.label_tokens, prefix, position, episode.bos)


@torch.no_grad()
def record(
    model: LensModel, prompts: Prompts, delta: Delta | None = None, batch_size: int = 8, desc: str | None = None
) -> Record:
    """Run `prompts` (through `delta`'s hooks if given) and record at their position.

    Row 0 of a query is query + first label (so `first_option` is inside it); a class whose label has several
    tokens gets its own row query + label to score its mean log-prob; single-token labels are read off row 0.
    A label's last token is left out of its row unless the record is at `first_option`: nothing reads the
    prediction it makes. `batch_size` queries run per forward; `desc` names a progress bar (None: no bar).
    Returns the `Record`: per query and layer, what the metrics need.
    """
    derived = derives_attn_out(model)
    points = tuple(p for p in RECORDED_POINTS if not (derived and p == "attn_out"))
    with projections_laid_out_once():
        merged = _run_queries(model, prompts, delta, batch_size, desc, points)
    attn_out = attention_output(merged["z"], *output_weights(model, delta)) if derived else merged["attn_out"]
    return Record(
        attn_out=attn_out,
        z=merged["z"],
        scores=merged["attn_scores"],
        query_len=merged["query_len"],
        label_logprobs=merged["label_logprobs"],
        position=merged["position"],
    )


def derives_attn_out(model: LensModel) -> bool:
    """Whether the attention output is W_O·z + b_O (`attention_output`): TransformerLens' plain and grouped-query
    attention with no norm after it (Gemma 2/3 normalise it: there the recording reads hook_attn_out itself). On
    TransformerLens 4 the recording reads hook_attn_out."""
    return (
        not BRIDGE
        and all(type(block.attn) in (Attention, GroupedQueryAttention) for block in model.blocks)
        and not model.cfg.use_normalization_before_and_after
        and not model.cfg.load_in_4bit
    )


def output_weights(
    model: LensModel, delta: Delta | None = None
) -> tuple[Float[Tensor, "layer head d_head d_model"], Float[Tensor, "layer d_model"]]:
    """W_O and b_O as `delta` leaves them (W_O + ΔW_O, b_O + Δb_O), float32 on the CPU."""
    W_O, b_O = stacked_output_weights(model)
    if delta is None:
        return W_O, b_O
    return W_O + delta.stacked(model, "attn.W_O"), b_O + delta.stacked(model, "attn.b_O")


def attention_output(
    z: Float[Tensor, "n layer head d_head"],
    W_O: Float[Tensor, "layer head d_head d_model"],
    b_O: Float[Tensor, "layer d_model"],
) -> Float[Tensor, "n layer d_model"]:
    """W_O·z + b_O computed in float64 and rounded to float32: the same bits wherever it is computed (the recording,
    `Result.load`, another machine's thread count), so a result folder need not store it (docs/reference/
    result-format.md). Equal to TransformerLens' hook_attn_out to float32 rounding."""
    return (torch.einsum("nlhe,lhed->nld", z.double(), W_O.double()) + b_O.double()).float()


@torch.no_grad()
def read_points(
    model: LensModel, prompts: Prompts, points: Sequence[str], delta: Delta | None = None, batch_size: int = 8
) -> dict[str, Float[Tensor, "n layer ..."]]:
    """Every layer's activation at each hook point of `points` (`hooks.HOOK_POINTS` roles, e.g. "resid_pre") at the
    position `record` records, from the same runs (the prefix once, its keys and values shared), float32 on the
    CPU; also "label_logprobs" and "position" as in `Record`."""
    merged = _run_queries(model, prompts, delta, batch_size, None, tuple(points))
    return {key: merged[key] for key in (*points, "label_logprobs", "position")}


RECORDED_POINTS = ("attn_out", "z", "attn_scores")  # what a Record holds per layer


def _run_queries(
    model: LensModel,
    prompts: Prompts,
    delta: Delta | None,
    batch_size: int,
    desc: str | None,
    points: tuple[str, ...],
) -> dict[str, Tensor]:
    delta_hooks = delta.hooks(model) if delta is not None else []
    queries, prefix = prompts.queries, prompts.prefix
    multi_token = [c for c, t in enumerate(prompts.label_tokens) if len(t) > 1]
    order = sorted(range(len(queries)), key=lambda i: len(queries[i]))  # similar lengths batch together
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    parts: list[dict[str, Tensor]] = []
    readout = Readout(model)
    with model.hooks(delta_hooks), prefix_attention(model):
        prefix_run = PrefixRun.of(model, prefix)
        for batch in tqdm(batches, desc=desc, disable=desc is None, leave=False):
            parts.append(
                _record_batch(model, readout, prefix_run, [queries[i] for i in batch], prompts, multi_token, points)
            )
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    max_len = max(p["attn_scores"].shape[-1] for p in parts) if "attn_scores" in points else 0
    merged = {
        key: torch.cat([_pad_last(p[key], max_len) if key == "attn_scores" else p[key] for p in parts])[inverse]
        for key in parts[0]
    }
    merged["position"] = merged["position"] + len(prefix)
    return merged


def _pad_last(t: Tensor, length: int) -> Tensor:
    return torch.nn.functional.pad(t, (0, length - t.shape[-1]))


def prefix_attention(model: LensModel) -> AbstractContextManager:
    """The context in which rows attend a `PrefixRun`: on TransformerLens 3 the shared-prefix attention where
    `shared_prefix` reproduces the model's attention (one copy of the prefix for every row), else the model's own."""
    return shared_prefix_attention(model) if not BRIDGE and shared_prefix_supported(model) else nullcontext()


@dataclass(frozen=True)
class PrefixRun:
    """The prefix's keys and values, computed once (through the hooks in place, a delta's among them) for every
    query row to attend: TransformerLens 3's cache, or on the bridge transformers' own cache."""

    cache: Any  # TransformerLensKeyValueCache, or transformers' DynamicCache on TransformerLens 4
    length: int

    @classmethod
    def of(cls, model: LensModel, prefix: Sequence[int]) -> PrefixRun:
        tokens = torch.tensor([list(prefix)], device=model.cfg.device)
        if BRIDGE:
            from transformers import DynamicCache

            # Full layers everywhere: a sliding-window layer keeps every key, masked by position as in a whole-prompt
            # forward, so that the recorded scores index the same keys.
            cache = DynamicCache()
            final_residual(model, tokens, past_key_values=cache)  # fills it; nothing above the last block runs
            # from transformers 5.24 on (past_key_values renamed to cache), GPT-2 and Llama models drop the cache
            # TransformerLens 4.3's bridge hands them: every query would silently lose its prefix (pyproject.toml pins)
            if cache.get_seq_length() != len(prefix):
                raise RuntimeError(
                    f"transformers {version('transformers')} did not fill the key-value cache given to the bridge "
                    f"({cache.get_seq_length()} of {len(prefix)} prefix tokens); install the versions make test-tl4 "
                    "tests: pip install 'transformers>=5.9,<5.24'"
                )
        else:
            cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch_size=1)
            final_residual(model, tokens, past_kv_cache=cache, attention_mask=torch.ones_like(tokens))
        return cls(cache, len(prefix))

    def attended_by(self, tokens: Int[Tensor, "row pos"]) -> dict[str, Any]:
        """The forward's arguments for `tokens` after the prefix: TransformerLens 3 reads one frozen copy of the
        prefix for every row (`shared_prefix_cache`); transformers extends a cache in place, so each batch gets its
        own copy, repeated per row."""
        if BRIDGE:
            cache = copy.deepcopy(self.cache)
            cache.batch_repeat_interleave(len(tokens))
            return {"past_key_values": cache}
        return {
            "past_kv_cache": shared_prefix_cache(self.cache, len(tokens)),
            "attention_mask": torch.ones_like(tokens),
        }


def _record_batch(
    model: LensModel,
    readout: Readout,
    prefix_run: PrefixRun,
    queries: list[Sequence[int]],
    prompts: Prompts,
    multi_token: list[int],
    points: tuple[str, ...],
) -> dict[str, Tensor]:
    """One batch of `prompts`' queries after the prefix's cached keys and values: the rows hold the queries' tokens
    alone, and the hooks see them from position 0."""
    label_tokens, position = prompts.label_tokens, prompts.position
    device = model.cfg.device
    n = len(queries)
    # Rows: one per query with its first label, then one per (query, multi-token class).
    rows = [(i, 0) for i in range(n)] + [(i, c) for c in multi_token if c != 0 for i in range(n)]
    row_of = {key: r for r, key in enumerate(rows)}
    # A label's last token is input only where it is recorded (first_option): its own prediction is never read.
    label_end = None if position == "first_option" else -1
    sequences = [[*queries[i], *label_tokens[c][:label_end]] for i, c in rows]
    prefix_len = prefix_run.length
    width = max(len(s) for s in sequences)
    tokens = torch.tensor([s + [prompts.pad_token] * (width - len(s)) for s in sequences], device=device)

    at = torch.tensor([record_offset(q, label_tokens, position) for q in queries], device=device)
    query_rows = torch.arange(n, device=device)
    max_len = int(at.max()) + 1
    key_index = prefix_len + torch.arange(max_len, device=device)  # the query's own keys, from its first token
    key_mask = torch.arange(max_len, device=device)[None, :] <= at[:, None]  # [n, max_len]

    found: dict[str, list[Tensor]] = {point: [] for point in points}

    def read_at(point: str) -> Callable:
        def hook(t: Float[Tensor, "row pos ..."], hook) -> None:
            found[point].append(t[query_rows, at])

        return hook

    def read_scores(t: Float[Tensor, "row head pos key"], hook) -> None:
        s = t[query_rows, :, at][:, :, key_index.clamp(max=t.shape[-1] - 1)]  # [n, head, max_len]
        found["attn_scores"].append(torch.where(key_mask[:, None, :], s, 0.0))

    record_hooks = [(hook_filter(p), read_scores if p == "attn_scores" else read_at(p)) for p in points]
    reset_alibi(model)
    with model.hooks(record_hooks):
        resid = final_residual(model, tokens, **prefix_run.attended_by(tokens))
    label_logprobs = _label_logprobs(readout, resid, queries, label_tokens, row_of)
    return {point: torch.stack(found[point], 1).float().cpu() for point in points} | {
        "query_len": (at + 1).cpu(),
        "label_logprobs": label_logprobs.cpu(),
        "position": at.cpu(),
    }


def _label_logprobs(
    readout: Readout,
    resid: Float[Tensor, "row pos d_model"],
    queries: list[Sequence[int]],
    label_tokens: Sequence[Sequence[int]],
    row_of: dict[tuple[int, int], int],
) -> Float[Tensor, "n class"]:
    """Mean log-prob of each label's tokens; the unembedding runs only at the positions that predict them."""
    rows, positions, targets, owners = [], [], [], []
    n_classes = len(label_tokens)
    for i, query in enumerate(queries):
        for c, label in enumerate(label_tokens):
            row = row_of[(i, c)] if len(label) > 1 else row_of[(i, 0)]
            for j, token in enumerate(label):
                rows.append(row)
                positions.append(len(query) - 1 + j)
                targets.append(token)
                owners.append(i * n_classes + c)
    device = resid.device
    picked = resid[torch.tensor(rows, device=device), torch.tensor(positions, device=device)]
    logits = readout(picked[None])[0].float()
    logprobs = logits.log_softmax(-1)[torch.arange(len(rows), device=device), torch.tensor(targets, device=device)]
    owner = torch.tensor(owners, device=device)
    total = torch.zeros(len(queries) * n_classes, device=device).index_add_(0, owner, logprobs)
    count = torch.zeros_like(total).index_add_(0, owner, torch.ones_like(logprobs))
    return (total / count).view(len(queries), n_classes)
