"""circuitsvis views of ICL against GD and LCGD: attention patterns side by side, and per-head score changes.

Each function returns an `Html` block: shown as is in a notebook cell, or placed into the HTML report.
"""

from __future__ import annotations

from collections.abc import Sequence

from iclgd_lens.analysis.heads.patterns import Patterns
from iclgd_lens.core.results import Result
from iclgd_lens.views.html import Html, component, grid, heading

SETTING_NAMES = {"zs": "ZS", "icl": "ICL", "gd": "GD", "lcgd": "LCGD"}
MAX_COLUMNS = 160  # larger patterns make circuitsvis (and notebooks) slow: collapse the demonstrations instead


def attention_view(patterns: Patterns) -> Html:
    """For each recorded layer, the settings' attention heads side by side (rows: the query's tokens; columns: BOS,
    each demonstration, the query's tokens)."""
    if len(patterns.tokens) > MAX_COLUMNS:
        raise ValueError(
            f"{len(patterns.tokens)} columns are too many to draw ({MAX_COLUMNS} at most); record the patterns with "
            "collapse=True (one column per demonstration)"
        )
    parts = [
        heading(
            f"Attention of query {patterns.query}: "
            + ("demonstrations collapsed, one column each" if patterns.collapsed else "every token")
        )
    ]
    for i, layer in enumerate(patterns.layers):
        cells = []
        for setting, attention in patterns.attention.items():
            heads = attention[i]
            names = [f"L{layer}H{h}" for h in range(heads.shape[0])]
            cells.append(
                (
                    SETTING_NAMES.get(setting, setting),
                    component(
                        "AttentionHeads",
                        attention=heads,
                        tokens=patterns.tokens,
                        attentionHeadNames=names,
                        maskUpperTri=True,
                    ),
                )
            )
        parts.append(heading(f"layer {layer}", 4) + grid(cells, len(cells)))
    return Html("".join(parts))


def score_change_view(result: Result, query: int = 0, layers: Sequence[int] | None = None, tokenizer=None) -> Html:
    """Per head, the change of the pre-softmax scores from the recorded position to the query's own tokens:
    m_ICL − m_ZS beside m_GD − m_ZS and m_LCGD − m_ZS (hover a token for every head's value; pick a head to
    colour by it). From the saved records alone; `tokenizer` (e.g. model.tokenizer) labels the tokens, which are
    shown as ids without it."""
    zs = result.records["zs"]
    if not 0 <= query < len(zs.query_len):
        raise ValueError(f"query {query} is out of range: this result has {len(zs.query_len)} queries")
    n_layers = zs.scores.shape[1]
    layers = list(layers) if layers is not None else list(range(n_layers))
    episode = result.episode
    keys = list(episode.queries[query])
    if result.config.get("position") == "first_option":
        keys += list(episode.label_tokens[0])
    length = int(zs.query_len[query])
    tokens = [tokenizer.decode([t]) if tokenizer is not None else str(t) for t in keys[:length]]
    settings = [s for s in ("icl", *result.methods) if s in result.records]
    parts = [heading(f"Score changes of query {query} (pre-softmax, recorded position to the query's tokens)")]
    for layer in layers:
        cells = []
        for setting in settings:
            change = result.records[setting].scores[query, layer, :, :length] - zs.scores[query, layer, :, :length]
            labels = [f"H{h}" for h in range(change.shape[0])]
            cells.append(
                (
                    f"{SETTING_NAMES.get(setting, setting)} − ZS",
                    component("ColoredTokensMulti", tokens=tokens, values=change.T.contiguous(), labels=labels),
                )
            )
        parts.append(heading(f"layer {layer}", 4) + grid(cells, len(cells)))
    return Html("".join(parts))
