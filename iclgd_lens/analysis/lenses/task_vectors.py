"""Task vectors (Hendel et al. 2023), ICL's own stream patched into its zero-shot run, and the residual shift that
ICL and each method give the prediction position.

Stream point l (0 ≤ l ≤ L, L layers) is the residual stream entering layer l, and l = L the stream after the last
layer (before the final norm). For each l:

- `tv_correct`, `tv_logodds` (Hendel's task vector): θ_l is the stream at point l and the last position of ICL
  prompts [demonstrations; dummy query], averaged over the episode's dummy queries (undemonstrated train rows,
  `episodes.DUMMIES_PER_CLASS` of each class, so that no one dummy's answer survives the mean). θ_l depends on the
  demonstrations and not on the evaluation query; the ZS prompt of every evaluation query runs with its stream at
  point l and the prediction position replaced by θ_l, then on through the layers above: whether it answers
  correctly and its label log-odds (first label tokens, as attribution reads them). `tv_majority`: whether the
  query gets the point's most frequent answer, so that its mean is the majority share and 1 says the patched run
  answers one class whatever the query (as a query-independent θ does past the layers that read the query): its
  accuracy there is that class's share of the queries, not the task.
- `own_stream_correct`, `own_stream_logodds`, `own_stream_majority`: the same with ICL's stream *of the same
  query* patched in (what this lens called a task vector before): it can carry the query's answer as well as the
  task, so it bounds what a patch at point l can do rather than measuring the task. l = L gives ICL's answer, no
  patch ZS's.
- `shift_cos_m`: cos(ICL − ZS, m − ZS) of the stream at point l and the prediction position, m a finetuned setting
  (the ZS prompt through m's delta): whether GD moves the prediction's residual stream the way the demonstrations
  do (`shift_abs_cos_m`: its absolute value); `shift_norm_ratio_m`: ‖m − ZS‖ / ‖ICL − ZS‖. NaN where either
  shift is zero (nothing to point).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from iclgd_lens.analysis.lenses.lens_runs import SubjectRuns, check_dummies
from iclgd_lens.core.episodes import Episode
from iclgd_lens.core.hooks import hook_name
from iclgd_lens.core.metrics import logodds
from iclgd_lens.core.readout import Readout
from iclgd_lens.core.recording import Prompts, read_points
from iclgd_lens.core.zs_batch import ZSBatch


def stream_points(reading: dict[str, Tensor]) -> Float[Tensor, "n point d_model"]:
    """The stream entering each layer, then the stream after the last: [n, layer + 1, d_model] (float64)."""
    return torch.cat([reading["resid_pre"], reading["resid_post"][:, -1:]], 1).double()


def task_vector(subject: SubjectRuns, episode: Episode, batch_size: int = 8) -> Float[Tensor, "point d_model"]:
    """Hendel's θ at every stream point (float64): the mean over `episode`'s dummy queries of ICL's stream at the
    last position of [demonstrations; dummy]."""
    check_dummies(episode)
    dummies = Prompts.of(episode, episode.icl_prefix, queries=episode.dummy_queries)
    reading = read_points(subject.model, dummies, ("resid_pre", "resid_post"), batch_size=batch_size)
    return stream_points(reading).mean(0)


@torch.no_grad()
def patched_runs(
    subject: SubjectRuns, episode: Episode, sources: dict[str, Float[Tensor, "n point d_model"]], batch_size: int = 8
) -> tuple[dict[str, Float[Tensor, "n point class"]], Float[Tensor, "n class"]]:
    """First-token label log-probs of the ZS prompts with each source's `[query, point]` patched in at each point
    (the prediction position), per source, and unpatched; each batch's plain run serves every source."""
    model, n_layers = subject.model, subject.model.cfg.n_layers
    readout = Readout(model)
    patched: dict[str, list[Tensor]] = {name: [] for name in sources}
    plain = []
    for start in range(0, len(episode.queries), batch_size):
        rows = list(range(start, min(start + batch_size, len(episode.queries))))
        batch = ZSBatch(model, episode, rows, readout)
        index = torch.arange(len(rows), device=batch.positions.device)
        for name, source in sources.items():
            per_point = []
            for point in range(n_layers + 1):
                value = source[rows, point].to(model.cfg.device, model.cfg.dtype)

                def patch(resid: Tensor, hook, value: Tensor = value) -> Tensor:
                    resid = resid.clone()
                    resid[index, batch.positions] = value
                    return resid

                hook = hook_name("resid_pre", point) if point < n_layers else hook_name("resid_post", n_layers - 1)
                per_point.append(batch.run([(hook, patch)], from_layer=min(point, n_layers - 1)))
            patched[name].append(torch.stack(per_point, 1))
        plain.append(batch.plain)
    return {name: torch.cat(runs).double() for name, runs in patched.items()}, torch.cat(plain).double()


def patch_values(
    subject: SubjectRuns, episode: Episode, sources: dict[str, Float[Tensor, "n point d_model"]], batch_size: int = 8
) -> dict[str, Tensor]:
    """`{name}_correct`, `{name}_logodds` and `{name}_majority` (the query's answer is the point's most frequent)
    [n, point] of the ZS prompts with each source patched in, and `zs_correct` [n, 1]."""
    labels = torch.tensor(episode.labels)
    patched, plain = patched_runs(subject, episode, sources, batch_size)
    values = {"zs_correct": (plain.argmax(-1) == labels).double()[:, None]}
    for name, runs in patched.items():
        n, points, _ = runs.shape
        answers = runs.argmax(-1)
        values[f"{name}_correct"] = (answers == labels[:, None]).double()
        values[f"{name}_majority"] = (answers == answers.mode(0).values).double()
        values[f"{name}_logodds"] = logodds(runs.reshape(n * points, -1), labels.repeat_interleave(points)).view(
            n, points
        )
    return values


def task_vector_values(subject: SubjectRuns, episode: Episode, batch_size: int = 8) -> dict[str, Tensor]:
    """The lens's measures on one subject, float64 [n, point] (module docstring); `zs_correct` [n, 1] too."""
    n = len(episode.queries)
    theta = task_vector(subject, episode, batch_size)
    sources = {"tv": theta.expand(n, *theta.shape), "own_stream": stream_points(subject.readings["icl"])}
    return patch_values(subject, episode, sources, batch_size) | shift_values(subject)


def shift_values(subject: SubjectRuns) -> dict[str, Tensor]:
    """`shift_cos_m`, `shift_abs_cos_m` and `shift_norm_ratio_m` [n, point] for each method m of `subject` (module
    docstring)."""
    values = {}
    zs = stream_points(subject.readings["zs"])
    icl_shift = stream_points(subject.readings["icl"]) - zs
    icl_norm = icl_shift.norm(dim=-1)
    for method in subject.deltas:
        shift = stream_points(subject.readings[method]) - zs
        norm = shift.norm(dim=-1)
        defined = (norm > 0) & (icl_norm > 0)
        cos = (shift * icl_shift).sum(-1) / (norm * icl_norm)
        values[f"shift_cos_{method}"] = torch.where(defined, cos, torch.nan)
        values[f"shift_abs_cos_{method}"] = values[f"shift_cos_{method}"].abs()
        values[f"shift_norm_ratio_{method}"] = torch.where(icl_norm > 0, norm / icl_norm, torch.nan)
    return values
