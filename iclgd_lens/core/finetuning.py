"""GD and LCGD: plain SGD on a Delta through its hooks (the base model is never edited).

`fit` runs one epoch over the demonstrations with a step strategy for the precision: `native` (the model's
dtype) or `fp16-mixed` (fairseq's FP16Optimizer, as the reference runs it). Logits come from the one `Readout`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from iclgd_lens.backend import LensModel, block_parameters, final_residual
from iclgd_lens.core.deltas import Delta, Hook
from iclgd_lens.core.hooks import hook_name, parameter_layer, reset_alibi
from iclgd_lens.core.presets import METHODS, check_choice
from iclgd_lens.core.projections import projections_laid_out_once
from iclgd_lens.core.readout import Readout

if TYPE_CHECKING:  # methods runs fit
    from iclgd_lens.core.methods import MethodContext


@contextmanager
def frozen_parameters(model: LensModel) -> Iterator[None]:
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
    `exit_hooks` after them (the exit must include the delta's own additions). `exit` is checked where it enters
    (`MethodContext`)."""

    def __init__(self, model: LensModel, exit: str = "block") -> None:
        self.n_layers, self.exit = model.cfg.n_layers, exit
        self.readout = Readout(model)  # W_U's transposed copy made once, not per step
        self.resid_pre: dict[int, Tensor] = {}
        self.exits: dict[int, Tensor] = {}

    def input_hooks(self) -> list[Hook]:
        def detach(tensor: Tensor, hook) -> Tensor:
            self.resid_pre[hook.layer()] = tensor.detach()
            return self.resid_pre[hook.layer()]

        return [(hook_name("resid_pre", l), detach) for l in range(self.n_layers)]

    def exit_hooks(self) -> list[Hook]:
        def read_block(tensor: Tensor, hook) -> None:
            self.exits[hook.layer()] = tensor

        def read_attn(tensor: Tensor, hook) -> None:
            self.exits[hook.layer()] = self.resid_pre[hook.layer()] + tensor

        if self.exit == "block":
            return [(hook_name("resid_post", l), read_block) for l in range(self.n_layers)]
        return [(hook_name("attn_out", l), read_attn) for l in range(self.n_layers)]

    def loss(self, model: LensModel, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, ""]:
        """Run the blocks (no final unembedding needed) and sum the per-layer logit-lens NLLs.

        All layers are read out in one matmul ([layer·batch·pos, d_model] @ W_U): the same products as one
        read-out per layer, at the matmul rate of a large matrix instead of a thin one (a 30-token demonstration
        is a 30-row matrix), and the graph keeps the same per-layer logits either way."""
        final_residual(model, tokens)
        exits: Float[Tensor, "layer batch pos d_model"] = torch.stack([self.exits[l] for l in range(self.n_layers)])
        logits = self.readout(exits)[:, :, :-1]
        targets = tokens[:, 1:].expand(self.n_layers, -1, -1)
        nll = F.cross_entropy(logits.flatten(0, 2).float(), targets.flatten(), reduction="none")
        return nll.view(self.n_layers, -1).mean(1).sum()


LOWER = "lower the learning rate"


def fit(
    model: LensModel,
    demos: Sequence[Sequence[int]],
    bos: int,
    context: MethodContext,
    method: str = "gd",
    step: str = "sgd",
    observers: Sequence[Hook] = (),
) -> Delta:
    """The delta `method` ("gd" or "lcgd") trains on `demos` (token ids, each run after `bos`) with `step`, as
    `context` says (its lr, trained parameters, LCGD's exit, precision and progress bar; the options "epochs" and,
    for Adam, "betas"). Returns the `Delta`: the trained change of each parameter, applied through hooks.

    The papers' fit: plain SGD (no momentum, no weight decay, no clipping), constant lr, one epoch, batch size 1,
    the demonstrations in the given order; loss = causal-LM NLL over [BOS] + demonstration (LCGD: summed per
    layer). `context.parameters`: the per-block parameters trained (None: `trained_parameters(model)`, K and V
    weights and the biases the checkpoint has).

    `observers`: hooks that run after the delta's own in every step's forward, seeing what that step computed
    (Kendall's capture of the attention queries); they must return None.

    `context.precision` and `step` choose the update rule (`update_rule`); the option "epochs" makes that many
    passes over the demonstrations, in the same order."""
    check_choice("method", method, METHODS)
    check_choice("step", step, STEPS)
    lr, epochs = context.lr, int(context.options.get("epochs", 1))
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if context.precision == "fp16-mixed" and step != "sgd":
        raise ValueError(f"precision fp16-mixed reproduces the reference's SGD only; the {step} step needs native")
    reset_alibi(model)  # the same demonstrations give the same delta, whatever ran on the model before
    # What the hooks apply: the trained delta, or fp16-mixed's effective one.
    delta = Delta.zeros(model, context.parameters)
    update = update_rule(model, delta, context, step)
    hooks = delta.hooks(model)
    if method == "lcgd":
        readout = LayerCausalReadout(model, context.lcgd_exit)
        hooks = readout.input_hooks() + hooks + readout.exit_hooks()
    else:
        unembed = Readout(model)
    with frozen_parameters(model), projections_laid_out_once(), model.hooks([*hooks, *observers]):
        schedule = [demo for _ in range(epochs) for demo in demos]
        for index, demo in enumerate(tqdm(schedule, desc=f"fit {method}", disable=not context.progress, leave=False)):
            tokens = torch.tensor([[bos, *demo]], device=model.cfg.device)
            if method == "gd":
                loss = causal_lm_loss(unembed(final_residual(model, tokens)), tokens)
            else:
                loss = readout.loss(model, tokens)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{method} loss is {loss.item()} at demonstration {index}, lr={lr}; {LOWER}")
            update(loss, n_tokens=tokens.shape[1] - 1)
            if not update.is_finite():
                raise FloatingPointError(f"{method} weights became non-finite at step {index} with lr={lr}; {LOWER}")
    for p in delta.tensors.values():
        p.requires_grad_(False)
    return delta


