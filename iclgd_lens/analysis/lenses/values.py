"""The lenses over one result: every lens measure per subject (`lens_values`: the model, each untrained baseline,
the model under each label control and their cross pairs, the structured null), to be pooled over runs into per-layer
intervals and paired verdicts by `protocol.pooled`; the lenses' verdict measures (`verdict_measures`)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from iclgd_lens.analysis.lenses.implicit_update import implicit_values, path_values
from iclgd_lens.analysis.lenses.lens_nulls import check_null_result, other_task_subject, random_scales
from iclgd_lens.analysis.lenses.lens_runs import SubjectRuns, subject_runs
from iclgd_lens.analysis.lenses.patch_transfer import MeanPatch, check_sources, patch_against_methods, transfer_values
from iclgd_lens.analysis.lenses.task_vectors import shift_values, task_vector_values
from iclgd_lens.analysis.protocol.pooled import RunValues
from iclgd_lens.analysis.protocol.tables import check_poolable
from iclgd_lens.backend import LensModel
from iclgd_lens.core.episodes import Episode
from iclgd_lens.core.results import Result, cross_pair_name

# The measures the paired verdicts compare (method-specific ones are named per method).
VERDICT_MEASURES = (
    "implicit_cos_{m}",
    "implicit_abs_cos_{m}",
    "shift_cos_{m}",
    "shift_abs_cos_{m}",
    "tv_correct",
    "transfer_gain_patch_mean",
)


def lens_values(
    model: LensModel,
    result: Result,
    baselines: Sequence[str] | None = None,
    batch_size: int | None = None,
    path: bool = False,
    null: Result | None = None,
    transfer: int | None = None,
) -> RunValues:
    """Every lens measure on the model and each baseline of `result`, and on the model under each of its label
    controls ("model [shuffled]", compared like a baseline) and their cross pairs ("model [ICL true, FT shuffled]":
    the measures that set ICL against a method, `method_measures`): subject -> measure -> values. The model also
    carries the random-direction scale of each cosine (`lens_nulls.random_scales`). `null`: a result of another
    task on the same model, whose methods' updates make the structured null "model [FT on <task>]"
    (`lens_nulls`). `path`: also the path over demonstrations (`implicit_update.path_values`: k more ICL runs and k
    trainings per method and subject). `transfer`: also the mean chained implicit patch of that many source queries
    on the other queries, against each method's update (`patch_transfer`), on the model and each baseline."""
    batch_size = batch_size or result.config.get("batch_size", 8)
    if null is not None:
        check_null_result(result, null, model)
    if transfer is not None:
        check_sources(result.episode, transfer)
    values: RunValues = {}
    trained: dict[str, SubjectRuns] = {}  # labels ("true" or a control's kind) -> the trained model's runs
    patches: dict[str, MeanPatch] = {}  # subject -> its mean chained implicit patch (with `transfer`)
    sources = [(result, baselines, "true")] + [(control, [], kind) for kind, control in result.controls.items()]
    for source, names, labels in sources:
        for subject in subject_runs(model, source, names):
            measures = implicit_values(subject, source.episode, batch_size)
            measures |= task_vector_values(subject, source.episode, batch_size)
            if path:
                measures |= path_values(subject, source.episode, batch_size)
            if transfer is not None and labels == "true":
                transferred, mean_patch = transfer_values(subject, source.episode, transfer, batch_size)
                measures |= transferred
                patches[subject.name] = mean_patch
            suffix = "" if labels == "true" else f" [{labels}]"
            values[subject.name + suffix] = {name: value.numpy() for name, value in measures.items()}
            if subject.name == "model":
                trained[labels] = subject
    values["model"] |= random_scales(model)
    constructed = [
        (cross_pair(trained, kind, icl), (result if icl == "true" else control).episode)
        for kind, control in result.controls.items()
        for icl in ("true", kind)
    ]
    other_task = other_task_subject(trained["true"], result, null, batch_size) if null is not None else None
    if other_task is not None:
        constructed.append((other_task, result.episode))
    for subject, episode in constructed:
        values[subject.name] = {name: v.numpy() for name, v in method_measures(subject, episode, batch_size).items()}
    if other_task is not None and "model" in patches:  # the model's mean patch against the other task's updates
        against = patch_against_methods(other_task, patches["model"])
        values[other_task.name] |= {name: v.numpy() for name, v in against.items()}
    return values


def cross_pair(trained: dict[str, SubjectRuns], kind: str, icl: str) -> SubjectRuns:
    """The trained model with ICL's side on `icl`'s labels ("true" or `kind`) and the methods on the other's
    (`Result.crossed` for the similarity metrics). `trained`: the trained model's runs per labels."""
    icl_side, method_side = (trained["true"], trained[kind]) if icl == "true" else (trained[kind], trained["true"])
    readings = {setting: icl_side.readings[setting] for setting in ("zs", "icl")}
    readings |= {method: method_side.readings[method] for method in method_side.deltas}
    return SubjectRuns(
        f"model [{cross_pair_name(kind, icl)}]", icl_side.model, method_side.deltas, readings, method_side.contexts
    )


def method_measures(subject: SubjectRuns, episode: Episode, batch_size: int) -> dict[str, Tensor]:
    """The measures that set ICL against a method (the implicit update's cosines and norm ratio, the residual
    shift's), for a subject whose ICL side is measured already (a cross pair, the structured null); `episode`: its
    ICL side's."""
    measures = implicit_values(subject, episode, batch_size, exact=False) | shift_values(subject)
    return {name: value for name, value in measures.items() if any(name.endswith(f"_{m}") for m in subject.deltas)}


def check_same_design(named: Sequence[tuple[str, Result]]) -> None:
    """Runs pooled by the lenses: one model and task, one design, the same queries, each run once
    (`tables.check_poolable`). `named`: (folder, result) pairs."""
    tasks = list(dict.fromkeys(result.config["task"] for _, result in named))
    if len(tasks) > 1:
        raise ValueError(
            f"the results are of tasks {tasks}: the lenses pool the runs of one task; give one task's runs"
        )
    check_poolable(named, queries=True)


def verdict_measures(methods: Sequence[str]) -> list[str]:
    """The lenses' verdict measures (VERDICT_MEASURES) for these methods."""
    measures = [m.format(m=method) for m in VERDICT_MEASURES for method in methods if "{m}" in m]
    return measures + [m for m in VERDICT_MEASURES if "{m}" not in m]
