"""A bundled model written as a Hugging Face GPT-NeoX folder, which both backends load: TransformerLens 3 through its
GPT-NeoX converter, TransformerLens 4 as a TransformerBridge.

Only a model of the form GPT-NeoX computes exports exactly: rotary positions over the whole head (TransformerLens'
default, GPT-NeoX's half-rotation pairing), LayerNorm, GELU, attention then MLP in sequence, and no unembedding
bias (train it with `scripts/train_tiny_icl.py --pos rotary --no-unembed-bias`). Anything else is refused with what
differs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import einops
import torch

from iclgd_lens.backend import require_hooked_transformer


def check_exportable(model) -> None:
    """Refuse a model GPT-NeoX would compute differently, naming what differs."""
    cfg = model.cfg
    problems = {
        "positions are not rotary": cfg.positional_embedding_type != "rotary",
        "rotary covers part of each head": cfg.rotary_dim != cfg.d_head,
        "rotary pairs adjacent dimensions": getattr(cfg, "rotary_adjacent_pairs", False),
        "the norm is not LayerNorm": cfg.normalization_type not in ("LN", "LNPre"),
        "the activation is not exact GELU": cfg.act_fn != "gelu",
        "attention and MLP run in parallel": cfg.parallel_attn_mlp,
        "the MLP is gated": cfg.gated_mlp,
        "the unembedding has a bias": bool(model.unembed.b_U.abs().max() > 0),
    }
    found = [what for what, bad in problems.items() if bad]
    if found:
        raise ValueError(f"this model does not export to GPT-NeoX exactly: {'; '.join(found)}")


def neox_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's weights in GPT-NeoX's names and layouts (its fused query_key_value interleaves each head's q, k
    and v rows)."""
    state = {"gpt_neox.embed_in.weight": model.W_E, "embed_out.weight": model.W_U.T}
    state |= {"gpt_neox.final_layer_norm.weight": model.ln_final.w, "gpt_neox.final_layer_norm.bias": model.ln_final.b}
    for layer, block in enumerate(model.blocks):
        prefix = f"gpt_neox.layers.{layer}."
        attn = block.attn
        weights = torch.stack([attn.W_Q, attn.W_K, attn.W_V], 1)  # [head, qkv, d_model, d_head]
        biases = torch.stack([attn.b_Q, attn.b_K, attn.b_V], 1)  # [head, qkv, d_head]
        state |= {
            prefix + "input_layernorm.weight": block.ln1.w,
            prefix + "input_layernorm.bias": block.ln1.b,
            prefix + "post_attention_layernorm.weight": block.ln2.w,
            prefix + "post_attention_layernorm.bias": block.ln2.b,
            prefix + "attention.query_key_value.weight": einops.rearrange(weights, "h t m e -> (h t e) m"),
            prefix + "attention.query_key_value.bias": einops.rearrange(biases, "h t e -> (h t e)"),
            prefix + "attention.dense.weight": einops.rearrange(attn.W_O, "h e m -> m (h e)"),
            prefix + "attention.dense.bias": attn.b_O,
            prefix + "mlp.dense_h_to_4h.weight": block.mlp.W_in.T,
            prefix + "mlp.dense_h_to_4h.bias": block.mlp.b_in,
            prefix + "mlp.dense_4h_to_h.weight": block.mlp.W_out.T,
            prefix + "mlp.dense_4h_to_h.bias": block.mlp.b_out,
        }
    return {name: tensor.detach().float().contiguous().clone() for name, tensor in state.items()}


def neox_config(model) -> dict:
    """GPT-NeoX's config.json for the model's shapes (sequential residual, rotary over the whole head)."""
    cfg = model.cfg
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": cfg.d_vocab,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.d_mlp,
        "hidden_act": "gelu",
        "rotary_pct": 1.0,
        "rotary_emb_base": int(cfg.rotary_base),
        "max_position_embeddings": cfg.n_ctx,
        "layer_norm_eps": cfg.eps,
        "use_parallel_residual": False,
        "tie_word_embeddings": False,
        "attention_bias": True,
        "torch_dtype": "float32",
    }


def export_neox(model, tokenizer, folder: str | os.PathLike, card: str) -> Path:
    """Write `model` (a HookedTransformer of GPT-NeoX's form) and its tokenizer as a Hugging Face GPT-NeoX folder
    with `card` as its MODEL_CARD.md. Returns the folder."""
    require_hooked_transformer("exporting a bundled model")
    from safetensors.torch import save_file

    check_exportable(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(neox_config(model), indent=1) + "\n")
    save_file(neox_state_dict(model), folder / "model.safetensors", metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)
    (folder / "MODEL_CARD.md").write_text(card)
    return folder
