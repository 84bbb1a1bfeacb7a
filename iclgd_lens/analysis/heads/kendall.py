"""Dai et al.'s Kendall measure: does ICL attend to the demonstration tokens that GD's training "attends" to?

Per eval query and layer, as Dai et al.'s `compute_training_example_attn.py` with fairseq's attention computes it,
both sides in one geometry (below):
- ICL side: the pre-softmax scores from the recorded position to every demonstration token of the ICL prompt,
  summed over heads (BOS and separator tokens left out): Σ_h q_h · k_h / s, s = attn_scale (fairseq multiplies its
  q by `scaling` = 1/√d_head before the product).
- FT side: for every demonstration token, the attention query q' recorded at that token during its own training
  step (BOS left out), dotted over all of d_model (every head's q concatenated) with the finetuned model's query q at
  the recorded position. fairseq records both q and q' already scaled, so m_FT = Σ_h (q_h / s) · (q'_h / s).
One geometry: every q and k is the vector the model's attention products are made of before any position enters
them: after qk-norm where the model has one (Gemma 3), before rotary angles, without ALiBi's biases (or soft-capping).
Dai's model had absolute positions, already inside q and k, so there both sides are the model's own scores; on a
rotary model the ICL side read from the attention scores carried the relative angle of each demonstration token to
the query while the FT side, whose q and q' sit in two different prompts, has no relative position to rotate by.
Both are softmaxed; Kendall's tau (scipy.stats.kendalltau) between them at token level and at demonstration level
(the softmaxed scores summed per demonstration). Top-k recall: the share of FT's k most-attended items that are
among ICL's k most-attended, at the reference's k per level (100 tokens, 5 demonstrations; capped at the number of
items), with its chance value min(k, n) / n beside it. The random baseline, as the reference draws it: U[0, 1)
scores, one per item of the level (a token, or a demonstration), set against ICL's scores at that level. Means
over the first `n_queries` eval queries (100 in the paper).

Order: at demonstration level, Kendall's tau between each demonstration's place in the ICL prompt (which is also
its training step under the default order) and its demonstration-level score, on each side (`order_icl`,
`order_ft`): positive where a side prefers later demonstrations, negative where it prefers earlier ones. It says
whether the two sides' ranking is carried by where a demonstration stands rather than what it holds (the
demonstration-level tau turns negative when one side prefers the prompt's early demonstrations and the other the
training's recent steps).

Controls, one block of rows each (`subject`): `model` (the result's finetuning), `zero_delta` (the same model
without finetuning: q and q' from the base model, so what tau is with no GD at all), and every untrained baseline
of the result, refitted on its re-initialised copy (its own ICL scores, its own finetuning).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from scipy.stats import kendalltau
from torch import Tensor

from iclgd_lens.analysis.protocol.pooled import measure_layers, paired_table, per_layer_table, pooled_file
from iclgd_lens.backend import LensModel, attention_scale, final_residual, qk_norm, whole_projection_qk_norm
from iclgd_lens.core.baselines import check_same_draws, half_copy, untrained_copy
from iclgd_lens.core.deltas import Delta
from iclgd_lens.core.episodes import Episode
from iclgd_lens.core.finetuning import fit
from iclgd_lens.core.hooks import hook_name
from iclgd_lens.core.methods import MethodContext
from iclgd_lens.core.recording import Prompts, read_points
from iclgd_lens.core.results import Result

RECALL_K = {"token": 100, "demonstration": 5}  # the reference's k per level
PER_QUERY = (  # kept per query and layer
    "tau_token",
    "tau_demonstration",
    "recall_token",
    "recall_demonstration",
    "order_icl",
    "order_ft",
)
ORDERS = ("order_icl", "order_ft")  # each side's tau against the demonstrations' places (demonstration level)
PAIRED = ("tau_token", "tau_demonstration", "order_ft")  # the model against each control (ICL's order is theirs too)
RANDOM_SEED = 0
ZERO_DELTA = "zero_delta"
POOLED_LAYERS, POOLED_PAIRED = "kendall_layers.csv", "kendall_paired.csv"  # a pooled folder's tables (`kendall`)


def softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def top_k_recall(icl: np.ndarray, ft: np.ndarray, k: int) -> float:
    """Share of FT's k highest items that are among ICL's k highest (k capped at the number of items)."""
    k = min(k, len(icl))
    return len(set(np.argsort(-ft, kind="stable")[:k]) & set(np.argsort(-icl, kind="stable")[:k])) / k


def measures(icl_scores: np.ndarray, ft_scores: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> dict:
    """Token- and demonstration-level tau, random tau and top-k recall (with chance) for one query and layer, and
    each side's order tau at demonstration level. `groups[t]`: the demonstration of token t (0..n_demos-1, in
    prompt order)."""
    icl, ft = softmax(icl_scores), softmax(ft_scores)
    demonstrations = np.bincount(groups, weights=icl), np.bincount(groups, weights=ft)
    out = {}
    for level, (a, b) in {"token": (icl, ft), "demonstration": demonstrations}.items():
        k = RECALL_K[level]
        out[level] = {
            "tau": kendalltau(a, b).statistic,
            "tau_random": kendalltau(a, rng.random(len(a))).statistic,  # U[0, 1) per item of this level
            "recall": top_k_recall(a, b, k),
            "recall_k": min(k, len(a)),
            "recall_chance": min(k, len(a)) / len(a),
        }
    place = np.arange(len(demonstrations[0]))
    out["demonstration"] |= {
        "order_icl": kendalltau(place, demonstrations[0]).statistic,
        "order_ft": kendalltau(place, demonstrations[1]).statistic,
    }
    return out


def check_geometry(model: LensModel) -> None:
    """Refuse a model whose query-key normalisation `content` does not reproduce, before anything runs."""
    if whole_projection_qk_norm(model):
        raise NotImplementedError(
            "Kendall applies per-head qk-norm only; OLMo's norm over the whole projection is not "
            "reproduced (give --kendall-queries 0)"
        )


@torch.no_grad()
def content(model: LensModel, layer: int, x: Float[Tensor, "... pos head d_head"], kind: str) -> Tensor:
    """hook_q or hook_k (`kind`) of `layer` as the attention's products use it before positions enter: the model's
    own qk-norm applied where it has one (`backend.qk_norm`: both backends apply it after those hooks), no rotary
    angles."""
    norm = qk_norm(model, layer, kind)
    return x if norm is None else norm(x)


@torch.no_grad()
def _prefix_keys(model: LensModel, prefix: list[int]) -> list[Float[Tensor, "pos head d_head"]]:
    """Every layer's keys of the ICL prefix, in `content` geometry and one per query head (grouped-query attention's
    key-value heads repeated), from one forward of the prefix: a causal model's prefix keys do not depend on the
    query that follows."""
    found = {}

    def grab(k: Tensor, hook) -> None:
        layer = hook.layer()
        keys = content(model, layer, k[0], "k").double().cpu()
        found[layer] = keys.repeat_interleave(model.cfg.n_heads // keys.shape[1], dim=1)

    with model.hooks([(hook_name("k", l), grab) for l in range(model.cfg.n_layers)]):
        final_residual(model, torch.tensor([prefix], device=model.cfg.device))
    return [found[l] for l in range(model.cfg.n_layers)]


def _icl_scores(
    model: LensModel, episode: Episode, n: int, keep: np.ndarray, position: str, batch_size: int
) -> np.ndarray:
    """[n, layer, kept tokens]: ICL's pre-softmax scores from the recorded position to the prefix tokens `keep`,
    summed over heads, in `content` geometry: Σ_h q_h · k_h / attn_scale, q at the recorded position of each ICL
    prompt, k the prefix's."""
    q = _queries_at_position(model, episode, n, episode.icl_prefix, position, None, batch_size)
    keys = _prefix_keys(model, list(episode.icl_prefix))
    out = np.zeros((n, model.cfg.n_layers, len(keep)))
    for layer in range(model.cfg.n_layers):
        scores = torch.einsum("nhd,thd->nt", q[:, layer], keys[layer][torch.as_tensor(keep)])
        out[:, layer] = (scores / attention_scale(model, layer)).numpy()
    return out


