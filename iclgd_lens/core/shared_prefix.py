"""Attention of a batch of query rows against one cached prefix, without a per-row copy of its keys and values.

TransformerLens' key-value cache concatenates the cached keys and values with each batch's, so a prefix broadcast
to B rows is copied B times in every layer (and its keys re-rotated each time): at a 760-token ICL prefix that copy
is most of an ICL recording's cost. Here the prefix's keys (rotated once) and values stay one [prefix, kv_head,
d_head] tensor, the queries attend to them with the batch folded into the query positions, and to their own tokens
as usual; the two score blocks meet in one softmax. The hook points the toolkit reads fire as in TransformerLens'
forward, with the same shapes: hook_q/k/v (the rows' own tokens), hook_rot_q/k (the same, rotated),
hook_attn_scores and hook_pattern ([batch, head, query_pos, prefix + query_pos], causal and window masks applied
by TransformerLens' own `apply_causal_mask`), hook_z; the attention output is W_O·z + b_O.

Attention variants this forward does not reproduce run TransformerLens' own forward on the same cache, broadcast
(`shared_prefix_supported` says which); both paths are tested against full forwards of whole prompts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
from transformer_lens.components import Attention, GroupedQueryAttention
from transformer_lens.components.abstract_attention import AbstractAttention
from transformer_lens.utilities.activation_functions import apply_softcap

from iclgd_lens.backend import whole_projection_qk_norm

POSITIONS = ("standard", "shortformer", "rotary", "alibi")  # the positional schemes reproduced here


def shared_prefix_supported(model: HookedTransformer) -> bool:
    """Whether every block's attention is one this module reproduces exactly (plain or grouped-query causal
    attention, absolute, rotary or ALiBi positions, qk-norm, soft-capping, local windows); anything else (attention
    sinks, log-n scaling, dynamic NTK rotary, 4-bit weights, split inputs, per-head results, OLMo's qk-norm, QKV
    clipping) keeps TransformerLens' forward."""
    cfg = model.cfg
    return (
        all(type(block.attn) in (Attention, GroupedQueryAttention) for block in model.blocks)
        and cfg.positional_embedding_type in POSITIONS
        and cfg.attention_dir == "causal"
        and not any(
            (
                cfg.use_attn_result,
                cfg.load_in_4bit,
                cfg.use_split_qkv_input,
                cfg.use_attn_in,
                cfg.use_logn_attn,
                cfg.use_attention_sinks,
                cfg.use_dynamic_ntk_rope,
                cfg.clip_qkv is not None,
            )
        )
        and not whole_projection_qk_norm(model)
    )


class SharedPrefixEntry(TransformerLensKeyValueCacheEntry):
    """One layer's prefix, broadcast to the batch for TransformerLens (its shape checks and position offset, and its
    own forward where this module's does not run: a view, copied only there), with the single copy `_forward`
    reads."""

    def __init__(self, entry: TransformerLensKeyValueCacheEntry, batch: int):
        keys, values = entry.past_keys, entry.past_values  # [1, prefix, kv_head, d_head], keys before rotary
        super().__init__(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1), frozen=True)
        self.prefix_keys: Float[Tensor, "1 prefix kv_head d_head"] = keys
        self.prefix_values: Float[Tensor, "prefix kv_head d_head"] = values[0]


def shared_prefix_cache(cache: TransformerLensKeyValueCache, batch: int) -> TransformerLensKeyValueCache:
    """The one-row prefix `cache` for a batch of `batch` rows, frozen (query tokens are never appended to it)."""
    entries = [SharedPrefixEntry(e, batch) for e in cache.entries]
    return TransformerLensKeyValueCache(entries, cache.previous_attention_mask.expand(batch, -1), frozen=True)


@contextmanager
def shared_prefix_attention(model: HookedTransformer) -> Iterator[None]:
    """Within the block, every attention given a `SharedPrefixEntry` runs `_forward` (any other call runs
    TransformerLens' own forward); the modules' own forward is restored after."""
    attns = [block.attn for block in model.blocks]
    for attn in attns:
        attn.forward = _forward.__get__(attn)
    try:
        yield
    finally:
        for attn in attns:
            del attn.forward


def _forward(
    self: AbstractAttention,
    query_input: Float[Tensor, "batch pos d_model"],
    key_input: Float[Tensor, "batch pos d_model"],
    value_input: Float[Tensor, "batch pos d_model"],
    past_kv_cache_entry: TransformerLensKeyValueCacheEntry | None = None,
    additive_attention_mask: Float[Tensor, "batch 1 1 kv_pos"] | None = None,
    attention_mask: Int[Tensor, "batch offset_pos"] | None = None,
    position_bias: Float[Tensor, "1 head pos kv_pos"] | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    entry = past_kv_cache_entry
    if not isinstance(entry, SharedPrefixEntry) or additive_attention_mask is not None or position_bias is not None:
        return type(self).forward(
            self, query_input, key_input, value_input, entry, additive_attention_mask, attention_mask, position_bias
        )
    q, k, v = self.calculate_qkv_matrices(query_input, key_input, value_input)  # the rows' own tokens
    prefix_keys = entry.prefix_keys
    prefix_len = prefix_keys.shape[1]
    if self.cfg.positional_embedding_type == "rotary":
        prefix_keys = self.apply_rotary(prefix_keys, 0)  # once for all rows
        q = self.hook_rot_q(self.apply_rotary(q, prefix_len))
        k = self.hook_rot_k(self.apply_rotary(k, prefix_len))
    batch, n_query, n_heads, d_head = q.shape
    kv_heads = k.shape[2]  # a query head h reads key-value head h // group, as repeat_interleave pairs them
    q = q.reshape(batch, n_query, kv_heads, n_heads // kv_heads, d_head)
    scores = torch.cat(
        [
            torch.einsum("btkgd,pkd->bkgtp", q, prefix_keys[0].to(q.dtype)),
            torch.einsum("btkgd,bskd->bkgts", q, k),
        ],
        dim=-1,
    ).reshape(batch, n_heads, n_query, prefix_len + n_query)
    scores = apply_softcap(scores / self.attn_scale, self.cfg.attn_scores_soft_cap)
    if self.cfg.positional_embedding_type == "alibi":
        if self.alibi is None or scores.shape[-1] > self.alibi.size(-1):
            self.alibi = AbstractAttention.create_alibi_bias(self.cfg.n_heads, scores.shape[-1], self.cfg.device)
        scores = scores + self.alibi[:, -n_query:, : scores.shape[-1]]
    scores = self.hook_attn_scores(self.apply_causal_mask(scores, prefix_len, attention_mask))
    pattern = F.softmax(scores, dim=-1)
    # TransformerLens' guard, where(isnan(p), 0, p), in one pass: a softmax gives no infinities to convert
    pattern = self.hook_pattern(pattern.nan_to_num(0.0)).to(v.dtype)
    pattern = pattern.reshape(batch, kv_heads, n_heads // kv_heads, n_query, prefix_len + n_query)
    z = torch.einsum("bkgtp,pkd->btkgd", pattern[..., :prefix_len], entry.prefix_values.to(v.dtype))
    z = z + torch.einsum("bkgts,bskd->btkgd", pattern[..., prefix_len:], v)
    z = self.hook_z(z.reshape(batch, n_query, n_heads, d_head))
    w = einops.rearrange(self.W_O, "head d_head d_model -> d_model (head d_head)")
    return F.linear(z.reshape(batch, n_query, n_heads * d_head).to(w.dtype), w, self.b_O)
