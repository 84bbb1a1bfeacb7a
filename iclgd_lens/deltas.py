"""Weight deltas applied through TransformerLens hook points, and the GD / LCGD finetuning that learns them.

A Delta never copies or edits the base model: a change ΔW_K of layer l is applied by adding x·ΔW_K + Δb_K at
`blocks.{l}.attn.hook_k`, x being the attention input (ln1 of the block input). GD and LCGD train the delta
tensors themselves through the same hooks.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from iclgd_lens.presets import BIASES, LCGD_EXITS, METHODS

# Parameter group -> TransformerLens parameter names (per block). "mlp" covers gated MLPs' W_gate too.
PARAMETER_GROUPS: dict[str, tuple[str, ...]] = {
    "q": ("attn.W_Q", "attn.b_Q"),
    "k": ("attn.W_K", "attn.b_K"),
    "v": ("attn.W_V", "attn.b_V"),
    "o": ("attn.W_O", "attn.b_O"),
    "mlp": ("mlp.W_in", "mlp.b_in", "mlp.W_gate", "mlp.W_out", "mlp.b_out"),
}
DEFAULT_GROUPS = ("k", "v")

Hook = tuple[str, Callable]


def check_groups(groups: Sequence[str]) -> tuple[str, ...]:
    unknown = [g for g in groups if g not in PARAMETER_GROUPS]
    if unknown or not groups:
        raise ValueError(f"unknown parameter groups {unknown or list(groups)}; choose from {list(PARAMETER_GROUPS)}")
    return tuple(groups)


def check_parameters(parameters: Sequence[str]) -> tuple[str, ...]:
    known = {name for names in PARAMETER_GROUPS.values() for name in names}
    unknown = [p for p in parameters if p not in known]
    if unknown or not parameters:
        raise ValueError(f"unknown parameters {unknown or list(parameters)}; choose from {sorted(known)}")
    return tuple(parameters)


def trained_parameters(
    model: HookedTransformer, groups: Sequence[str] = DEFAULT_GROUPS, biases: str = "checkpoint"
) -> tuple[str, ...]:
    """The per-block parameters GD trains for `groups` (e.g. ('attn.W_K', 'attn.b_K', 'attn.W_V', 'attn.b_V')).

    `biases="checkpoint"` keeps only the biases the checkpoint has. TransformerLens gives every model b_Q/b_K/b_V/
    b_O (and MLP biases) and fills those a bias-free checkpoint lacks (Llama, SmolLM2, Gemma) with zeros: a bias
    that is exactly zero in every layer is taken as absent (a trained bias is never zero everywhere). Call it on
    the trained model, never on an untrained copy, whose biases are zeros by initialisation. `biases="all"` also
    trains absent biases from zero, as the papers' fairseq model (which has every bias) would.
    """
    if biases not in BIASES:
        raise ValueError(f"unknown biases {biases!r}; use one of {list(BIASES)}")
    params = dict(model.named_parameters())
    names = []
    for group in check_groups(groups):
        for local in PARAMETER_GROUPS[group]:
            stored = [_stored_name(params, f"blocks.{layer}.{local}") for layer in range(model.cfg.n_layers)]
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
    def zeros(cls, model: HookedTransformer, parameters: Sequence[str] | None = None) -> "Delta":
        """A zero delta of `parameters` (per-block names such as 'attn.W_K'; default: `trained_parameters(model)`)
        in every layer."""
        params = dict(model.named_parameters())
        locals_ = trained_parameters(model) if parameters is None else check_parameters(parameters)
        tensors = {}
        for layer in range(model.cfg.n_layers):
            for local in locals_:
                name = _stored_name(params, f"blocks.{layer}.{local}")
                if name is not None:
                    tensors[name] = torch.zeros_like(params[name])
        return cls(tensors)

    def layers(self) -> list[int]:
        return sorted({int(name.split(".")[1]) for name in self.tensors})

    def restricted(self, layers: Sequence[int]) -> "Delta":
        """The same delta on a subset of layers only."""
        return Delta({n: t for n, t in self.tensors.items() if int(n.split(".")[1]) in set(layers)})

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "Delta":
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

    def is_finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.tensors.values())

    def hooks(self, model: HookedTransformer) -> list[Hook]:
        """Forward hooks that make `model` behave as if its weights were W + ΔW."""
        hooks: list[Hook] = []
        for layer in self.layers():
            hooks += _layer_hooks(model, layer, self._layer_tensors(layer))
        return hooks

    def _layer_tensors(self, layer: int) -> dict[str, Tensor]:
        prefix = f"blocks.{layer}."
        return {n[len(prefix) :].replace("._", "."): t for n, t in self.tensors.items() if n.startswith(prefix)}


def _stored_name(params: dict[str, Tensor], name: str) -> str | None:
    module, leaf = name.rsplit(".", 1)
    for candidate in (name, f"{module}._{leaf}"):
        if candidate in params:
            return candidate
    return None


def _layer_hooks(model: HookedTransformer, layer: int, delta: dict[str, Tensor]) -> list[Hook]:
    """Hooks for one block; `delta` keys look like 'attn.W_K'. Registration order matters: captures first."""
    block = model.blocks[layer]
    name = f"blocks.{layer}"
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
        hooks.append((f"{name}.hook_resid_pre", capture("attn_in", block.ln1)))
        for g in attn_groups:
            G = g.upper()
            term = linear("attn_in", "b p d, h d e -> b p h e", f"attn.W_{G}", f"attn.b_{G}")
            hooks.append((f"{name}.attn.hook_{g}", add(term)))
    if "attn.W_O" in delta or "attn.b_O" in delta:
        hooks.append((f"{name}.attn.hook_z", capture("z")))
        term = linear("z", "b p h e, h e d -> b p d", "attn.W_O", "attn.b_O")
        hooks.append((f"{name}.hook_attn_out", add(term)))
    mlp_keys = [k for k in delta if k.startswith("mlp.")]
    if mlp_keys:
        mlp_input_hook = "hook_resid_pre" if model.cfg.parallel_attn_mlp else "hook_resid_mid"
        hooks.append((f"{name}.{mlp_input_hook}", capture("mlp_in", block.ln2)))
        in_pattern = "b p d, d m -> b p m"
        if model.cfg.gated_mlp:
            hooks.append((f"{name}.mlp.hook_pre", add(linear("mlp_in", in_pattern, "mlp.W_gate", None))))
            hooks.append((f"{name}.mlp.hook_pre_linear", add(linear("mlp_in", in_pattern, "mlp.W_in", None))))
            if "mlp.b_in" in delta:  # gated MLPs add b_in after the gate product
                hooks.append((f"{name}.mlp.hook_post", add(lambda: delta["mlp.b_in"])))
        else:
            hooks.append((f"{name}.mlp.hook_pre", add(linear("mlp_in", in_pattern, "mlp.W_in", "mlp.b_in"))))
        hooks.append((f"{name}.mlp.hook_post", capture("mlp_post")))
        term = linear("mlp_post", "b p m, m d -> b p d", "mlp.W_out", "mlp.b_out")
        hooks.append((f"{name}.hook_mlp_out", add(term)))
    return hooks


@contextmanager
def frozen_parameters(model: HookedTransformer) -> Iterator[None]:
    """Base weights take no gradient while a delta trains; restored afterwards."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])


