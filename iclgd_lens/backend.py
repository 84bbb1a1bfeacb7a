"""Which TransformerLens the toolkit runs on, and the model type every module names (`LensModel`).

TransformerLens 3.x builds its own `HookedTransformer` from a checkpoint; 4.x removed that class (importing it
raises) and wraps the Hugging Face model itself in a `TransformerBridge`. The toolkit's pipeline asks for hook
points and parameters by role (`core.hooks`), so most of it runs on either; what differs is named here
(`final_residual`, `residual_after`, `attention_scale`, `block_parameters`, `stacked_output_weights`) or kept in the
modules written for one backend (3.x's key-value cache in `core.shared_prefix`).
docs/architecture.md, "Backends", says what runs on which.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version

import torch
from jaxtyping import Float
from torch import Tensor

TL_VERSION = version("transformer-lens")
BRIDGE = int(TL_VERSION.split(".")[0]) >= 4  # TransformerLens 4.x: TransformerBridge

if BRIDGE:
    from transformer_lens.model_bridge import TransformerBridge as LensModel
else:
    from transformer_lens import HookedTransformer as LensModel

__all__ = [
    "BRIDGE",
    "TL_VERSION",
    "LensModel",
    "attention_scale",
    "block_parameters",
    "final_residual",
    "mlp_input_point",
    "model_architecture",
    "qk_norm",
    "require_hooked_transformer",
    "residual_after",
    "stacked_output_weights",
    "whole_projection_qk_norm",
]


def final_residual(model: LensModel, tokens: Tensor, **kwargs) -> Tensor:
    """The residual stream after the last block, before the final norm ([batch, pos, d_model])."""
    return residual_after(model, tokens, model.cfg.n_layers - 1, **kwargs)


def residual_after(model: LensModel, input: Tensor, layer: int, **kwargs) -> Tensor:
    """The residual stream after block `layer` ([batch, pos, d_model]); `input` tokens, or with `start_at_layer` the
    stream entering that block.

    HookedTransformer returns it for `stop_at_layer=layer + 1`; TransformerBridge returns logits there when that is
    the last block. On the bridge the block's output hook (registered after any other hook there, so it sees what
    they leave) raises the bridge's own StopAtLayerException, whose tensor its forward returns: nothing above it
    (after the last block: the final norm and the [batch, pos, vocab] unembedding, 262k wide for Gemma) runs."""
    if not BRIDGE:
        return model(input, stop_at_layer=layer + 1, **kwargs)
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    def stop(resid: Tensor, hook) -> None:
        raise StopAtLayerException(resid)

    with model.hooks([(f"blocks.{layer}.hook_resid_post", stop)]):
        return model(input, **kwargs)


def mlp_input_point(model: LensModel, layer: int) -> tuple[str, Callable[[Tensor], Tensor]]:
    """Where a hook reads what block `layer`'s MLP reads (the normalised stream), and what turns the hooked tensor
    into it. HookedTransformer has no hook point after ln2: the stream (after attention, or the block's input when
    attention and MLP run in parallel) is normalised by ln2 there. The bridge's MLP input hook holds it; its stream
    hook is ln2's own input hook, inside which calling ln2 would recurse."""
    if BRIDGE:
        return f"blocks.{layer}.mlp.hook_in", lambda t: t
    stream = "hook_resid_pre" if model.cfg.parallel_attn_mlp else "hook_resid_mid"
    return f"blocks.{layer}.{stream}", model.blocks[layer].ln2


def qk_norm(model: LensModel, layer: int, kind: str) -> Callable[[Tensor], Tensor] | None:
    """The normalisation `layer`'s attention applies to its queries (`kind` "q") or keys ("k") after hook_q /
    hook_k and before positions enter (Gemma 3's qk-norm, per head over d_head), as a function of [..., head,
    d_head]; None where the model has none. HookedTransformer: its q_norm / k_norm through `_apply_qk_norm`; the
    bridge: transformers' own module (the bridge's hook_q is q_proj's output, and its config says no qk-norm)."""
    attn = model.blocks[layer].attn
    if BRIDGE:
        return getattr(attn.original_component, f"{kind}_norm", None)
    if not getattr(model.cfg, "use_qk_norm", False):
        return None
    module = attn.q_norm if kind == "q" else attn.k_norm
    return lambda x: attn._apply_qk_norm(x.reshape(-1, 1, *x.shape[-2:]), module).reshape(x.shape)


