"""Weight deltas applied through hook points: the Delta type and the hooks that make a model behave as W + ΔW.

A Delta never copies or edits the base model: a change ΔW_K of layer l is applied by adding x·ΔW_K + Δb_K at
layer l's `k` hook point, x being the attention input (ln1 of the block input). GD and LCGD (`finetuning`) train
the delta tensors themselves through the same hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import einops
import torch
from torch import Tensor

from iclgd_lens.backend import LensModel, block_parameters, mlp_input_point
from iclgd_lens.core.hooks import block_prefix, hook_name, parameter_layer, parameter_name
from iclgd_lens.core.presets import BIASES, DEFAULT_GROUPS, check_choice, check_groups

# Parameter group -> TransformerLens parameter names (per block). "mlp" covers gated MLPs' W_gate too; "mlp_in" is the
# MLP's input weights alone (W_in, and a gated MLP's W_gate): the matrices ICL's implicit update changes.
PARAMETER_GROUPS: dict[str, tuple[str, ...]] = {
    "q": ("attn.W_Q", "attn.b_Q"),
    "k": ("attn.W_K", "attn.b_K"),
    "v": ("attn.W_V", "attn.b_V"),
    "o": ("attn.W_O", "attn.b_O"),
    "mlp": ("mlp.W_in", "mlp.b_in", "mlp.W_gate", "mlp.W_out", "mlp.b_out"),
    "mlp_in": ("mlp.W_in", "mlp.W_gate"),
}

Hook = tuple[str, Callable]
POST_NORMED = ("attn.W_O", "attn.b_O", "mlp.W_out", "mlp.b_out")  # outputs a post-attention / post-MLP norm follows
POST_MLP_SCALE = "ln2_post.w"  # the post-MLP norm's scale (Gemma 2/3): no group trains it; the implicit patch does


def check_parameters(parameters: Sequence[str]) -> tuple[str, ...]:
    known = {name for names in PARAMETER_GROUPS.values() for name in names}
    unknown = [p for p in parameters if p not in known]
    if unknown or not parameters:
        raise ValueError(f"unknown parameters {unknown or list(parameters)}; choose from {sorted(known)}")
    return tuple(parameters)


def trained_parameters(
    model: LensModel, groups: Sequence[str] = DEFAULT_GROUPS, biases: str = "checkpoint"
) -> tuple[str, ...]:
    """The per-block parameters GD trains for `groups` (e.g. ('attn.W_K', 'attn.b_K', 'attn.W_V', 'attn.b_V')).

    `biases="checkpoint"` keeps only the biases the checkpoint has. TransformerLens gives every model b_Q/b_K/b_V/
    b_O (and MLP biases) and fills those a bias-free checkpoint lacks (Llama, SmolLM2, Gemma) with zeros: a bias
    that is exactly zero in every layer is taken as absent (a trained bias is never zero everywhere). Call it on
    the trained model, never on an untrained copy, whose biases are zeros by initialisation. `biases="all"` also
    trains absent biases from zero, as the papers' fairseq model (which has every bias) would.
    """
    check_choice("biases", biases, BIASES)
    params = block_parameters(model)
    names = []
    for group in check_groups(groups):
        for local in PARAMETER_GROUPS[group]:
            stored = [_stored_name(params, parameter_name(local, layer)) for layer in range(model.cfg.n_layers)]
            if any(name is None for name in stored):
                continue  # not in this architecture (W_gate of a plain MLP)
            is_bias = local.rsplit(".", 1)[1].startswith("b_")
            if is_bias and biases == "checkpoint" and not any(bool(params[name].any()) for name in stored):
                continue
            names.append(local)
    return tuple(names)


@dataclass
class Delta:
    """Per-parameter weight changes, keyed by TransformerLens parameter name (e.g. 'blocks.3.attn.W_K').

    Grouped-query attention stores K/V as `_W_K`/`_b_K` (one per key-value head); deltas follow the stored
    parameter, so they are keyed with the underscore there.
    """

    tensors: dict[str, Tensor]

    @classmethod
    def zeros(cls, model: LensModel, parameters: Sequence[str] | None = None) -> Delta:
        """A zero delta of `parameters` (per-block names such as 'attn.W_K'; default: `trained_parameters(model)`)
        in every layer."""
        params = block_parameters(model)
        locals_ = trained_parameters(model) if parameters is None else check_parameters(parameters)
        tensors = {}
        for layer in range(model.cfg.n_layers):
            for local in locals_:
                name = _stored_name(params, parameter_name(local, layer))
                if name is not None:
                    tensors[name] = torch.zeros_like(params[name])
        return cls(tensors)

    def layers(self) -> list[int]:
        return sorted({parameter_layer(name) for name in self.tensors})

    def restricted(self, layers: Sequence[int]) -> Delta:
        """The same delta on a subset of layers only."""
        return Delta({n: t for n, t in self.tensors.items() if parameter_layer(n) in set(layers)})

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> Delta:
        """The same delta on `device` (a loaded result's deltas are on the CPU), in `dtype` if given."""
        return Delta({n: t.to(device=device, dtype=dtype or t.dtype) for n, t in self.tensors.items()})

    def norms(self, n_layers: int) -> dict:
        """The update's size: {"per_layer": ‖ΔW‖ per layer (Frobenius over every tensor of the layer; 0 for a layer
        without tensors), "by_parameter": {'attn.W_K': per layer, ...}, "total"}, in float64."""
        by_parameter: dict[str, list[float]] = {}
        for layer in self.layers():
            for local, tensor in self._layer_tensors(layer).items():
                by_parameter.setdefault(local, [0.0] * n_layers)[layer] = float(tensor.double().norm())
        per_layer = [sum(v[layer] ** 2 for v in by_parameter.values()) ** 0.5 for layer in range(n_layers)]
        return {"per_layer": per_layer, "by_parameter": by_parameter, "total": sum(v**2 for v in per_layer) ** 0.5}

    def stacked(self, model: LensModel, local: str) -> Tensor:
        """The change of 'attn.W_O' or 'attn.b_O' in every layer, stacked as `model.W_O` ([layer, head, d_head,
        d_model]) or `model.b_O` ([layer, d_model]), float32 on the CPU, zero in a layer the delta does not change."""
        if local not in PARAMETER_GROUPS["o"]:
            raise ValueError(f"stacked changes are for {PARAMETER_GROUPS['o']}, not {local!r}")
        stacked = torch.zeros_like(getattr(model, local.rsplit(".", 1)[1]), dtype=torch.float32, device="cpu")
        for layer in range(model.cfg.n_layers):
            change = self.tensors.get(parameter_name(local, layer))
            if change is not None:
                stacked[layer] = change.float().cpu()
        return stacked

    def is_finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.tensors.values())

    def hooks(self, model: LensModel) -> list[Hook]:
        """Forward hooks that make `model` behave as if its weights were W + ΔW."""
        hooks: list[Hook] = []
        for layer in self.layers():
            hooks += _layer_hooks(model, layer, self._layer_tensors(layer))
        return hooks

    def _layer_tensors(self, layer: int) -> dict[str, Tensor]:
        prefix = block_prefix(layer)
        return {n[len(prefix) :].replace("._", "."): t for n, t in self.tensors.items() if n.startswith(prefix)}


