"""`compare`: ZS, ICL, GD and LCGD on one model and task (and on the untrained baselines), scored by every metric."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from iclgd_lens.backend import LensModel
from iclgd_lens.core.accuracy import record_settings
from iclgd_lens.core.baselines import half_copy, untrained_copy
from iclgd_lens.core.config import CompareConfig
from iclgd_lens.core.deltas import Delta, trained_parameters
from iclgd_lens.core.episodes import Episode, build_episode
from iclgd_lens.core.lr_search import search_lr
from iclgd_lens.core.methods import MethodContext, method_options, run_method
from iclgd_lens.core.metrics import REFERENCE_EPS
from iclgd_lens.core.recording import Record, output_weights
from iclgd_lens.core.results import ARCHITECTURE, Result, check_output_folder
from iclgd_lens.core.scoring import Scores, score
from iclgd_lens.core.update_size import matched_lr
from iclgd_lens.sources.task import Task


def compare(
    model: LensModel,
    task: Task,
    config: CompareConfig | None = None,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **options: Any,
) -> Result:
    """Compare ICL with GD/LCGD on `task`: record ZS, ICL and each finetuned setting on the same queries, on the
    model and on each untrained baseline, and score every metric. With `out`, the result is saved there.

    The options are a `CompareConfig`, or its fields by name (`compare(model, task, k=32, seed=2, lr=5e-4)`), or
    both (the names replace the config's fields). `preset`: "toolkit" or "reference" (the reference code's
    pipeline); each of its choices (position, separator, truncation, text, gd_demos, order, precision,
    arithmetic, init) can be overridden on its own (docs/reference/presets.md). K/V weights (and the biases the
    checkpoint has; `biases="all"` also trains absent ones from zero) are trained with SGD, one epoch, batch size
    1. `lr` is the paper's per-task choice to make (e.g. SST-2 5e-4 for the 1.3B model); `lr_lcgd` gives LCGD its
    own (default: GD's, as the papers do). `subsets=("f2t",)` also scores each method's f2t queries.
    `label_control="shuffled"` or `"reversed"` also runs the whole comparison on the same queries with the
    demonstrations' labels (ICL's and GD's) shuffled or their label words reversed: `result.controls[kind]`, saved
    in the folder's control-<kind>/, and set beside every metric in `summary()` and the reproduction tables.
    `out` saves the result there (`overwrite` replaces a result of this toolkit, nothing else); `progress` shows
    progress bars. Returns the `Result`.
    """
    config = CompareConfig.build(config, **options)
    check_matchable(config)
    if out is not None:
        check_output_folder(Path(out), overwrite)
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; load it with load_model or attach one (model.set_tokenizer)")
    episode = build_episode(task, model.tokenizer, model.cfg.n_ctx, replace(config, label_control=None))
    _warn_dropped(episode, model.cfg.n_ctx)
    if config.choices.precision == "fp16-mixed" and model.cfg.dtype != torch.float16:
        model = half_copy(model)
    parameters = trained_parameters(model, config.groups, config.biases)  # the trained model's, for every subject
    result = compare_episode(model, task, episode, config, parameters, progress)
    if config.label_control is not None:
        control = build_episode(task, model.tokenizer, model.cfg.n_ctx, config)
        if control.demo_labels == episode.demo_labels:
            print(
                f"iclgd-lens: warning: the {config.label_control} label control shows every demonstration's own "
                "label (all of one class?): its comparison repeats the normal one",
                file=sys.stderr,
            )
        result.controls[config.label_control] = compare_episode(model, task, control, config, parameters, progress)
    if out is not None:
        result.save(out, overwrite=overwrite)
    return result


def _warn_dropped(episode: Episode, n_ctx: int) -> None:
    """Say when demonstrations did not fit the context (effective k below k)."""
    k = episode.k
    if episode.effective_k < k:
        print(
            f"iclgd-lens: warning: {k - episode.effective_k} of {k} demonstrations do not fit the {n_ctx}-token "
            f"context and were dropped from the ICL prompt (effective k = {episode.effective_k}); GD trains on "
            f"{len(episode.train_demos)}",
            file=sys.stderr,
        )


@dataclass
class SubjectRun:
    """One subject's share of a comparison (the model, or an untrained baseline named `name`): its deltas and the
    lr each method trained with, and per setting its recording and output weights, scored."""

    name: str
    deltas: dict[str, Delta]
    scores: Scores
    records: dict[str, Record]
    W_O: dict[str, torch.Tensor]
    b_O: dict[str, torch.Tensor]

    def keyed(self, field: str) -> dict[str, Any]:
        """`field`'s settings under the keys a `Result` holds: "gd" on the model, "no_training/gd" on a baseline."""
        prefix = "" if self.name == "model" else f"{self.name}/"
        return {prefix + setting: value for setting, value in getattr(self, field).items()}


def compare_episode(
    model: LensModel,
    task: Task,
    episode: Episode,
    config: CompareConfig,
    parameters: Sequence[str],
    progress: bool = False,
) -> Result:
    """One comparison on one episode: every setting on the model and on each untrained baseline, scored. Each
    subject's methods train at the lr `config` gives them (`fit_methods`): a baseline's matched to the trained
    model's update size by default."""
    runs: dict[str, SubjectRun] = {}
    for name in tqdm(("model", *config.baselines), desc="models", disable=not progress or not config.baselines):
        subject = model if name == "model" else untrained_copy(model, name, config.seed, config.choices.init)
        runs[name] = run_subject(subject, name, task, episode, config, parameters, runs.get("model"), progress)
        del subject
    described = describe(model, task, episode, config, parameters) | _lcgd_lr_record(config, runs["model"].scores.lr)
    return Result(
        described,
        {name: run.scores for name, run in runs.items()},
        {key: value for run in runs.values() for key, value in run.keyed("records").items()},
        {key: value for run in runs.values() for key, value in run.keyed("W_O").items()},
        torch.tensor(episode.labels),
        episode,
        runs["model"].deltas,
        b_O={key: value for run in runs.values() for key, value in run.keyed("b_O").items()},
    )


def run_subject(
    model: LensModel,
    name: str,
    task: Task,
    episode: Episode,
    config: CompareConfig,
    parameters: Sequence[str],
    trained: SubjectRun | None,
    progress: bool = False,
) -> SubjectRun:
    """Subject `name`'s methods fitted (at the lrs `fit_methods` gives it, matched to `trained`, the trained
    model's run, where the config matches update sizes), every setting recorded, and scored."""
    learned, lrs = fit_methods(model, task, episode, config, parameters, name, trained, progress)
    recorded, weights, biases = record_subject(model, episode, config, learned, progress)
    choices = config.choices
    scores = score(
        recorded,
        torch.tensor(episode.labels),
        weights,
        config.seed,
        eps=REFERENCE_EPS if choices.arithmetic == "reference" else None,  # the cosine's arithmetic
        dtype=model.cfg.dtype,
        subsets=config.subsets,
        class_names=task.label_words,
    )
    scores.update_norm, scores.lr = {method: d.norms(model.cfg.n_layers) for method, d in learned.items()}, lrs
    return SubjectRun(name, learned, scores, recorded, weights, biases)


def fit_methods(
    model: LensModel,
    task: Task,
    episode: Episode,
    config: CompareConfig,
    parameters: Sequence[str],
    subject: str,
    trained: SubjectRun | None,
    progress: bool = False,
) -> tuple[dict[str, Delta], dict[str, float]]:
    """Each method's delta on `subject`'s `model` and the lr it trained with: the config's lr; where the config
    matches update sizes (`CompareConfig.matched`) the lr whose ‖ΔW‖ equals the target within 2 %: the trained
    model's update of that method for a baseline (`trained`: the trained model's run; None for the model itself),
    GD's for the trained model's LCGD; for a baseline with `baseline_lr="searched"`, the lr its own held-out search
    chooses (`core.lr_search`). GD trains first."""
    deltas, lrs = {}, {}
    targets = {m: norm["total"] for m, norm in trained.scores.update_norm.items()} if trained else {}
    trained_lrs = trained.scores.lr if trained else {}
    for method in sorted(config.methods, key=lambda m: m != "gd"):
        context = method_context(config, method, parameters, progress)
        if subject != "model" and config.baseline_lr == "searched":
            context = replace(context, lr=searched_lr(model, task, config, method, subject))
        if not config.matched(method, subject):
            deltas[method] = run_method(method, model, episode, context)
            lrs[method] = float(method_options(method).get("lr", context.lr))
            continue
        target = targets[method] if subject != "model" else _gd_norm(model, episode, config, parameters, deltas)
        fit = partial(_run_at, method, model, episode, context)
        label = f"{subject}'s {method}" if subject != "model" else "the trained model's LCGD (matched to GD)"
        start = _start_lr(method, context.lr, lrs, trained_lrs)
        lrs[method], deltas[method] = matched_lr(fit, model.cfg.n_layers, target, start, label)
    return {m: deltas[m] for m in config.methods}, {m: lrs[m] for m in config.methods}


def _start_lr(method: str, lr: float, lrs: dict[str, float], trained_lrs: dict[str, float]) -> float:
    """Where a matched search starts: for a baseline's other methods, its matched GD lr scaled as the trained model's
    lrs are (the same ratio of update sizes is likely; each fit of LCGD costs a read-out per layer), else `lr`."""
    if method != "gd" and "gd" in lrs and method in trained_lrs and "gd" in trained_lrs:
        return lrs["gd"] * trained_lrs[method] / trained_lrs["gd"]
    return lr


def searched_lr(model: LensModel, task: Task, config: CompareConfig, method: str, subject: str) -> float:
    """`method`'s lr on `subject`'s model from its own search over `config.lr_grid`, scored on held-out train rows
    (never the evaluation split)."""
    search = search_lr(model, task, config, method)
    if search["chosen"] is None:
        raise FloatingPointError(f"{subject}'s {method} diverged at every learning rate of --lr-grid; lower the grid")
    return search["chosen"]


def _gd_norm(
    model: LensModel, episode: Episode, config: CompareConfig, parameters: Sequence[str], deltas: dict[str, Delta]
) -> float:
    """‖ΔW‖ of GD on `model` at the config's lr: the run's GD, or (GD not being compared) a fit for the target."""
    gd = deltas.get("gd") or run_method("gd", model, episode, method_context(config, "gd", parameters, False))
    return gd.norms(model.cfg.n_layers)["total"]


def _run_at(method: str, model: LensModel, episode: Episode, context: MethodContext, lr: float) -> Delta:
    return run_method(method, model, episode, replace(context, lr=lr))


def record_subject(
    model: LensModel,
    episode: Episode,
    config: CompareConfig,
    deltas: dict[str, Delta],
    progress: bool = False,
) -> tuple[dict[str, Record], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Record ZS, ICL and each method's finetuned model. Also W_O and b_O (per-head outputs and the attention
    output derive from them): the model's ("model") and, when O is trained, each method's W_O + ΔW_O and
    b_O + Δb_O."""
    records = record_settings(
        model, episode, deltas, position=config.choices.position, batch_size=config.batch_size, progress=progress
    )
    weights = {"model": output_weights(model)}
    if "o" in config.groups:
        weights |= {method: output_weights(model, delta) for method, delta in deltas.items()}
    return records, {s: w for s, (w, _) in weights.items()}, {s: b for s, (_, b) in weights.items()}


def check_matchable(config: CompareConfig) -> None:
    """Refuse, before anything runs, a matched update size for a method whose registered "lr" option fixes its
    learning rate (the search could not move it)."""
    for method in config.methods:
        fixed = "lr" in method_options(method)
        if fixed and any(config.matched(method, s) for s in ("model", *config.baselines)):
            raise ValueError(
                f"method {method!r} fixes its learning rate (its registered 'lr' option), so its update "
                "size cannot be matched; give --baseline-lr paper (and --lr-lcgd gd)"
            )


def _lcgd_lr_record(config: CompareConfig, lrs: dict[str, float]) -> dict:
    """result.json's LCGD lr (the number it trained with on the trained model) and how it was chosen; None and "not
    run" where LCGD was not run, so that nothing reports an lr that trained nothing."""
    if "lcgd" not in config.methods:
        return {"lr_lcgd": None, "lr_lcgd_rule": "not run"}
    rule = config.lr_lcgd if isinstance(config.lr_lcgd, str) else "given"
    return {"lr_lcgd": lrs["lcgd"], "lr_lcgd_rule": rule}


def method_context(config: CompareConfig, method: str, parameters: Sequence[str], progress: bool) -> MethodContext:
    """What `compare` gives each method: its lr, the parameters to train, LCGD's exit and the precision."""
    return MethodContext(
        config.method_lr(method), tuple(parameters), config.lcgd_exit, config.choices.precision, progress
    )


def describe(model: LensModel, task: Task, episode: Episode, config: CompareConfig, parameters: Sequence[str]) -> dict:
    """result.json's config: the model and task, every option (the preset's choices resolved), what the episode
    measured (effective k, GD's k, the number of queries: `n_eval`), the trained parameters, and the package
    versions."""
    packages = ("iclgd-lens", "transformer-lens", "torch", "transformers")
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    run = {"model": model.cfg.model_name, "task": task.name, "eval_split": task.eval_split}
    measured = {
        "effective_k": episode.effective_k,
        "gd_k": len(episode.train_demos),
        "n_eval": len(episode.queries),
        "demonstration_labels": episode.label_control or "true",
    }
    return (
        run
        | config.to_json()
        | measured
        | {
            "trained_parameters": list(parameters),
            "method_options": {method: method_options(method) for method in config.methods},
            "architecture": {name: getattr(model.cfg, name, None) for name in ARCHITECTURE},
            "dtype": str(model.cfg.dtype).removeprefix("torch."),
            "device": str(model.cfg.device),
            "versions": versions,
        }
    )
