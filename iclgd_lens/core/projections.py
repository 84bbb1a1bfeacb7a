"""TransformerLens 3's attention projections with each weight's F.linear layout made once, not once per forward.

`transformer_lens.utilities.attention.simple_attn_linear` (3.9) rearranges W_Q, W_K or W_V from
[head, d_model, d_head] into F.linear's [(head d_head), d_model] on every call: a full copy of three weight matrices
per layer per forward (17 % of a ZS recording's time on a GPT-2-small shape in a profile on a busy machine; the
copies are memory-bound, and on a quiet CPU leaving them out saves about 3 %: docs/performance.md). Inside
`projections_laid_out_once()` each weight is laid out once, and F.linear runs the same kernel on the same values,
so every output is bit-identical. A laid-out copy is made for a weight and bias that are parameters (not a
per-call view such as grouped-query attention's repeated W_K) and take no gradient here (a trained weight keeps
TransformerLens' own path and its autograd graph); it is keyed by the parameter and its version counter, so an
in-place edit of the weight makes a new one. TransformerLens 4's bridge runs Hugging Face's
projections, which need no layout: there the context changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from iclgd_lens.backend import BRIDGE

if not BRIDGE:
    from transformer_lens.components import abstract_attention, grouped_query_attention
    from transformer_lens.utilities.attention import simple_attn_linear

    # The modules whose attention forward looks `simple_attn_linear` up by its module-level name.
    CALLERS = (abstract_attention, grouped_query_attention)

# (id(w), id(b)) -> (w, b, their versions, laid-out weight, bias); holding w and b keeps their ids from being reused.
# None outside `projections_laid_out_once`.
_laid_out: dict[tuple[int, int], tuple[Tensor, Tensor, int, Tensor, Tensor]] | None = None


def _laid_out_attn_linear(
    input: Float[Tensor, "batch pos d_model"],
    w: Float[Tensor, "head_index d_model d_head"],
    b: Float[Tensor, "head_index d_head"],
) -> Float[Tensor, "batch pos head_index d_head"]:
    """`simple_attn_linear` with w's and b's layouts cached."""
    cacheable = (
        _laid_out is not None
        and isinstance(w, torch.nn.Parameter)
        and isinstance(b, torch.nn.Parameter)
        and input.device == w.device == b.device
        and not (torch.is_grad_enabled() and (w.requires_grad or b.requires_grad))
    )
    if not cacheable:
        return simple_attn_linear(input, w, b)
    versions = w._version + b._version  # each only grows: any in-place edit changes the sum
    entry = _laid_out.get((id(w), id(b)))
    if entry is None or entry[2] != versions:
        # TransformerLens' own rearrangement, [head, d_model, d_head] -> [(head d_head), d_model], made contiguous
        entry = (w, b, versions, w.detach().permute(0, 2, 1).reshape(-1, w.shape[1]), b.detach().reshape(-1))
        _laid_out[(id(w), id(b))] = entry
    return F.linear(input, entry[3], entry[4]).reshape(input.shape[0], input.shape[1], b.shape[0], b.shape[1])


@contextmanager
def projections_laid_out_once() -> Iterator[None]:
    """Within this block, TransformerLens 3's attention projections reuse each weight's layout (re-entrant: an
    inner block shares the outer one's copies, which are dropped when the outermost ends)."""
    global _laid_out
    if BRIDGE or _laid_out is not None:
        yield
        return
    _laid_out = {}
    for module in CALLERS:
        module.simple_attn_linear = _laid_out_attn_linear
    try:
        yield
    finally:
        for module in CALLERS:
            module.simple_attn_linear = simple_attn_linear
        _laid_out = None