def _stored_name(params: dict[str, Tensor], name: str) -> str | None:
    module, leaf = name.rsplit(".", 1)
    for candidate in (name, f"{module}._{leaf}"):
        if candidate in params:
            return candidate
    return None


def _check_hookable(model: LensModel, delta: dict[str, Tensor]) -> None:
    """Refuse a change no hook point can apply: one of weights whose output a norm follows before the residual."""
    post_normed = [key for key in delta if key.startswith(POST_NORMED)]
    if model.cfg.use_normalization_before_and_after and post_normed:
        raise ValueError(
            f"this model normalises the attention and MLP outputs before the residual add (Gemma 2/3), and no hook "
            f"point sits between those outputs and their norms, so a change of {post_normed[0]} "
            "cannot be applied through hooks; train the q, k and v groups (--groups q k v)"
        )


def _layer_hooks(model: LensModel, layer: int, delta: dict[str, Tensor]) -> list[Hook]:
    """Hooks for one block; `delta` keys look like 'attn.W_K'. Registration order matters: captures first."""
    _check_hookable(model, delta)
    block = model.blocks[layer]
    inputs: dict[str, Tensor] = {}
    hooks: list[Hook] = []

    def capture(key: str, transform: Callable[[Tensor], Tensor] = lambda t: t) -> Callable:
        def hook(tensor: Tensor, hook) -> None:
            inputs[key] = transform(tensor)

        return hook

    def add(term: Callable[[], Tensor]) -> Callable:
        def hook(tensor: Tensor, hook) -> Tensor:
            return tensor + term()

        return hook

    def linear(x_key: str, pattern: str, weight: str, bias: str | None) -> Callable[[], Tensor]:
        def term() -> Tensor:
            out = einops.einsum(inputs[x_key], delta[weight], pattern) if weight in delta else 0.0
            return out + delta[bias] if bias in delta else out

        return term

    attn_groups = [g for g in "qkv" if f"attn.W_{g.upper()}" in delta or f"attn.b_{g.upper()}" in delta]
    if attn_groups:
        hooks.append((hook_name("resid_pre", layer), capture("attn_in", block.ln1)))
        for g in attn_groups:
            G = g.upper()
            term = linear("attn_in", "b p d, h d e -> b p h e", f"attn.W_{G}", f"attn.b_{G}")
            hooks.append((hook_name(g, layer), add(term)))
    if "attn.W_O" in delta or "attn.b_O" in delta:
        hooks.append((hook_name("z", layer), capture("z")))
        term = linear("z", "b p h e, h e d -> b p d", "attn.W_O", "attn.b_O")
        hooks.append((hook_name("attn_out", layer), add(term)))
    mlp_keys = [k for k in delta if k.startswith("mlp.")]
    if mlp_keys:
        point, to_input = mlp_input_point(model, layer)
        hooks.append((point, capture("mlp_in", to_input)))
        in_pattern = "b p d, d m -> b p m"
        if model.cfg.gated_mlp:
            hooks.append((hook_name("mlp_pre", layer), add(linear("mlp_in", in_pattern, "mlp.W_gate", None))))
            hooks.append((hook_name("mlp_pre_linear", layer), add(linear("mlp_in", in_pattern, "mlp.W_in", None))))
            if "mlp.b_in" in delta:  # gated MLPs add b_in after the gate product
                hooks.append((hook_name("mlp_post", layer), add(lambda: delta["mlp.b_in"])))
        else:
            hooks.append((hook_name("mlp_pre", layer), add(linear("mlp_in", in_pattern, "mlp.W_in", "mlp.b_in"))))
        hooks.append((hook_name("mlp_post", layer), capture("mlp_post")))
        term = linear("mlp_post", "b p m, m d -> b p d", "mlp.W_out", "mlp.b_out")
        hooks.append((hook_name("mlp_out", layer), add(term)))
    if POST_MLP_SCALE in delta:  # the post-MLP norm writes n·w: a change of w adds n·Δw (hook_mlp_out follows it)
        hooks.append((f"blocks.{layer}.ln2_post.hook_normalized", capture("mlp_normalized")))
        hooks.append((hook_name("mlp_out", layer), add(lambda: inputs["mlp_normalized"] * delta[POST_MLP_SCALE])))
    return hooks