def causal_lm_loss(logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, ""]:
    """NLL of every next token, averaged over tokens."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())


class LayerCausalReadout:
    """LCGD's readout: every block reads a stop-gradient copy of its input; each block's output (`block`, the
    reference code) or block input + attention output (`attn`, the paper text) is read out with the frozen final
    norm + unembedding; the per-layer NLLs are summed. Hence layer l's weights move only with layer l's loss.

    Hook order matters: `input_hooks` go before a delta's hooks (its captures must see the detached input) and
    `exit_hooks` after them (the exit must include the delta's own additions)."""

    def __init__(self, n_layers: int, exit: str = "block") -> None:
        if exit not in LCGD_EXITS:
            raise ValueError(f"unknown LCGD exit {exit!r}; use one of {list(LCGD_EXITS)}")
        self.n_layers, self.exit = n_layers, exit
        self.resid_pre: dict[int, Tensor] = {}
        self.exits: dict[int, Tensor] = {}

    def input_hooks(self) -> list[Hook]:
        def detach(tensor: Tensor, hook) -> Tensor:
            self.resid_pre[hook.layer()] = tensor.detach()
            return self.resid_pre[hook.layer()]

        return [(f"blocks.{l}.hook_resid_pre", detach) for l in range(self.n_layers)]

    def exit_hooks(self) -> list[Hook]:
        def read_block(tensor: Tensor, hook) -> None:
            self.exits[hook.layer()] = tensor

        def read_attn(tensor: Tensor, hook) -> None:
            self.exits[hook.layer()] = self.resid_pre[hook.layer()] + tensor

        if self.exit == "block":
            return [(f"blocks.{l}.hook_resid_post", read_block) for l in range(self.n_layers)]
        return [(f"blocks.{l}.hook_attn_out", read_attn) for l in range(self.n_layers)]

    def loss(self, model: HookedTransformer, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, ""]:
        """Run the blocks (no final unembedding needed) and sum the per-layer logit-lens NLLs.

        All layers are read out in one matmul ([layer·batch·pos, d_model] @ W_U): the same products as one
        read-out per layer, at the matmul rate of a large matrix instead of a thin one (a 30-token demonstration
        is a 30-row matrix), and the graph keeps the same per-layer logits either way."""
        model(tokens, stop_at_layer=self.n_layers)
        exits: Float[Tensor, "layer batch pos d_model"] = torch.stack([self.exits[l] for l in range(self.n_layers)])
        logits = logit_lens(model, exits)[:, :, :-1]
        targets = tokens[:, 1:].expand(self.n_layers, -1, -1)
        nll = F.cross_entropy(logits.flatten(0, 2).float(), targets.flatten(), reduction="none")
        return nll.view(self.n_layers, -1).mean(1).sum()


class Unembedding:
    """The model's final norm and unembedding as its forward applies them, with W_U's transposed copy made once:
    TransformerLens 3.9's Unembed copies W_U transposed on every call (F.linear on W_U.T.contiguous(), for bf16
    parity with HF), which for a 50k vocabulary cost a quarter of a GD step. Same kernel, same numbers."""

    def __init__(self, model: HookedTransformer) -> None:
        self.final_norm = getattr(model, "ln_final", None)
        self.W_U_T = model.unembed.W_U.detach().T.contiguous()
        self.b_U = model.unembed.b_U

    def __call__(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        return F.linear(self.final_norm(resid) if self.final_norm is not None else resid, self.W_U_T, self.b_U)


def logit_lens(model: HookedTransformer, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
    """The model's own final norm (absent in norm-free models) and unembedding applied to a residual."""
    final_norm = getattr(model, "ln_final", None)
    normed = final_norm(resid) if final_norm is not None else resid
    # model.unembed copies W_U transposed on every call (TransformerLens 3.9, for bf16 parity with HF): at
    # LCGD's one read-out per layer and step, that copy (113 MB for a 49k vocabulary) cost more than the matmul.
    return normed @ model.unembed.W_U + model.unembed.b_U


def reset_alibi(model: HookedTransformer) -> None:
    """Make ALiBi scores exactly slope·(key - query) at absolute positions.

    TransformerLens keeps each layer's ALiBi bias at the longest length seen so far and slices its last rows, so
    pre-softmax scores (not the pattern) shift by a per-query constant that depends on earlier calls (and in fp16
    their rounding too). Cleared, the bias is rebuilt at this call's key length, whose last rows are the queries'
    absolute positions.
    """
    if model.cfg.positional_embedding_type == "alibi":
        for block in model.blocks:
            block.attn.alibi = None


def fit(
    model: HookedTransformer,
    demos: Sequence[Sequence[int]],
    bos: int,
    method: str = "gd",
    lr: float = 1e-3,
    parameters: Sequence[str] | None = None,
    lcgd_exit: str = "block",
    progress: bool = False,
    precision: str = "native",
    training_queries: list[Tensor] | None = None,
) -> Delta:
    """Plain SGD (no momentum, no weight decay, no clipping), constant lr, one epoch, batch size 1, the
    demonstrations in the given order; loss = causal-LM NLL over [BOS] + demonstration (LCGD: summed per layer).
    `parameters`: the per-block parameters trained (default `trained_parameters(model)`: K and V weights and the
    biases the checkpoint has).

    precision `native`: the delta trains in the model's dtype. `fp16-mixed` (the reference's fairseq
    FP16Optimizer; the model must be float16): an fp32 master delta ΔW; each step runs forward and backward in fp16
    through the effective delta round16(W + ΔW) − W, with the loss scaled (FP16_LOSS_SCALE; a step whose gradient
    overflows is skipped and the scale halved). The returned delta is that effective fp16 delta, so an update
    below half an fp16 ulp of W vanishes from the evaluated model, as it does in the reference.

    `training_queries`, when a list, receives per step the attention queries q' of every layer at every
    demonstration token, as that step's forward computed them ([layer, token, head, d_head], BOS excluded):
    what Dai et al.'s Kendall measure compares ICL's attention with."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {list(METHODS)}")
    check_lr(lr)
    reset_alibi(model)  # the same demonstrations give the same delta, whatever ran on the model before
    mixed = precision == "fp16-mixed"
    if mixed and model.cfg.dtype != torch.float16:
        raise ValueError(f"precision fp16-mixed trains a float16 model, got {model.cfg.dtype}; load it in float16")
    delta = Delta.zeros(model, parameters)  # what the hooks apply: the trained delta, or fp16-mixed's effective one
    params = list(delta.tensors.values())
    for p in params:
        p.requires_grad_(True)
    base = dict(model.named_parameters())
    master = {name: torch.zeros_like(t, dtype=torch.float32) for name, t in delta.tensors.items()} if mixed else {}
    scaler = LossScaler() if mixed else None
    hooks = delta.hooks(model)
    if method == "lcgd":
        readout = LayerCausalReadout(model.cfg.n_layers, lcgd_exit)
        hooks = readout.input_hooks() + hooks + readout.exit_hooks()
    else:
        unembed = Unembedding(model)
    step_queries: dict[int, Tensor] = {}
    if training_queries is not None:

        def keep_q(q: Tensor, hook) -> None:
            step_queries[hook.layer()] = q[0, 1:].detach().float().cpu()

        hooks = hooks + [(f"blocks.{l}.attn.hook_q", keep_q) for l in range(model.cfg.n_layers)]
    with frozen_parameters(model), model.hooks(hooks):
        for step, demo in enumerate(tqdm(demos, desc=f"fit {method}", disable=not progress, leave=False)):
            tokens = torch.tensor([[bos, *demo]], device=model.cfg.device)
            if method == "gd":
                loss = causal_lm_loss(unembed(model(tokens, stop_at_layer=model.cfg.n_layers)), tokens)
            else:
                loss = readout.loss(model, tokens)
            if training_queries is not None:
                training_queries.append(torch.stack([step_queries[l] for l in range(model.cfg.n_layers)]))
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{method} loss is {loss.item()} at demonstration {step} with lr={lr}; lower the learning rate"
                )
            if mixed:
                # fairseq sums the token NLLs, scales the sum, and divides the gradient by scale · n_tokens.
                n_tokens = tokens.shape[1] - 1
                grads = torch.autograd.grad(loss * n_tokens * scaler.scale, params, allow_unused=True)
                if scaler.step_overflows(grads):
                    continue
                with torch.no_grad():
                    for (name, p), g in zip(delta.tensors.items(), grads):
                        if g is not None:
                            master[name].sub_(lr * g.float() / (scaler.scale * n_tokens))
                        p.copy_(_rounded_change(base[name], master[name]))
            else:
                # allow_unused: with the `attn` exit, MLP weights take no gradient.
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                with torch.no_grad():
                    for p, g in zip(params, grads):
                        if g is not None:
                            p.sub_(lr * g)
            if not delta.is_finite() or not all(bool(torch.isfinite(m).all()) for m in master.values()):
                raise FloatingPointError(
                    f"{method} weights became non-finite at step {step} with lr={lr}; lower the learning rate"
                )
    for p in params:
        p.requires_grad_(False)
    return delta


FP16_LOSS_SCALE = 4.0  # the reference's --fp16-init-scale
FP16_SCALE_WINDOW = 256  # --fp16-scale-window: steps without overflow before the scale doubles
FP16_MIN_LOSS_SCALE = 1e-4  # fairseq's default --min-loss-scale


class LossScaler:
    """fairseq's dynamic loss scaler as the reference configures it."""

    def __init__(self) -> None:
        self.scale, self.clean_steps = FP16_LOSS_SCALE, 0

    def step_overflows(self, grads: Sequence[Tensor | None]) -> bool:
        """True (and the scale halved) when a gradient is not finite: the step is then skipped."""
        if all(g is None or bool(torch.isfinite(g).all()) for g in grads):
            self.clean_steps += 1
            if self.clean_steps % FP16_SCALE_WINDOW == 0:
                self.scale *= 2
            return False
        self.scale, self.clean_steps = self.scale / 2, 0
        if self.scale < FP16_MIN_LOSS_SCALE:
            raise FloatingPointError("fp16 loss scale fell below its minimum: the gradients overflow at any scale")
        return True


def _rounded_change(weight: Tensor, master_delta: Tensor) -> Tensor:
    """round16(W + ΔW) − W in W's dtype: the change an fp16 model with fp32 master weights actually sees."""
    return ((weight.float() + master_delta).to(weight.dtype).float() - weight.float()).to(weight.dtype)


def check_lr(lr: float) -> None:
    if not lr > 0 or lr != lr or lr == float("inf"):
        raise ValueError(f"learning rate must be a positive finite number, got lr={lr}")