def update_rule(model: LensModel, delta: Delta, context: MethodContext, step: str) -> NativeStep | MixedFP16Step:
    """What one step does to `delta`: the precision's and `step`'s rule at the context's lr.

    precision `native`: the delta trains in the model's dtype. `fp16-mixed` (the reference's fairseq
    FP16Optimizer; the model must be float16): an fp32 master delta ΔW; each step runs forward and backward in fp16
    through the effective delta round16(W + ΔW) − W, with the loss scaled (FP16_LOSS_SCALE; a step whose gradient
    overflows is skipped and the scale halved). The delta `fit` returns is that effective fp16 delta, so an
    update below half an fp16 ulp of W vanishes from the evaluated model, as it does in the reference.

    `step` (native precision only; the variants of `core.methods`): `sgd` (the papers'), `layer-normalised` (each
    layer's step lr · g_l / ‖g_l‖, g_l the gradient of that layer's trained tensors together) or `adam`
    (torch.optim.Adam with the option "betas", no weight decay)."""
    if context.precision == "fp16-mixed":
        return MixedFP16Step(model, delta, context.lr)
    if step == "adam":
        return AdamStep(delta, context.lr, tuple(context.options.get("betas", (0.9, 0.999))))
    return (LayerNormalisedStep if step == "layer-normalised" else NativeStep)(delta, context.lr)


class NativeStep:
    """An SGD step on the delta in the model's dtype."""

    def __init__(self, delta: Delta, lr: float) -> None:
        self.delta, self.lr = delta, lr
        self.params = list(delta.tensors.values())
        for p in self.params:
            p.requires_grad_(True)

    def __call__(self, loss: Float[Tensor, ""], n_tokens: int) -> None:
        # allow_unused: with the `attn` exit, MLP weights take no gradient.
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(self.params, grads):
                if g is not None:
                    p.sub_(self.lr * g)

    def is_finite(self) -> bool:
        return self.delta.is_finite()


class LayerNormalisedStep(NativeStep):
    """A per-layer step size: layer l moves by lr · g_l / ‖g_l‖ (g_l: the gradient of the layer's trained tensors,
    one Frobenius norm over them), so every layer that gets a gradient moves by lr, however small its gradient."""

    def __call__(self, loss: Float[Tensor, ""], n_tokens: int) -> None:
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        layers = [parameter_layer(name) for name in self.delta.tensors]
        norms: dict[int, Tensor] = {}
        for layer, g in zip(layers, grads):
            if g is not None:
                norms[layer] = norms.get(layer, 0.0) + g.double().pow(2).sum()
        with torch.no_grad():
            for p, g, layer in zip(self.params, grads, layers):
                if g is not None and norms[layer] > 0:
                    p.sub_(self.lr * g / norms[layer].sqrt().to(g.dtype))


class AdamStep(NativeStep):
    """torch.optim.Adam over the delta's tensors (no weight decay)."""

    def __init__(self, delta: Delta, lr: float, betas: tuple[float, float]) -> None:
        super().__init__(delta, lr)
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=tuple(betas))

    def __call__(self, loss: Float[Tensor, ""], n_tokens: int) -> None:
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        for p, g in zip(self.params, grads):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class MixedFP16Step(NativeStep):
    """fairseq's FP16Optimizer: fp16 forward/backward with a dynamic loss scale, an fp32 master delta, and the
    delta the hooks apply set to the effective change round16(W + ΔW) − W after every step."""

    def __init__(self, model: LensModel, delta: Delta, lr: float) -> None:
        if model.cfg.dtype != torch.float16:
            raise ValueError(f"precision fp16-mixed trains a float16 model, got {model.cfg.dtype}; load it in float16")
        super().__init__(delta, lr)
        self.base = block_parameters(model)
        self.master = {name: torch.zeros_like(t, dtype=torch.float32) for name, t in delta.tensors.items()}
        self.scaler = LossScaler()

    def __call__(self, loss: Float[Tensor, ""], n_tokens: int) -> None:
        # fairseq sums the token NLLs, scales the sum, and divides the gradient by scale · n_tokens.
        scale = self.scaler.scale
        grads = torch.autograd.grad(loss * n_tokens * scale, self.params, allow_unused=True)
        if self.scaler.step_overflows(grads):
            return
        with torch.no_grad():
            for (name, p), g in zip(self.delta.tensors.items(), grads):
                if g is not None:
                    self.master[name].sub_(self.lr * g.float() / (scale * n_tokens))
                p.copy_(_rounded_change(self.base[name], self.master[name]))

    def is_finite(self) -> bool:
        return super().is_finite() and all(bool(torch.isfinite(m).all()) for m in self.master.values())


STEPS = ("sgd", "layer-normalised", "adam")
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
