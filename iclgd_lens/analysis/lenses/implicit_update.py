"""ICL's implicit weight update (Dherin et al. 2025), per layer and query, set against GD's update of the same matrices.

At the prediction position, block l adds to the residual stream x its attention output a and its MLP's output
MLP(u), u = ln2(x + a) (parallel blocks: u = ln2(x)). With the demonstrations in the prompt (ICL) the block sees
x_C, a_C and u_C; without them (ZS) x, a and u. For each input matrix W of the MLP (W_in, and a gated MLP's W_gate;
TransformerLens layout [d_model, d_mlp], the MLP computes u·W), the rank-1 change

    ΔW = u ⊗ (δ·W) / ‖u‖²,  δ = u_C − u,

gives u·(W + ΔW) = u·W + δ·W = u_C·W: every input matrix sees ICL's input, so the MLP (gate, activation, W_out and
any norm after it) outputs at the prediction position exactly what it outputs with the demonstrations. What is left
of the block's output change is the residual term Δr = (x_C + a_C) − (x + a), which enters the stream beside the MLP
(Dherin's skip connection; a bias of the block's output): the ZS block under (ΔW, Δr) outputs ICL's block output at
the prediction position exactly, which `exact_error` checks by running the block. Each layer's update is read from
the ZS and ICL runs' own inputs to that layer (not from a ZS run whose lower layers were updated), so the layers'
updates are each exact on their own and do not compose.

ΔW is never materialised for the statistics: with a_W = δ·W, ‖ΔW‖² = Σ_W ‖a_W‖² / ‖u‖², ⟨ΔW, G⟩ = Σ_W u·G_W·a_W / ‖u‖²
and the mean over queries M has ‖M‖² = Σ_ij (u_i·u_j)(Σ_W a_Wi·a_Wj) / (n² ‖u_i‖² ‖u_j‖²).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from iclgd_lens.analysis.lenses.lens_runs import SubjectRuns
from iclgd_lens.backend import LensModel, residual_after
from iclgd_lens.core.deltas import Delta
from iclgd_lens.core.episodes import Episode
from iclgd_lens.core.hooks import hook_name, parameter_name
from iclgd_lens.core.readout import Readout
from iclgd_lens.core.zs_batch import ZSBatch

INPUT_MATRICES = ("mlp.W_in", "mlp.W_gate")  # the MLP's input weights (W_gate only in gated MLPs)


def product_hook(model: LensModel, matrix: str) -> str:
    """The hook point where u·W appears: a gated MLP's gate (W_gate) at mlp_pre and its linear branch (W_in) at
    mlp_pre_linear; a plain MLP's W_in at mlp_pre."""
    return "mlp_pre_linear" if model.cfg.gated_mlp and matrix == "mlp.W_in" else "mlp_pre"


def matrix_names(model: LensModel) -> tuple[str, ...]:
    """The block-local names of the MLP's input weights in this architecture."""
    return INPUT_MATRICES if model.cfg.gated_mlp else INPUT_MATRICES[:1]


def input_matrices(model: LensModel, layer: int) -> dict[str, Float[Tensor, "d_model d_mlp"]]:
    """The MLP's input weights of `layer`, float64 on the CPU."""
    block = model.blocks[layer].mlp
    return {name: getattr(block, name.split(".")[1]).detach().double().cpu() for name in matrix_names(model)}


@torch.no_grad()
def mlp_input(
    model: LensModel, layer: int, resid_pre: Float[Tensor, "n d_model"], attn_out: Float[Tensor, "n d_model"]
) -> Float[Tensor, "n d_model"]:
    """u: what the MLP of `layer` reads (ln2 of the stream after attention, or of the block input when attention and
    MLP run in parallel), float64 on the CPU."""
    stream = resid_pre if model.cfg.parallel_attn_mlp else resid_pre + attn_out
    norm = model.blocks[layer].ln2
    return norm(stream.to(model.cfg.device, model.cfg.dtype)).double().cpu()


