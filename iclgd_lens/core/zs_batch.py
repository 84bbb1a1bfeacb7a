"""Runs of the ZS prompts with one attention head's output replaced: exact (every head of a layer in one batched
forward) and first-order (attribution patching: one forward and one backward pass per label class).

A replacement gives head h of layer l the output (z, every position) of a *source* tensor: the z the layer computes
under a delta (a method's update through one head), or the plain z with ICL's z at the prediction position
(activation patching). Both paths read the same thing, the first label tokens' scores at each row's prediction
position, and every attribution measure (log-odds, the predicted class) is a function of the class logits alone:
log p(y) − log Σ_{c≠y} p(c) does not depend on the normaliser. The exact path returns full-vocabulary log-probs,
the estimate class logits; the two agree up to a per-row constant that no measure sees.

The first-order estimate (Nanda 2023; Syed et al. 2023; Kramár et al. 2024) of a class logit under a replacement is
logit + Σ_{position, d} ∂logit/∂z[l, position, h, d] · (source − z)[l, position, h, d], the gradient taken on the
plain run. The replaced z itself is exact (a delta's z is computed, ICL's is recorded); only what the layers above do
with it is linearised, so the estimate is exact when the read-out is linear in z and is off where the layers above
are far from linear over the change (saturated attention softmaxes, norms whose scale the change moves).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import torch
from jaxtyping import Float
from torch import Tensor

from iclgd_lens.backend import BRIDGE, LensModel, final_residual, residual_after
from iclgd_lens.core.episodes import Episode
from iclgd_lens.core.hooks import hook_name
from iclgd_lens.core.readout import Readout

if not BRIDGE:  # TransformerLens 3's key-value cache: the prediction position run alone (run_heads_at_prediction)
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry


class ZSBatch:
    """Some queries' ZS prompts, right-padded, with the residual stream entering each layer and every layer's head
    outputs z from one plain forward (a run that changes nothing below layer l starts there: TransformerLens'
    start_at_layer); with `gradients`, also each class logit's gradient with respect to every layer's z. Pass one
    `readout` to many batches (it holds a copy of W_U)."""

    def __init__(
        self,
        model: LensModel,
        episode: Episode,
        rows: Sequence[int],
        readout: Readout | None = None,
        gradients: bool = False,
    ) -> None:
        queries = [list(episode.queries[i]) for i in rows]
        width = 1 + max(len(q) for q in queries)
        device = model.cfg.device
        self.model, self.rows, self.readout = model, list(rows), readout or Readout(model)
        self.tokens = torch.tensor(
            [[episode.bos, *q] + [episode.bos] * (width - 1 - len(q)) for q in queries], device=device
        )
        self.positions = torch.tensor([len(q) for q in queries], device=device)
        self.firsts = torch.tensor([t[0] for t in episode.label_tokens], device=device)
        self.resid_pre: dict[int, Float[Tensor, "batch pos d_model"]] = {}
        self.z: dict[int, Float[Tensor, "batch pos head d_head"]] = {}
        self.grads: dict[int, Float[Tensor, "class batch pos head d_head"]] = {}
        shifts: dict[int, Tensor] = {}

        def keep_resid(resid: Tensor, hook) -> None:
            self.resid_pre[hook.layer()] = resid.detach().clone()

        def keep_z(z: Tensor, hook) -> Tensor | None:
            self.z[hook.layer()] = z.detach().clone()
            if gradients:  # a zero added to z: the gradient with respect to it is the one with respect to z
                shifts[hook.layer()] = torch.zeros_like(z, requires_grad=True)
                return z + shifts[hook.layer()]
            return None

        layers = range(model.cfg.n_layers)
        hooks = [(hook_name("resid_pre", l), keep_resid) for l in layers] + [
            (hook_name("z", l), keep_z) for l in layers
        ]
        with torch.set_grad_enabled(gradients), model.hooks(hooks):
            logits = self._logits(final_residual(model, self.tokens), self.positions)
            self.plain = logits.detach().float().log_softmax(-1)[:, self.firsts].cpu()
            class_logits = logits[:, self.firsts]
            if gradients:
                n_classes = len(self.firsts)
                per_class = [
                    torch.autograd.grad(class_logits[:, c].sum(), list(shifts.values()), retain_graph=c < n_classes - 1)
                    for c in range(n_classes)
                ]
                self.grads = {layer: torch.stack([grads[i] for grads in per_class]) for i, layer in enumerate(shifts)}
        self.class_logits: Float[Tensor, "batch class"] = class_logits.detach().double().cpu()

    def _logits(self, resid: Float[Tensor, "rows pos d_model"], positions: Tensor) -> Float[Tensor, "rows vocab"]:
        return self.readout(resid[torch.arange(len(positions), device=resid.device), positions])

    @torch.no_grad()
    def run(self, hooks: list, from_layer: int = 0) -> Float[Tensor, "batch class"]:
        """First-token label log-probs at each row's prediction position under `hooks`, which must leave the
        layers below `from_layer` unchanged."""
        if from_layer == 0:
            return self._run(self.tokens, hooks, None, self.positions)
        return self._run(self.resid_pre[from_layer], hooks, from_layer, self.positions)

    def _run(
        self, start: Tensor, hooks: list, from_layer: int | None, positions: Tensor
    ) -> Float[Tensor, "rows class"]:
        """`start`: tokens (`from_layer` None) or the residual stream entering layer `from_layer`."""
        model = self.model
        with model.hooks(hooks):
            resid = final_residual(model, start, start_at_layer=from_layer)
        return self._logits(resid, positions).float().log_softmax(-1)[:, self.firsts].cpu()

    @torch.no_grad()
    def layer_z(self, layer: int, hooks: list) -> Float[Tensor, "batch pos head d_head"]:
        """Layer `layer`'s z under `hooks` (which change nothing below it), from the plain residual entering it."""
        captured: dict[str, Tensor] = {}

        def keep(z: Tensor, hook) -> None:
            captured["z"] = z.clone()

        with self.model.hooks([*hooks, (hook_name("z", layer), keep)]):
            residual_after(self.model, self.resid_pre[layer], layer, start_at_layer=layer)
        return captured["z"]

    @torch.no_grad()
    def run_heads(
        self, layer: int, heads: Sequence[int], source: Float[Tensor, "batch pos head d_head"]
    ) -> Float[Tensor, "heads batch class"]:
        """Exact: for each h in `heads`, the label log-probs with head h's z at `layer` taken from `source` and
        every other head the model's own; all of them in one forward, the heads along the batch dimension."""
        n, size = len(heads), len(self.rows)
        index = torch.tensor(list(heads), device=source.device)

        def replace(z: Tensor, hook) -> Tensor:
            copies = z.view(n, size, *z.shape[1:]).clone()
            copies[torch.arange(n, device=z.device), :, :, index] = source[:, :, index].permute(2, 0, 1, 3)
            return copies.view(z.shape)

        start = self.resid_pre[layer].repeat(n, 1, 1)
        out = self._run(start, [(hook_name("z", layer), replace)], layer, self.positions.repeat(n))
        return out.view(n, size, -1)

    def continues_at_prediction(self) -> bool:
        """Whether a change of the prediction position alone can run through that position alone
        (`run_heads_at_prediction`): positions reach attention only as rotary angles counted from the attention mask
        (or not at all); ALiBi's biases, logn scaling and local windows count cache indices, which the cached
        padding would shift (a window only matters when the prompt is wider than it). Not on the bridge: its cache is
        transformers' own, which the toolkit does not drive."""
        if BRIDGE:
            return False
        cfg = self.model.cfg
        if cfg.positional_embedding_type not in ("rotary", "standard") or cfg.use_logn_attn or cfg.use_attention_sinks:
            return False
        local = cfg.attn_types is not None and "local" in cfg.attn_types
        return not local or self.tokens.shape[1] < cfg.window_size

    @cached_property
    def _plain_cache(self) -> TransformerLensKeyValueCache:
        """Every layer's keys and values of the plain run (one more plain forward, made once)."""
        model = self.model
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch_size=len(self.rows))
        with torch.no_grad():
            model(
                self.tokens,
                past_kv_cache=cache,
                attention_mask=torch.ones_like(self.tokens),
                stop_at_layer=model.cfg.n_layers,
            )
        return cache

    @torch.no_grad()
    def run_heads_at_prediction(
        self, layer: int, heads: Sequence[int], replacement: Float[Tensor, "batch head d_head"]
    ) -> Float[Tensor, "heads batch class"]:
        """Exact, as `run_heads` with a source that differs from the plain z only at each row's prediction position,
        but computing only that position: nothing before it changes, so from `layer` on it attends to the plain
        run's cached keys and values of the positions before it. Needs `continues_at_prediction()`."""
        model, n, size = self.model, len(heads), len(self.rows)
        width = self.tokens.shape[1]
        before = torch.arange(width, device=self.tokens.device)[None, :] < self.positions[:, None]  # [batch, width]
        mask = torch.cat([before, torch.ones_like(before[:, :1])], 1).long().repeat(n, 1)
        entries = [
            TransformerLensKeyValueCacheEntry(
                entry.past_keys.repeat(n, 1, 1, 1), entry.past_values.repeat(n, 1, 1, 1), frozen=True
            )
            for entry in self._plain_cache.entries
        ]
        cache = TransformerLensKeyValueCache(entries, mask[:, :-1], frozen=True)
        index = torch.tensor(list(heads), device=replacement.device)

        def replace(z: Tensor, hook) -> Tensor:  # [n * batch, 1, head, d_head]
            copies = z.view(n, size, *z.shape[2:]).clone()
            copies[torch.arange(n, device=z.device), :, index] = replacement[:, index].permute(1, 0, 2)
            return copies.view(z.shape)

        start = self.resid_pre[layer][torch.arange(size, device=self.positions.device), self.positions][:, None]
        with model.hooks([(hook_name("z", layer), replace)]):
            resid = model(
                start.repeat(n, 1, 1),
                start_at_layer=layer,
                past_kv_cache=cache,
                attention_mask=mask,
                stop_at_layer=model.cfg.n_layers,
            )
        return self.readout(resid[:, 0]).float().log_softmax(-1)[:, self.firsts].cpu().view(n, size, -1)

    def estimate(self, layer: int, source: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "head batch class"]:
        """First-order: each head's change of the class logits when its z at `layer` is taken from `source` (the
        terms: add `class_logits` for the estimated logits; the terms of several heads or layers add up)."""
        change = (source - self.z[layer]).to(self.grads[layer].dtype)
        return torch.einsum("cbphd,bphd->hbc", self.grads[layer], change).double().cpu()
