"""Attention patterns of ZS, ICL, GD and LCGD for a few chosen queries of a result, recorded on demand.

A result keeps only what the metrics need at one position; to look at whole patterns, the chosen queries are run
again (ZS and ICL prompts on the model, the ZS prompt through each method's saved delta) and their patterns are
put on one column layout, so the four settings can be shown side by side:

    [BOS] [demo 1] ... [demo k] query tokens          (collapse=True: one column per demonstration, its tokens and
                                                       separator summed; collapse=False: every prefix token)

Rows are the query's own tokens (the destinations that differ between settings); a setting without
demonstrations has zeros in their columns. The layout is square (rows over the same columns, zero above the query),
as circuitsvis' attention views expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from iclgd_lens.backend import LensModel
from iclgd_lens.core.hooks import hook_name
from iclgd_lens.core.results import Result

PROMPTS = ("zs", "icl")  # the settings without a delta; every method the result ran is a setting too
MAX_LAYERS_BY_DEFAULT = 4


@dataclass
class Patterns:
    """One query's attention patterns. `attention[setting]`: [layer, head, column, column] on the shared layout."""

    query: int  # index into the result's queries
    layers: list[int]
    tokens: list[str]  # one label per column
    n_query_tokens: int  # the last columns; the rows that carry attention
    attention: dict[str, Float[Tensor, "layer head column column"]]
    collapsed: bool


def default_layers(n_layers: int) -> list[int]:
    """Every layer of a small model; otherwise the first, the last and two evenly between."""
    if n_layers <= MAX_LAYERS_BY_DEFAULT:
        return list(range(n_layers))
    step = (n_layers - 1) / (MAX_LAYERS_BY_DEFAULT - 1)
    return sorted({round(i * step) for i in range(MAX_LAYERS_BY_DEFAULT)})


def _check(result: Result, model: LensModel, query: int, layers: Sequence[int], settings: Sequence[str]):
    if not 0 <= query < len(result.episode.queries):
        raise ValueError(f"query {query} is out of range: this result has {len(result.episode.queries)} queries")
    bad = [layer for layer in layers if not 0 <= layer < model.cfg.n_layers]
    if bad:
        raise ValueError(f"layers {bad} are out of range: the model has {model.cfg.n_layers} layers")
    known = (*PROMPTS, *result.methods)
    unknown = [s for s in settings if s not in known]
    if unknown:
        raise ValueError(f"unknown settings {unknown}; choose from {list(known)}")
    missing = [s for s in settings if s not in PROMPTS and s not in result.deltas]
    if missing:
        raise ValueError(
            f"this result has no saved {missing} delta (deltas.safetensors: written by compare since the attention "
            "views exist, for the methods it ran); re-run compare, or leave those settings out"
        )
    if model.cfg.d_model != result.W_O["model"].shape[-1] or model.cfg.n_layers != result.W_O["model"].shape[0]:
        raise ValueError(
            f"the model ({model.cfg.model_name}) is not the one this result was computed on ({result.config['model']})"
        )


@torch.no_grad()
def record_patterns(
    model: LensModel,
    result: Result,
    query: int = 0,
    layers: Sequence[int] | None = None,
    settings: Sequence[str] | None = None,
    collapse: bool = True,
) -> Patterns:
    """Patterns of `settings` (default: ZS, ICL and every method with a saved delta) for one query of `result` (the
    model is the one it was computed on)."""
    layers = list(layers) if layers is not None else default_layers(model.cfg.n_layers)
    settings = [*PROMPTS, *(m for m in result.methods if m in result.deltas)] if settings is None else list(settings)
    _check(result, model, query, layers, settings)
    episode = result.episode
    tokens_of_query = list(episode.queries[query])
    if result.config.get("position") == "first_option":  # the recorded position is the first label's last token
        tokens_of_query += list(episode.label_tokens[0])
    n_q = len(tokens_of_query)
    spans = _prefix_columns(
        episode, collapse, lambda t: _decode(model, t)
    )  # columns of the ICL prefix: (label, start, end) in prefix positions
    n_columns = len(spans) + n_q
    labels = [label for label, _, _ in spans] + [_decode(model, t) for t in tokens_of_query]

    attention = {}
    for setting in settings:
        prefix = list(episode.icl_prefix if setting == "icl" else episode.zs_prefix)
        delta = result.deltas[setting].to(model.cfg.device, model.cfg.dtype) if setting not in PROMPTS else None
        full = _patterns(model, prefix + tokens_of_query, layers, delta)  # [layer, head, pos, pos]
        rows = full[:, :, len(prefix) :, :]  # the query's tokens as destinations
        square = torch.zeros(len(layers), model.cfg.n_heads, n_columns, n_columns)
        if setting == "icl":
            for column, (_, start, end) in enumerate(spans):
                square[:, :, -n_q:, column] = rows[..., start:end].sum(-1)
        else:
            square[:, :, -n_q:, 0] = rows[..., 0]  # BOS
        square[:, :, -n_q:, -n_q:] = rows[..., len(prefix) :]
        attention[setting] = square
    return Patterns(query, layers, labels, n_q, attention, collapse)


def _prefix_columns(episode, collapse: bool, decode) -> list[tuple[str, int, int]]:
    """(label, start, end) of each column of the ICL prefix: BOS, then each demonstration with its separator (or
    each of their tokens when not collapsed)."""
    columns, position = [("<bos>", 0, 1)], 1
    for j, demo in enumerate(episode.demos):
        length = len(demo) + len(episode.separator)
        if collapse:
            columns.append((f"[demo {j + 1}]", position, position + length))
        else:
            tokens = [*demo, *episode.separator]
            columns += [(f"d{j + 1}:{decode(t)}", position + i, position + i + 1) for i, t in enumerate(tokens)]
        position += length
    return columns


def _decode(model: LensModel, token: int) -> str:
    return model.tokenizer.decode([token]) if model.tokenizer is not None else str(token)


def _patterns(model: LensModel, tokens: list[int], layers: list[int], delta) -> Tensor:
    found: dict[int, Tensor] = {}

    def keep(pattern: Tensor, hook) -> None:
        found[hook.layer()] = pattern[0].float().cpu()

    hooks = (delta.hooks(model) if delta is not None else []) + [(hook_name("pattern", l), keep) for l in layers]
    with model.hooks(hooks):
        model(torch.tensor([tokens], device=model.cfg.device), stop_at_layer=max(layers) + 1)
    return torch.stack([found[l] for l in layers])