def implicit_parts(
    subject: SubjectRuns, layer: int
) -> tuple[Float[Tensor, "n d_model"], dict[str, Float[Tensor, "n d_mlp"]], Float[Tensor, "n d_model"]]:
    """(u, {matrix: a_W = δ·W}, Δr) per query: ΔW_i = u_i ⊗ a_Wi / ‖u_i‖²."""
    zs, icl = subject.readings["zs"], subject.readings["icl"]
    u = mlp_input(subject.model, layer, zs["resid_pre"][:, layer], zs["attn_out"][:, layer])
    u_icl = mlp_input(subject.model, layer, icl["resid_pre"][:, layer], icl["attn_out"][:, layer])
    a = {name: (u_icl - u) @ W for name, W in input_matrices(subject.model, layer).items()}
    residual = lambda r: (r["resid_pre"][:, layer] + r["attn_out"][:, layer]).double()  # noqa: E731
    return u, a, residual(icl) - residual(zs)


def implicit_norms(u: Tensor, a: dict[str, Tensor]) -> tuple[Float[Tensor, " n"], float]:
    """(‖ΔW_i‖ per query, ‖mean over queries of ΔW_i‖)."""
    u_sq = (u * u).sum(-1)
    a_gram = sum(x @ x.T for x in a.values())
    per_query = (torch.diagonal(a_gram) / u_sq).sqrt()
    mean_sq = ((u @ u.T) * a_gram / (u_sq[:, None] * u_sq[None, :])).sum() / len(u) ** 2
    return per_query, float(mean_sq.clamp(min=0).sqrt())


def inner_with(u: Tensor, a: dict[str, Tensor], update: dict[str, Tensor]) -> Float[Tensor, " n"]:
    """⟨ΔW_i, G⟩ per query (Frobenius, over every input matrix): G = `update` (matrix -> [d_model, d_mlp])."""
    total = sum(((u @ update[name]) * a[name]).sum(-1) for name in a)
    return total / (u * u).sum(-1)


def method_update(subject: SubjectRuns, method: str, layer: int) -> dict[str, Tensor] | None:
    """The method's change of the layer's MLP input weights (float64, CPU), or None when it did not train all of
    them."""
    delta = subject.deltas[method].tensors
    update = {}
    for name in matrix_names(subject.model):
        key = parameter_name(name, layer)
        if key not in delta:
            return None
        update[name] = delta[key].detach().double().cpu()
    return update


@torch.no_grad()
def exactness(
    subject: SubjectRuns, episode: Episode, parts: list[tuple[Tensor, dict[str, Tensor], Tensor]], batch_size: int = 8
) -> Float[Tensor, "n layer"]:
    """Per query and layer, ‖ZS block under (ΔW, Δr) − ICL block‖ / ‖ICL block‖ at the prediction position: the
    block run afresh on the ZS prompt's whole residual stream (every position sees ΔW, as a weight change would),
    against ICL's recorded block output. `parts`: each layer's `implicit_parts`."""
    model, n_layers = subject.model, subject.model.cfg.n_layers
    target = subject.readings["icl"]["resid_post"].double()
    errors = torch.full((len(episode.queries), n_layers), torch.nan, dtype=torch.float64)
    readout = Readout(model)  # one copy of W_U for every batch
    for start in range(0, len(episode.queries), batch_size):
        rows = list(range(start, min(start + batch_size, len(episode.queries))))
        batch = ZSBatch(model, episode, rows, readout)
        for layer, (u, a, residual) in enumerate(parts):
            out = _updated_block(model, batch, layer, u[rows], {k: v[rows] for k, v in a.items()}, residual[rows])
            expected = target[rows, layer]
            errors[rows, layer] = (out - expected).norm(dim=-1) / expected.norm(dim=-1)
    return errors


