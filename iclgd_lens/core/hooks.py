"""Every hook point and per-block parameter the toolkit uses, named in one place (TransformerLens 3's
HookedTransformer names, which TransformerLens 4's TransformerBridge also answers to as aliases).

The pipeline asks for a point by its role and layer (`hook_name("z", 3)`) and for a parameter by its block-local
name and layer (`parameter_name("attn.W_K", 3)`), never writes a name itself, so that another backend can answer
with its own names. `reset_alibi` is the one piece of backend state the pipeline
touches.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from iclgd_lens.backend import LensModel

HOOK_POINTS = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",  # a block's input
    "resid_mid": "blocks.{layer}.hook_resid_mid",  # after attention's residual add (the MLP's input)
    "resid_post": "blocks.{layer}.hook_resid_post",  # a block's output
    "attn_out": "blocks.{layer}.hook_attn_out",  # attention output after W_O and b_O, before the residual add
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "q": "blocks.{layer}.attn.hook_q",  # [batch, pos, head, d_head], before any rotary embedding
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "z": "blocks.{layer}.attn.hook_z",  # per-head mixed values, before W_O
    "attn_scores": "blocks.{layer}.attn.hook_attn_scores",  # pre-softmax, scaled, masked
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "mlp_pre": "blocks.{layer}.mlp.hook_pre",  # before the activation (a gated MLP's gate)
    "mlp_pre_linear": "blocks.{layer}.mlp.hook_pre_linear",  # a gated MLP's linear branch
    "mlp_post": "blocks.{layer}.mlp.hook_post",  # after the activation (and a gated MLP's product)
    "pos_embed": "hook_pos_embed",  # learned absolute positions (no layer)
}


def hook_name(point: str, layer: int | None = None) -> str:
    """The name of hook point `point` (a key of HOOK_POINTS) in `layer`."""
    if point not in HOOK_POINTS:
        raise KeyError(f"unknown hook point {point!r}; the toolkit uses {sorted(HOOK_POINTS)}")
    return HOOK_POINTS[point].format(layer=layer)


def parameter_name(local: str, layer: int) -> str:
    """The model's name of block `layer`'s parameter `local` (e.g. "attn.W_K" -> "blocks.3.attn.W_K")."""
    return f"blocks.{layer}.{local}"


def parameter_layer(name: str) -> int:
    """The block a parameter name belongs to ("blocks.3.attn.W_K" -> 3)."""
    return int(name.split(".")[1])


def block_prefix(layer: int) -> str:
    """What every parameter name of block `layer` starts with."""
    return parameter_name("", layer)


def hook_filter(point: str) -> Callable[[str], bool]:
    """A name filter matching `point` in every layer (for `model.hooks` / `run_with_hooks` filters)."""
    pattern = re.compile(re.escape(HOOK_POINTS[point]).replace(re.escape("{layer}"), r"\d+") + "$")
    return lambda name: pattern.match(name) is not None


def reset_alibi(model: LensModel) -> None:
    """Make ALiBi scores exactly slope·(key - query) at absolute positions.

    TransformerLens keeps each layer's ALiBi bias at the longest length seen so far and slices its last rows, so
    pre-softmax scores (not the pattern) shift by a per-query constant that depends on earlier calls (and in fp16
    their rounding too). Cleared, the bias is rebuilt at this call's key length, whose last rows are the queries'
    absolute positions.
    """
    if model.cfg.positional_embedding_type == "alibi":
        for block in model.blocks:
            block.attn.alibi = None