def _queries_at_position(
    model: LensModel,
    episode: Episode,
    n: int,
    prefix: Sequence[int],
    position: str,
    delta: Delta | None,
    batch_size: int,
) -> Float[Tensor, "n layer head d_head"]:
    """Every layer's query at the recorded position of the first `n` queries after `prefix` (under `delta`), in
    `content` geometry, float64 on the CPU: the prefix run once and shared by the query rows (`read_points`)."""
    prompts = Prompts.of(episode, prefix, position, queries=episode.queries[:n])
    read = read_points(model, prompts, ("q",), delta, batch_size)["q"]
    device, dtype = model.cfg.device, model.cfg.dtype
    return torch.stack(
        [content(model, layer, read[:, layer].to(device, dtype), "q").cpu() for layer in range(model.cfg.n_layers)], 1
    ).double()


@torch.no_grad()
def _base_queries(model: LensModel, prompts: list[list[int]]) -> list[torch.Tensor]:
    """Per prompt: hook_q of every layer at every position but the first ([layer, pos - 1, head * d_head], float64,
    CPU), one forward per prompt as each training step runs it (a batched forward would round some q' apart in
    the last bit, enough to reorder near-ties in tau)."""
    out = []
    for tokens in prompts:
        found = {}

        def grab(q: torch.Tensor, hook) -> None:
            found[hook.layer()] = content(model, hook.layer(), q[0, 1:], "q").flatten(-2).double().cpu()

        with model.hooks([(hook_name("q", l), grab) for l in range(model.cfg.n_layers)]):
            final_residual(model, torch.tensor([tokens], device=model.cfg.device))
        out.append(torch.stack([found[l] for l in range(model.cfg.n_layers)]))
    return out