def _updated_block(
    model: LensModel,
    batch: ZSBatch,
    layer: int,
    u: Float[Tensor, "batch d_model"],
    a: dict[str, Float[Tensor, "batch d_mlp"]],
    residual: Float[Tensor, "batch d_model"],
) -> Float[Tensor, "batch d_model"]:
    """Block `layer` on the batch's ZS stream with each row's own ΔW = u a^T / ‖u‖² (as hook additions x·ΔW =
    (x·u / ‖u‖²) a, x the MLP input at every position: the rank-1 product, never ΔW itself) and Δr added to its
    output at the row's prediction position."""
    device, dtype = model.cfg.device, model.cfg.dtype
    rows = torch.arange(len(u), device=device)
    positions = batch.positions
    direction = (u / (u * u).sum(-1, keepdim=True)).to(device, dtype)
    a = {name: value.to(device, dtype) for name, value in a.items()}
    norm = model.blocks[layer].ln2
    captured: dict[str, Tensor] = {}

    def capture(stream: Tensor, hook) -> None:
        if "x" not in captured:  # on the bridge this point is ln2's own input hook, which norm() fires again
            captured["x"] = None
            captured["x"] = norm(stream)

    def add(name: str):
        def hook(pre: Tensor, hook) -> Tensor:
            return pre + torch.einsum("bpd,bd->bp", captured["x"], direction)[..., None] * a[name][:, None, :]

        return hook

    def add_residual(out: Tensor, hook) -> Tensor:
        out = out.clone()
        out[rows, positions] += residual.to(device, dtype)
        return out

    hooks = [(hook_name("resid_pre" if model.cfg.parallel_attn_mlp else "resid_mid", layer), capture)]
    hooks += [(hook_name(product_hook(model, name), layer), add(name)) for name in a]
    hooks.append((hook_name("resid_post", layer), add_residual))
    with model.hooks(hooks):
        out = residual_after(model, batch.resid_pre[layer], layer, start_at_layer=layer)
    return out[rows, positions].double().cpu()


def implicit_values(
    subject: SubjectRuns, episode: Episode, batch_size: int = 8, exact: bool = True
) -> dict[str, Tensor]:
    """The implicit update's measures on one subject, float64 [n, layer] per query or [1, layer] per layer:

    - `implicit_norm` ‖ΔW_i‖ (Frobenius over the input matrices), `implicit_mean_norm` ‖mean_i ΔW_i‖;
    - `mlp_change_norm` ‖MLP(u_C) − MLP(u)‖ (what ΔW carries), `residual_term_norm` ‖Δr‖ (what it leaves to the
      residual term), `exact_error` (see `exactness`);
    - per method m that trained every input matrix: `implicit_cos_m` cos(ΔW_i, G_m) (`implicit_abs_cos_m` its
      absolute value: a mean of signed cosines over layers or queries can cancel), `implicit_mean_cos_m`
      cos(mean_i ΔW_i, G_m), `implicit_norm_ratio_m` ‖mean_i ΔW_i‖ / ‖G_m‖; NaN where either update is zero.

    `exact=False` leaves out `exact_error` (its block reruns): for a cross pair, whose ICL side is measured already.
    """
    n_layers = subject.model.cfg.n_layers
    mlp_out = lambda r: (r["resid_post"] - r["resid_pre"] - r["attn_out"]).double()  # noqa: E731
    mlp_change = (mlp_out(subject.readings["icl"]) - mlp_out(subject.readings["zs"])).norm(dim=-1)  # [n, layer]
    parts = [implicit_parts(subject, layer) for layer in range(n_layers)]
    values: dict[str, list[Tensor]] = {}

    def put(name: str, value: Tensor) -> None:
        values.setdefault(name, []).append(value.reshape(-1))

    for layer, (u, a, residual) in enumerate(parts):
        per_query, mean_norm = implicit_norms(u, a)
        put("implicit_norm", per_query)
        put("implicit_mean_norm", torch.tensor(mean_norm))
        put("mlp_change_norm", mlp_change[:, layer])
        put("residual_term_norm", residual.norm(dim=-1))
        for method in subject.deltas:
            update = method_update(subject, method, layer)
            g_norm = torch.tensor(torch.nan) if update is None else sum(g.pow(2).sum() for g in update.values()).sqrt()
            g_norm = torch.where(g_norm > 0, g_norm, torch.nan)  # a zero update has no direction
            inner = torch.full_like(per_query, torch.nan) if update is None else inner_with(u, a, update)
            cos = inner / (torch.where(per_query > 0, per_query, torch.nan) * g_norm)
            put(f"implicit_cos_{method}", cos)
            put(f"implicit_abs_cos_{method}", cos.abs())
            mean = torch.tensor(mean_norm if mean_norm > 0 else torch.nan, dtype=torch.float64)
            put(f"implicit_mean_cos_{method}", inner.mean() / (mean * g_norm))
            put(f"implicit_norm_ratio_{method}", mean / g_norm)
    out = {name: torch.stack(parts, 1) for name, parts in values.items()}  # [n or 1, layer]
    if exact:
        out["exact_error"] = exactness(subject, episode, parts, batch_size)
    return out


