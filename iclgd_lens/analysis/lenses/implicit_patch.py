"""ICL as one weight update of the whole model: the chained implicit patch of a query.

Goldwaser, Munn, Gonzalvo and Dherin (2025, arXiv 2511.17864) write the whole effect of a context on a query as
weight patches of a model that sees no context, computed layer by layer: block l's patch is read from the zero-shot
run *already patched below*, so that the patches compose. For the query's prediction position p, block l of the
patched zero-shot run (stream x, attention output a, MLP input u, every position seeing the patches below, as weight
changes act) is made to output ICL's block output there:

- **input** (every input matrix W of the MLP: W_in, and a gated MLP's W_gate; TransformerLens layout [d_model,
  d_mlp]): ΔW = u ⊗ ((u_C − u)·W) / ‖u‖², so u·(W + ΔW) = u_C·W and the MLP's hidden is ICL's, h_C. Parallel blocks
  (GPT-NeoX) read u = ln2(x) = ln2(x_C) = u_C: no input patch.
- **output**: the skip connection still carries x + a where ICL's carries x_C + a_C; the difference d = (x_C + a_C) −
  (x + a) (= a_C − a: the stream entering the block is ICL's already, by induction) is written by the MLP:
  - without a norm after the MLP (GPT-2, Llama, NeoX): ΔW_out = h_C ⊗ d / ‖h_C‖² ([d_mlp, d_model]): the MLP
    writes m_C + d at p;
  - with one (Gemma 3's post-MLP RMSNorm, which writes n·γ, n = m / rms(m)): the MLP still writes m_C, whose norm
    output n_C·γ the patch Δγ = d / n_C (elementwise) of the norm's scale turns into n_C·γ + d: the "patch to the
    RMSNorm scale" of the paper, exact where no coordinate of n_C is 0.

The block then outputs ICL's block output at p exactly, so by induction the stream after the last block, and the
logits at p, are ICL's. Every position of the prompt sees the patches (they are weight changes), which is why a
layer's patch must be read from the run patched below: the unchained per-layer patches of `implicit_update` (each
from the unpatched zero-shot run) reproduce each block alone but not the model. The patches are specific to the
query (the paper: token-dependent); `LayerPatch.materialise` writes them as weight deltas (`as_delta`: a `Delta`, run
through its hooks like any learned update), which averaged over queries make one update of the whole model that other
queries can be run through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from iclgd_lens.analysis.lenses.implicit_update import matrix_names, mlp_input
from iclgd_lens.backend import LensModel, residual_after
from iclgd_lens.core.deltas import POST_MLP_SCALE, Delta
from iclgd_lens.core.hooks import hook_name, parameter_name


@dataclass
class LayerPatch:
    """One layer's implicit patch of one query, in factored form (float64, on the model's device): the input
    matrices' rank-1 changes u ⊗ a_W / ‖u‖², and the output's rank-1 change of W_out (h ⊗ d / ‖h‖²) or, after a
    post-MLP norm, the change `gamma` of its scale."""

    u: Float[Tensor, " d_model"]
    a: dict[str, Float[Tensor, " d_mlp"]]  # input matrix -> (u_C − u)·W
    d: Float[Tensor, " d_model"]  # what the output patch writes at the prediction position
    h: Float[Tensor, " d_mlp"] | None  # the hidden it keys on (no post-MLP norm)
    gamma: Float[Tensor, " d_model"] | None  # the post-MLP norm's scale change (post-norm models)

    def materialise(self) -> dict[str, Tensor]:
        """The patch as weight deltas, float64: "mlp.W_in" / "mlp.W_gate" [d_model, d_mlp], "mlp.W_out" [d_mlp,
        d_model] or "ln2_post.w" [d_model]."""
        out = {name: torch.outer(self.u, a) / self.u.dot(self.u) for name, a in self.a.items()}
        if self.h is not None:
            out["mlp.W_out"] = torch.outer(self.h, self.d) / self.h.dot(self.h)
        if self.gamma is not None:
            out[POST_MLP_SCALE] = self.gamma
        return out


def as_delta(model: LensModel, patches: dict[int, dict[str, Tensor]]) -> Delta:
    """Layer -> materialised patch (`LayerPatch.materialise`, or a mean of such) as a `Delta` in the model's dtype:
    its hooks run the model as if the weights were changed, at every position."""
    return Delta(
        {
            parameter_name(name, layer): change.to(model.cfg.dtype)
            for layer, changes in patches.items()
            for name, change in changes.items()
        }
    )


@torch.no_grad()
def icl_targets(model: LensModel, prompt: Sequence[int]) -> dict[str, Tensor]:
    """What ICL computes at the prompt's last position, float64: per layer the skip x_C + a_C ("skip" [layer,
    d_model]) and the MLP input u_C ("u"), and the logits."""
    names = {hook_name(p, layer) for layer in range(model.cfg.n_layers) for p in ("resid_pre", "attn_out")}
    logits, cache = model.run_with_cache(
        torch.tensor([list(prompt)], device=model.cfg.device), names_filter=lambda name: name in names
    )
    resid_pre, attn_out = (
        [cache[hook_name(p, l)][0, -1:] for l in range(model.cfg.n_layers)] for p in ("resid_pre", "attn_out")
    )
    skip = torch.cat([r + a for r, a in zip(resid_pre, attn_out)])
    u = torch.cat([mlp_input(model, l, r, a) for l, (r, a) in enumerate(zip(resid_pre, attn_out))])
    return {"skip": skip.double(), "u": u.to(model.cfg.device), "logits": logits[0, -1].double()}


@torch.no_grad()
def chained_patch(
    model: LensModel, icl_prompt: Sequence[int], zs_prompt: Sequence[int], chained: bool = True
) -> tuple[list[LayerPatch], Float[Tensor, " vocab"]]:
    """The query's implicit patch of every layer, and the logits at the zero-shot prompt's last position with all of
    them applied (float64). `chained=False` reads every layer's patch from the unpatched zero-shot run instead
    (`implicit_update`'s per-layer patches, here with the output written through the weights as well): exact for
    each block alone, not for the model. Every run goes through the model's hook points (as a `Delta` runs), so
    either backend computes it."""
    targets = icl_targets(model, icl_prompt)
    tokens = torch.tensor([list(zs_prompt)], device=model.cfg.device)
    patches: list[LayerPatch] = []
    materialised: dict[int, dict[str, Tensor]] = {}  # each patch as weight deltas, written once
    for layer in range(model.cfg.n_layers):
        patches.append(_layer_patch(model, layer, tokens, materialised if chained else {}, targets))
        materialised[layer] = patches[-1].materialise()
    with model.hooks(as_delta(model, materialised).hooks(model)):
        return patches, model(tokens)[0, -1].double()


def _layer_patch(
    model: LensModel, layer: int, tokens: Tensor, below: dict[int, dict[str, Tensor]], targets: dict[str, Tensor]
) -> LayerPatch:
    """Block `layer`'s patch, read from the zero-shot run under the patches `below` (layer -> materialised patch)."""
    seen = _read_block(
        model, layer, tokens, below, {"x": hook_name("resid_pre", layer), "a": hook_name("attn_out", layer)}
    )
    skip = (seen["x"] + seen["a"]).double()
    u = mlp_input(model, layer, seen["x"][None], seen["a"][None])[0].to(model.cfg.device)
    weights = {name: getattr(model.blocks[layer].mlp, name.split(".")[1]).double() for name in matrix_names(model)}
    a = {} if model.cfg.parallel_attn_mlp else {n: (targets["u"][layer] - u) @ W for n, W in weights.items()}
    inputs_only = below | {layer: LayerPatch(u, a, torch.zeros_like(u), None, None).materialise()}
    post_norm = model.cfg.use_normalization_before_and_after
    reads = {"h": hook_name("mlp_post", layer)} | (
        {"n": f"blocks.{layer}.ln2_post.hook_normalized"} if post_norm else {}
    )
    hidden = {name: value.double() for name, value in _read_block(model, layer, tokens, inputs_only, reads).items()}
    d = targets["skip"][layer] - skip  # what the MLP must add for the block to output ICL's stream
    return LayerPatch(u, a, d, None if post_norm else hidden["h"], d / hidden["n"] if post_norm else None)


def _read_block(
    model: LensModel, layer: int, tokens: Tensor, patches: dict[int, dict[str, Tensor]], reads: dict[str, str]
) -> dict[str, Tensor]:
    """The values at hook points `reads` (name -> hook point, all in block `layer`) at the prediction position of the
    zero-shot run under `patches`; the run stops after block `layer`."""
    seen: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(value: Tensor, hook) -> None:
            seen[name] = value[0, -1]

        return hook

    hooks = as_delta(model, patches).hooks(model) + [(point, keep(name)) for name, point in reads.items()]
    with model.hooks(hooks):
        residual_after(model, tokens, layer)
    return seen