def model_architecture(model: LensModel) -> str | None:
    """The checkpoint's transformers class name ("LlamaForCausalLM"): HookedTransformer's `original_architecture`,
    the bridge's `architecture`."""
    return getattr(model.cfg, "architecture" if BRIDGE else "original_architecture", None)


def whole_projection_qk_norm(model: LensModel) -> bool:
    """Whether the model's qk-norm normalises the whole query or key projection (all heads together, OLMo 2 and 3,
    OLMoE) rather than each head's vector, which is what the toolkit's own attention arithmetic reproduces."""
    return model_architecture(model) in ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


def attention_scale(model: LensModel, layer: int) -> float:
    """What attention divides q·k by in `layer`: HookedTransformer's attn_scale; on the bridge 1 / transformers' own
    `scaling` (which already holds GPT-2's per-layer scaling and Gemma's query_pre_attn_scalar)."""
    attn = model.blocks[layer].attn
    return float(attn.attn_scale) if not BRIDGE else 1.0 / float(attn.original_component.scaling)


def block_parameters(model: LensModel) -> dict[str, Tensor]:
    """Every parameter by HookedTransformer's name ('blocks.3.attn.W_K', ...), grouped-query attention's K and V per
    key-value head as HookedTransformer stores them ('blocks.3.attn._W_K' [kv_head, d_model, d_head]).

    The bridge's own names are the Hugging Face ones; its `tl_parameters()` gives HookedTransformer's, with K and V
    repeated to every query head, and zeros for biases the checkpoint lacks (HookedTransformer has those zeros too).
    Deltas follow the trained tensor, one per key-value head, as on HookedTransformer."""
    if not BRIDGE:
        return dict(model.named_parameters())
    params = dict(model.tl_parameters())
    cfg = model.cfg
    if cfg.n_key_value_heads and cfg.n_key_value_heads != cfg.n_heads:
        for layer, block in enumerate(model.blocks):
            for kind in "KV":
                params.pop(f"blocks.{layer}.attn.W_{kind}")
                params.pop(f"blocks.{layer}.attn.b_{kind}", None)
                weight = getattr(block.attn, f"W_{kind}")  # [kv_head, d_model, d_head]
                bias = getattr(block.attn, f"b_{kind}", None)
                params[f"blocks.{layer}.attn._W_{kind}"] = weight
                params[f"blocks.{layer}.attn._b_{kind}"] = (
                    bias if bias is not None else weight.new_zeros(weight.shape[0], weight.shape[-1])
                )
    return params


def stacked_output_weights(
    model: LensModel,
) -> tuple[Float[Tensor, "layer head d_head d_model"], Float[Tensor, "layer d_model"]]:
    """Every layer's W_O and b_O, float32 on the CPU. A model without attention output biases has b_O = 0
    (HookedTransformer stores those zeros; TransformerBridge has no b_O then)."""
    W_O = model.W_O.detach().float().cpu()
    b_O = getattr(model, "b_O", None)
    return W_O, torch.zeros(W_O.shape[0], W_O.shape[-1]) if b_O is None else b_O.detach().float().cpu()


def require_hooked_transformer(what: str) -> None:
    """Refuse `what` on TransformerLens 4.x with the reason and the way out."""
    if BRIDGE:
        raise NotImplementedError(
            f"{what} needs TransformerLens 3.x (HookedTransformer); this environment has transformer-lens {TL_VERSION} "
            "(TransformerBridge), which the toolkit supports only in part so far (docs/architecture.md, "
            "\"Backends\"): pip install 'transformer-lens>=3.8,<4'"
        )
