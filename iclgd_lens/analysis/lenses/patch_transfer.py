"""Does ICL's implicit update act on other queries as GD's does? The chained implicit patch, averaged, on queries it
was not read from.

The chained implicit patch of a query (`implicit_patch`) reproduces ICL on that query exactly, and is that query's
own. GD's update is one weight change that acts on every query. Averaged over n *source* queries, the patches make
one weight change of the whole model too; run on the zero-shot prompts of the other evaluation queries (the
*targets*), beside ZS, ICL and each method's learned delta on the same targets, it says how much of ICL's effect is a
task-level update that carries to other queries and how much is specific to the query it was read from.

- Sources: the first `n_sources` evaluation queries (default `N_SOURCES`); targets: the rest. Every run splits its
  queries the same way, so the targets are the same queries in every run of a task.
- Per target query (measures [targets, 1]): `transfer_correct_<setting>` and `transfer_logodds_<setting>` (the
  label log-odds of the class scores accuracy reads) for ZS, ICL, each method's delta, the mean patch of all sources
  (`patch_mean`) and of the first n sources for each n of `SOURCE_SIZES` below it (`patch_n<n>`: the curve of
  transfer against n; `patch_n1` is the first source's own patch); and `transfer_gain_<setting>` = its log-odds −
  ZS's, a paired difference per query.
- Per layer ([1, layer]), on the matrices both changed: `patch_cos_<method>` cos(mean patch, the method's delta) and
  `patch_norm_ratio_<method>` ‖mean patch‖ / ‖the method's delta‖, beside `random_abs_cos_patch_<method>`, the
  random-direction scale E|cos| at that dimension (`lens_nulls`); with a structured null (`lens_nulls`), the same
  cosine and ratio against the update the method learned from another task (`patch_against_methods` on that
  subject: the mean patch is this task's, the deltas the other task's).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from iclgd_lens.analysis.lenses.implicit_patch import as_delta, chained_patch
from iclgd_lens.analysis.lenses.lens_nulls import random_abs_cos
from iclgd_lens.analysis.lenses.lens_runs import SubjectRuns
from iclgd_lens.core.deltas import Delta
from iclgd_lens.core.episodes import Episode
from iclgd_lens.core.hooks import parameter_name
from iclgd_lens.core.metrics import logodds
from iclgd_lens.core.recording import Prompts, read_points

N_SOURCES = 16  # a quarter of the sweeps' 64 queries: enough to average, leaving 48 targets
SOURCE_SIZES = (1, 2, 4, 8, 16, 32)  # the curve's n


def check_sources(episode: Episode, n_sources: int) -> None:
    if not 1 <= n_sources < len(episode.queries):
        raise ValueError(
            f"the transfer needs 1 to {len(episode.queries) - 1} source queries (the rest are its "
            f"targets), got {n_sources}"
        )


MeanPatch = dict[int, dict[str, Tensor]]  # layer -> the patched matrix's name -> the mean change


def transfer_values(
    subject: SubjectRuns, episode: Episode, n_sources: int = N_SOURCES, batch_size: int = 8
) -> tuple[dict[str, Tensor], MeanPatch]:
    """The measures of the module docstring on one subject (its model and its methods' deltas), float64, and the
    mean patch they were measured with."""
    check_sources(episode, n_sources)
    model, labels = subject.model, torch.tensor(episode.labels[n_sources:])
    targets = episode.queries[n_sources:]
    values: dict[str, Tensor] = {}

    def score(setting: str, prefix, delta: Delta | None) -> None:
        read = read_points(model, Prompts.of(episode, prefix, queries=targets), (), delta, batch_size)
        read = read["label_logprobs"].double()
        values[f"transfer_correct_{setting}"] = (read.argmax(-1) == labels).double()[:, None]
        values[f"transfer_logodds_{setting}"] = logodds(read, labels)[:, None]

    score("zs", episode.zs_prefix, None)
    score("icl", episode.icl_prefix, None)
    for method, delta in subject.deltas.items():
        score(method, episode.zs_prefix, delta)
    total: dict[int, dict[str, Tensor]] = {}
    for count, row in enumerate(range(n_sources), start=1):
        patches, _ = chained_patch(
            model, [*episode.icl_prefix, *episode.queries[row]], [episode.bos, *episode.queries[row]]
        )
        for layer, patch in enumerate(patches):
            layer_total = total.setdefault(layer, {})
            for name, change in patch.materialise().items():
                layer_total[name] = layer_total.get(name, 0) + change.cpu()
        if count in SOURCE_SIZES and count < n_sources:
            score(f"patch_n{count}", episode.zs_prefix, as_delta(model, _divided(total, count)))
    mean = _divided(total, n_sources)
    score("patch_mean", episode.zs_prefix, as_delta(model, mean))
    for setting in [name.removeprefix("transfer_logodds_") for name in values if name.startswith("transfer_logodds_")]:
        if setting != "zs":
            values[f"transfer_gain_{setting}"] = values[f"transfer_logodds_{setting}"] - values["transfer_logodds_zs"]
    return values | patch_against_methods(subject, mean), mean


def _divided(total: MeanPatch, count: int) -> MeanPatch:
    return {layer: {name: change / count for name, change in changes.items()} for layer, changes in total.items()}


def patch_against_methods(subject: SubjectRuns, mean: MeanPatch) -> dict[str, Tensor]:
    """Per layer, the mean patch against each method's delta on the matrices both changed: cosine and norm ratio
    (NaN where they share none, or either is zero), and the random-direction scale at that dimension."""
    n_layers = subject.model.cfg.n_layers
    out = {}
    for method, delta in subject.deltas.items():
        cos, ratio, scale = (torch.full((1, n_layers), math.nan, dtype=torch.float64) for _ in range(3))
        for layer, changes in mean.items():
            shared = [n for n in changes if parameter_name(n, layer) in delta.tensors]
            if not shared:
                continue
            patch = torch.cat([changes[n].flatten() for n in shared]).double()
            learned = torch.cat([delta.tensors[parameter_name(n, layer)].flatten().cpu() for n in shared]).double()
            if patch.norm() > 0 and learned.norm() > 0:
                cos[0, layer] = patch.dot(learned) / (patch.norm() * learned.norm())
                ratio[0, layer] = patch.norm() / learned.norm()
            scale[0, layer] = random_abs_cos(patch.numel())
        out |= {
            f"patch_cos_{method}": cos,
            f"patch_norm_ratio_{method}": ratio,
            f"random_abs_cos_patch_{method}": scale,
        }
    return out
