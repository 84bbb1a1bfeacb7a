"""The runs the lenses read: for a result's model and each of its untrained baselines, the residual stream and the
attention output of every layer at the prediction position, for ZS, ICL and each method's finetuned model.

The model's deltas are the result's own; a baseline's are refit on its seeded untrained copy, which is deterministic
(the same copy, demonstrations, lr and parameters as `compare`). Every rerun is checked against the result: its
accuracy must be the result's for every setting, or the lens refuses to read it (another model, another code).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from iclgd_lens.backend import LensModel
from iclgd_lens.core.accuracy import setting_inputs
from iclgd_lens.core.baselines import check_same_draws, half_copy, untrained_copy
from iclgd_lens.core.deltas import Delta
from iclgd_lens.core.episodes import Episode
from iclgd_lens.core.methods import MethodContext, run_method
from iclgd_lens.core.metrics import accuracy
from iclgd_lens.core.recording import Prompts, read_points
from iclgd_lens.core.results import Result

POINTS = ("resid_pre", "attn_out", "resid_post")  # per layer, at the prediction position


@dataclass
class SubjectRuns:
    """One subject (the model, or an untrained baseline) of a result, with what each setting computed."""

    name: str  # "model" or a baseline's name
    model: LensModel
    deltas: dict[str, Delta]  # method -> the subject's own learned delta
    readings: dict[str, dict[str, Float[Tensor, "n layer d_model"]]]  # setting -> point -> values (float32, CPU)
    contexts: dict[str, MethodContext]  # method -> what compare gave it (to train it again: the path lens)


def check_lens_result(result: Result, model: LensModel) -> None:
    """What every lens needs, checked before anything runs."""
    if result.config.get("position", "prediction") != "prediction":
        raise ValueError(
            "the lenses read the prediction position; this result recorded at the first option's label "
            "token (position 'first_option'): run compare with --position prediction"
        )
    if not result.deltas:
        raise ValueError("the result holds no saved deltas (written before deltas.safetensors): re-run compare")
    check_dummies(result.episode)
    result.check_model(model)


def check_dummies(episode: Episode) -> None:
    """Hendel's task vectors need the episode's dummy queries."""
    if not episode.dummy_queries:
        raise ValueError(
            "the result's episode holds no dummy queries for Hendel's task vectors (written before "
            "they were recorded): re-run compare"
        )


def subject_runs(model: LensModel, result: Result, baselines: Sequence[str] | None = None) -> Iterator[SubjectRuns]:
    """The model's runs, then each baseline's (default: every baseline the result has), one at a time (a baseline's
    copy of the model lives only while its runs are read)."""
    check_lens_result(result, model)
    if result.config.get("precision") == "fp16-mixed" and model.cfg.dtype != torch.float16:
        model = half_copy(model)  # what compare ran
    names = list(result.scores) if baselines is None else ["model", *baselines]
    missing = [name for name in names if name not in result.scores]
    if missing:
        raise ValueError(f"the result has no baseline {missing}; it has {[n for n in result.scores if n != 'model']}")
    check_same_draws(result.config, [name for name in names if name != "model"])
    for name in names:
        contexts = {method: _context(result, method, name) for method in result.methods}
        if name == "model":
            subject, deltas = model, {m: d.to(model.cfg.device, model.cfg.dtype) for m, d in result.deltas.items()}
        else:
            subject = untrained_copy(model, name, result.config["seed"], result.config.get("init", "transformer_lens"))
            deltas = {m: run_method(m, subject, result.episode, context) for m, context in contexts.items()}
        readings = _read(subject, result, deltas)
        _check_accuracy(result, name, readings)
        yield SubjectRuns(name, subject, deltas, readings, contexts)


def _context(result: Result, method: str, subject: str) -> MethodContext:
    """What compare gave the method on `subject` (`run_method` applies its registered options on top), so that a
    baseline's delta refit on its seeded copy is the one compare computed (at its matched lr, where matched)."""
    config = result.config
    return MethodContext(
        result.lr_of(method, subject),
        result.trained_parameters,
        config.get("lcgd_exit", "block"),
        config.get("precision", "native"),
    )


def _read(subject: LensModel, result: Result, deltas: dict[str, Delta]) -> dict[str, dict[str, Tensor]]:
    episode = result.episode
    batch_size = result.config.get("batch_size", 8)
    return {
        name: read_points(subject, Prompts.of(episode, prefix), POINTS, delta, batch_size)
        for name, (prefix, delta) in setting_inputs(episode, deltas).items()
    }


def _check_accuracy(result: Result, name: str, readings: dict[str, dict[str, Tensor]]) -> None:
    """Each setting of the rerun answers as the result did (a query may flip on a float tie: one is allowed)."""
    recorded = result.scores[name].accuracy
    n = len(result.labels)
    for setting, values in readings.items():
        rerun = accuracy(values["label_logprobs"].argmax(-1), result.labels)
        if abs(rerun - recorded[setting]) > 1.5 / n:
            raise ValueError(
                f"rerunning {name}/{setting} gives accuracy {rerun:.3f} where the result has {recorded[setting]:.3f}: "
                "the model, or the code, is not the one the result was computed with (give the result's model with "
                "--model, or re-run compare)"
            )