def _inner_with_update(
    update: Delta, u: list[Tensor], u_sq: list[Tensor], a: list[dict[str, Tensor]]
) -> tuple[Tensor | None, float]:
    """Per query ⟨ΔW, G⟩ summed over layers (ΔW = a uᵀ / ‖u‖² per layer and weight) and ‖G‖² for a method's update
    G of every layer's MLP input weights; (None, 0) where the update leaves one of them out."""
    tensors = {key: t.detach().double().cpu() for key, t in update.tensors.items()}
    inner, g_sq = torch.zeros(len(u[0]), dtype=torch.float64), 0.0
    for layer, weights in enumerate(a):
        for name in weights:
            G = tensors.get(parameter_name(name, layer))
            if G is None:
                return None, 0.0
            inner += ((u[layer] @ G) * weights[name]).sum(-1) / u_sq[layer]
            g_sq += float(G.pow(2).sum())
    return inner, g_sq


def path_values(subject: SubjectRuns, episode: Episode, batch_size: int = 8) -> dict[str, Tensor]:
    """Dherin's path over demonstrations, set against each method's path over its training: for j = 1..k, ICL's
    implicit update ΔW_j with the first j demonstrations in the prompt (every layer's MLP input weights as one
    vector), against the method's update after training on its first j demonstrations (for one-epoch SGD, its update
    after j steps). Float64 [n, k + 1], column j for j demonstrations (column 0, no demonstration: NaN):

    - `path_cos_m` cos(ΔW_j, G_m,j) per query, `path_norm_ratio_m` ‖ΔW_j‖ / ‖G_m,j‖;
    - `path_change` ‖ΔW_j − ΔW_(j−1)‖ / ‖ΔW_j‖ (ΔW_0 = 0, so j = 1 gives 1): whether ICL's implicit update settles
      as the context grows.
    """
    from dataclasses import replace

    from iclgd_lens.core.methods import run_method
    from iclgd_lens.core.recording import Prompts, read_points

    model, n_layers = subject.model, subject.model.cfg.n_layers
    zs = subject.readings["zs"]
    u = [mlp_input(model, layer, zs["resid_pre"][:, layer], zs["attn_out"][:, layer]) for layer in range(n_layers)]
    u_sq = [(x * x).sum(-1) for x in u]
    weights = [input_matrices(model, layer) for layer in range(n_layers)]
    k = len(episode.demos)
    names = ["path_change"] + [f"path_{s}_{m}" for m in subject.deltas for s in ("cos", "norm_ratio")]
    values = {name: torch.full((len(episode.queries), k + 1), torch.nan, dtype=torch.float64) for name in names}
    previous = None
    for j in range(1, k + 1):
        prefix = replace(episode, demos=episode.demos[:j]).icl_prefix
        icl = read_points(model, Prompts.of(episode, prefix), ("resid_pre", "attn_out"), batch_size=batch_size)
        a = [
            {
                name: (mlp_input(model, layer, icl["resid_pre"][:, layer], icl["attn_out"][:, layer]) - u[layer]) @ W
                for name, W in weights[layer].items()
            }
            for layer in range(n_layers)
        ]
        norm_sq = sum(sum((x * x).sum(-1) for x in a[layer].values()) / u_sq[layer] for layer in range(n_layers))
        if previous is None:
            values["path_change"][:, j] = 1.0
        else:
            change_sq = sum(
                sum(((a[layer][w] - previous[layer][w]) ** 2).sum(-1) for w in a[layer]) / u_sq[layer]
                for layer in range(n_layers)
            )
            values["path_change"][:, j] = (change_sq / norm_sq).sqrt()
        previous = a
        for method, context in subject.contexts.items():
            update = run_method(method, model, replace(episode, train_demos=episode.train_demos[:j]), context)
            inner, g_sq = _inner_with_update(update, u, u_sq, a)
            if inner is None or g_sq == 0:
                continue  # the method does not train the MLP input weights: NaN
            values[f"path_cos_{method}"][:, j] = inner / (norm_sq.sqrt() * g_sq**0.5)
            values[f"path_norm_ratio_{method}"][:, j] = norm_sq.sqrt() / g_sq**0.5
    return values