def _finetuned_queries(
    model: LensModel, episode: Episode, delta: Delta | None, n: int, position: str, batch_size: int
) -> torch.Tensor:
    """[n, layer, head * d_head]: the (finetuned) model's query at the recorded position of each ZS prompt, in
    `content` geometry."""
    return _queries_at_position(model, episode, n, [episode.bos], position, delta, batch_size).flatten(-2)


def _fit_with_queries(
    model: LensModel, result: Result, method: str, subject: str = "model"
) -> tuple[Delta, list[torch.Tensor]]:
    """Refit `method` on `model` recording every step's queries at every demonstration token (BOS excluded) as that
    step's forward computed them: [layer, token, head * d_head] per step."""
    config, episode = result.config, result.episode
    n_layers = model.cfg.n_layers
    steps: list[dict[int, torch.Tensor]] = []

    def keep_q(q: torch.Tensor, hook) -> None:
        if hook.layer() == 0:  # the first layer opens a step's forward
            steps.append({})
        steps[-1][hook.layer()] = content(model, hook.layer(), q[0, 1:].detach(), "q").float().cpu()

    observers = [(hook_name("q", l), keep_q) for l in range(n_layers)]
    context = MethodContext(
        result.lr_of(method, subject),
        tuple(result.trained_parameters),
        config["lcgd_exit"],
        config.get("precision", "native"),
    )
    delta = fit(model, episode.train_demos, episode.bos, context, method, observers=observers)
    return delta, [torch.stack([step[l] for l in range(n_layers)]).flatten(-2).double() for step in steps]


def _check_refit(delta: Delta, result: Result, method: str) -> None:
    """The refit must be the saved delta (same demonstrations, order and lr: a deterministic computation)."""
    if method not in result.deltas:
        return
    for name, saved in result.deltas[method].tensors.items():
        if not torch.allclose(delta.tensors[name].cpu().float(), saved.float(), atol=1e-5, rtol=1e-4):
            raise ValueError(
                f"the refitted {method} delta differs from the saved one at {name}: is this the model "
                "the result was computed on?"
            )


def _alignment(episode: Episode) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Demonstrations both ICL and the training saw, by train row; tokens in ICL-prompt order: the ICL prefix
    positions kept, each one's demonstration group, and its (training step, token) in the training."""
    step_of_row = {row: step for step, row in enumerate(episode.train_rows)}
    keep, groups, ft_index, position = [], [], [], 1  # ICL prefix position 0 is BOS
    for row, demo in zip(episode.demo_rows, episode.demos):
        if row in step_of_row:
            keep += range(position, position + len(demo))
            groups += [len(set(groups))] * len(demo)
            ft_index += [(step_of_row[row], t) for t in range(len(demo))]
        position += len(demo) + len(episode.separator)
    if not keep:
        raise ValueError("no demonstration is both in the ICL prompt and in the training set")
    return keep, groups, ft_index


def ft_scores(q: torch.Tensor, q_train: torch.Tensor, attn_scale: torch.Tensor) -> np.ndarray:
    """[n, layer, tokens]: Σ_h (q_h / s) · (q'_h / s) as fairseq records them (q [n, layer, d], q_train
    [layer, tokens, d], s [layer] each layer's attn_scale)."""
    return (torch.einsum("nld,ltd->nlt", q, q_train) / attn_scale[None, :, None] ** 2).numpy()


def kendall_scores(
    model: LensModel,
    result: Result,
    method: str,
    n: int,
    finetune: bool,
    check_refit: bool = False,
    subject: str = "model",
    icl: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two sides Kendall's tau ranks, before the softmax: ICL's scores and FT's [n, layer, tokens] (float32),
    and each token's demonstration [tokens]. `finetune`: refit `method` on `model` (`check_refit`: against the
    saved delta; at `subject`'s own lr); otherwise every q and q' comes from `model` itself. `icl`: ICL's side
    when it is already known (the same model's: it does not depend on the finetuning)."""
    episode, position = result.episode, result.config.get("position", "prediction")
    batch_size = result.config.get("batch_size", 8)
    keep, groups, ft_index = _alignment(episode)
    if finetune:
        delta, training_queries = _fit_with_queries(model, result, method, subject)
        if check_refit:
            _check_refit(delta, result, method)
    else:  # no finetuning: every demonstration's q' from the base model
        delta = None
        training_queries = _base_queries(model, [[episode.bos, *d] for d in episode.train_demos])
    if icl is None:
        icl = _icl_scores(model, episode, n, np.array(keep), position, batch_size).astype(np.float32)
    q = _finetuned_queries(model, episode, delta, n, position, batch_size)  # [n, layer, d]
    q_train = torch.stack([training_queries[s][:, t] for s, t in ft_index], 1)  # [layer, tokens, d]
    attn_scale = torch.tensor(
        [attention_scale(model, layer) for layer in range(model.cfg.n_layers)], dtype=torch.float64
    )
    # Rounded to float32, the resolution of the activations they come from: a repeated token in the same context has
    # the same score, which float64 reduction order would otherwise split by ~1e-16 and let tau rank by that noise.
    return icl, ft_scores(q, q_train, attn_scale).astype(np.float32), np.array(groups)


def _subject_rows(subject: str, sides: tuple[np.ndarray, np.ndarray, np.ndarray], n: int) -> tuple[list[dict], dict]:
    """kendall.csv's rows of one subject from its two sides (`kendall_scores`), and its per-query values
    (`PER_QUERY`, each [n, layer]: what the intervals resample)."""
    icl, ft, groups_array = sides
    rng = np.random.default_rng(RANDOM_SEED)
    rows = []
    per_query = {name: np.full((n, icl.shape[1]), np.nan) for name in PER_QUERY}
    for layer in range(icl.shape[1]):
        computed = [measures(icl[i, layer], ft[i, layer], groups_array, rng) for i in range(n)]
        for level in ("token", "demonstration"):
            values = pd.DataFrame([m[level] for m in computed])
            for name in ("tau", "recall"):
                per_query[f"{name}_{level}"][:, layer] = values[name]
            for name in ORDERS if level == "demonstration" else ():
                per_query[name][:, layer] = values[name]
            # tau is undefined (NaN) where one side is constant: the mean skips those, `defined` counts the rest
            rows.append(
                {
                    "subject": subject,
                    "layer": layer,
                    "level": level,
                    **values.mean().to_dict(),
                    "defined": int(values.tau.notna().sum()),
                    "queries": n,
                }
            )
    return rows, per_query


COLUMNS = [
    "subject",
    "layer",
    "level",
    "tau",
    "tau_random",
    "recall",
    "recall_k",
    "recall_chance",
    *ORDERS,
    "defined",
    "queries",
]


def kendall_table(
    model: LensModel, result: Result, method: str = "gd", n_queries: int = 100, controls: bool = True
) -> pd.DataFrame:
    """kendall.csv: per subject (`model`, and with `controls` `zero_delta` and each untrained baseline), layer and
    level: tau, tau_random, recall (at recall_k) and its chance value (means over queries), defined (the queries
    whose tau is defined), queries. `table.attrs["seconds"]`: each subject's time."""
    check_same_draws(result.config, result.config.get("baselines", []) if controls else [])
    check_geometry(model)
    n = min(n_queries, len(result.episode.queries))
    if result.config.get("precision") == "fp16-mixed" and model.cfg.dtype != torch.float16:
        model = half_copy(model)  # as compare ran it: the refit must be the saved fp16 delta
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    trained = kendall_scores(model, result, method, n, finetune=True, check_refit=True)
    rows, per_query = [], {}

    def add(subject: str, sides: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        subject_rows, per_query[subject] = _subject_rows(subject, sides, n)
        rows.extend(subject_rows)
        seconds[subject] = time.perf_counter() - started - sum(seconds.values())

    add("model", trained)
    if controls:
        # the zero-delta control: the same model, so the same ICL side
        add(ZERO_DELTA, kendall_scores(model, result, method, n, False, icl=trained[0]))
        config = result.config
        for baseline in config.get("baselines", []):
            copy = untrained_copy(model, baseline, config["seed"], config.get("init", "transformer_lens"))
            add(baseline, kendall_scores(copy, result, method, n, True, subject=baseline))
            del copy
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs["seconds"], table.attrs["per_query"] = seconds, per_query
    return table


def queries_table(per_query: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """kendall_queries.csv: one row per (subject, level, query, layer) with tau and recall, and at demonstration
    level each side's order tau, from `kendall_table(...).attrs["per_query"]`."""
    frames = []
    for subject, values in per_query.items():
        n, n_layers = values["tau_token"].shape
        for level in ("token", "demonstration"):
            frames.append(
                pd.DataFrame(
                    {
                        "subject": subject,
                        "level": level,
                        "query": np.repeat(np.arange(n), n_layers),
                        "layer": np.tile(np.arange(n_layers), n),
                        "tau": values[f"tau_{level}"].reshape(-1),
                        "recall": values[f"recall_{level}"].reshape(-1),
                        **{name: values[name].reshape(-1) if level == "demonstration" else np.nan for name in ORDERS},
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def read_queries_table(table: pd.DataFrame) -> dict[str, dict[str, np.ndarray]]:
    """`queries_table`'s inverse: subject -> PER_QUERY measure -> [n, layer] (a table written before the order
    measures: without them)."""
    out: dict[str, dict[str, np.ndarray]] = {}

    def grid(part: pd.DataFrame, column: str) -> np.ndarray:
        pivot = part.pivot(index="query", columns="layer", values=column).sort_index().sort_index(axis=1)
        return pivot.to_numpy(dtype=np.float64)

    for (subject, level), part in table.groupby(["subject", "level"], sort=False):
        measures = {f"{name}_{level}": grid(part, name) for name in ("tau", "recall")}
        if level == "demonstration":
            measures |= {name: grid(part, name) for name in ORDERS if name in table.columns}
        out.setdefault(subject, {}).update(measures)
    return out


def pooled_tables(runs: Sequence[dict[str, dict[str, np.ndarray]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Kendall over one or several runs of one task (per run: `read_queries_table`'s values): per subject, measure
    and layer the mean with its interval (queries with one run; runs and queries with several, the crossed
    resampling the lenses use), and the model against `zero_delta` and each baseline on the mean over layers,
    paired by run and query, with a verdict (`too few runs` below five): tau at both levels and FT's order tau
    (ICL's is the same for the model and `zero_delta`). Runs read before the order measures pool without them."""
    return per_layer_table(runs), paired_table(runs, PAIRED)


def kendall_verdicts(folder: Path) -> pd.DataFrame:
    """A pooled Kendall folder's paired verdicts (kendall_paired.csv, `pooled_tables`' second table): the model's
    tau against zero_delta's and each baseline's, mean over layers, paired by run and query."""
    return pd.read_csv(pooled_file(folder, POOLED_PAIRED, "kendall"))


def kendall_layers(folder: Path, measure: str) -> pd.DataFrame:
    """`measure` (tau_token, tau_demonstration, recall_token, recall_demonstration) per layer for every subject of
    a pooled Kendall folder, the model first. Columns: layer, subject, mean, low, high."""
    where = pooled_file(folder, POOLED_LAYERS, "kendall")
    return measure_layers(pd.read_csv(where), measure, str(where))
