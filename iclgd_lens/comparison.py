"""`compare`: ZS, ICL, GD and LCGD on one model and task (and on the untrained baselines), scored by every metric."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from iclgd_lens.deltas import DEFAULT_GROUPS, Delta, check_groups, check_lr, fit, trained_parameters
from iclgd_lens.episodes import Episode, build_episode, check_permutation
from iclgd_lens.metrics import REFERENCE_EPS
from iclgd_lens.models import half_copy, untrained_copy
from iclgd_lens.presets import BASELINES, BIASES, LCGD_EXITS, METHODS, SUBSETS, Choices, resolve
from iclgd_lens.recording import Record, record
from iclgd_lens.results import Result, check_output_folder
from iclgd_lens.scoring import score
from iclgd_lens.tasks import Task


@dataclass(frozen=True)
class CompareConfig:
    """Every choice of one comparison; validated before any computation."""

    k: int = 32
    seed: int = 0
    permutation: int = 0
    lr: float = 1e-3
    methods: tuple[str, ...] = METHODS
    baselines: tuple[str, ...] = BASELINES
    n_eval: int | None = None
    batch_size: int = 8
    groups: tuple[str, ...] = DEFAULT_GROUPS
    lcgd_exit: str = "block"
    subsets: tuple[str, ...] = ()
    preset: str = "toolkit"
    choices: Choices = field(default_factory=resolve)
    lr_lcgd: float | None = None  # None: GD's lr, as the papers do
    biases: str = "checkpoint"  # train the biases the checkpoint has, or "all" (absent ones from zero)

    def __post_init__(self) -> None:
        for name in ("methods", "baselines", "groups", "subsets"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        check_lr(self.lr)
        if self.lr_lcgd is not None:
            check_lr(self.lr_lcgd)
        _check_choices("bias setting", (self.biases,), BIASES, allow_empty=False)
        _check_choices("method", self.methods, METHODS, allow_empty=False)
        _check_choices("baseline", self.baselines, BASELINES, allow_empty=True)
        _check_choices("subset", self.subsets, SUBSETS, allow_empty=True)
        check_groups(self.groups)
        _check_choices("LCGD exit", (self.lcgd_exit,), LCGD_EXITS, allow_empty=False)
        check_permutation(self.permutation, self.choices.order)
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k} (with k=0 ICL is ZS and there is no update to compare)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.n_eval is not None and self.n_eval < 1:
            raise ValueError(f"n_eval must be >= 1, got {self.n_eval}")

    def method_lr(self, method: str) -> float:
        """The learning rate of `method`: LCGD's own where given, else GD's."""
        return self.lr_lcgd if method == "lcgd" and self.lr_lcgd is not None else self.lr

    @property
    def eps(self) -> float | None:
        """The cosine's arithmetic: None (exact) or the reference's epsilon."""
        return REFERENCE_EPS if self.choices.arithmetic == "reference" else None


def _check_choices(kind: str, given: Sequence[str], valid: Sequence[str], allow_empty: bool) -> None:
    unknown = [g for g in given if g not in valid]
    if unknown or (not given and not allow_empty) or len(set(given)) != len(given):
        raise ValueError(f"invalid {kind}s {list(given)}; choose (without repeats) from {list(valid)}")


def compare(
    model: HookedTransformer,
    task: Task,
    k: int = 32,
    seed: int = 0,
    permutation: int = 0,
    lr: float = 1e-3,
    methods: Sequence[str] = METHODS,
    baselines: Sequence[str] = BASELINES,
    *,
    preset: str = "toolkit",
    position: str | None = None,
    separator: str | None = None,
    truncation: str | None = None,
    text: str | None = None,
    gd_demos: str | None = None,
    order: str | None = None,
    precision: str | None = None,
    arithmetic: str | None = None,
    init: str | None = None,
    subsets: Sequence[str] = (),
    n_eval: int | None = None,
    batch_size: int = 8,
    groups: Sequence[str] = DEFAULT_GROUPS,
    lcgd_exit: str = "block",
    lr_lcgd: float | None = None,
    biases: str = "checkpoint",
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Result:
    """Compare ICL with GD/LCGD on `task`: record ZS, ICL and each finetuned setting on the same queries, on the
    model and on each untrained baseline, and score every metric. With `out`, the result is saved there.

    `preset`: "toolkit" (defaults below) or "reference" (the reference code's pipeline); each of its choices
    (position, separator, truncation, text, gd_demos, order, precision, arithmetic, init) can be overridden on its
    own (docs/science.md, "Presets"). K/V weights (and the biases the checkpoint has; `biases="all"` also trains
    absent ones from zero) are trained with SGD, one epoch, batch size 1. `lr` is the paper's per-task choice to
    make (e.g. SST-2 5e-4 for the 1.3B model); `lr_lcgd` gives LCGD its own (default: GD's, as the papers do).
    `subsets=("f2t",)` also scores each method's f2t queries.
    """
    choices = resolve(
        preset,
        position=position,
        separator=separator,
        truncation=truncation,
        text=text,
        gd_demos=gd_demos,
        order=order,
        precision=precision,
        arithmetic=arithmetic,
        init=init,
    )
    config = CompareConfig(
        k, seed, permutation, lr, tuple(methods), tuple(baselines), n_eval, batch_size, tuple(groups), lcgd_exit,
        tuple(subsets), preset, choices, lr_lcgd, biases,
    )  # fmt: skip
    if out is not None:
        check_output_folder(Path(out), overwrite)
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; load it with load_model or attach one (model.set_tokenizer)")
    episode = build_episode(task, model.tokenizer, model.cfg.n_ctx, k, seed, permutation, n_eval, choices)
    if episode.effective_k < k:
        print(
            f"iclgd-lens: warning: {k - episode.effective_k} of {k} demonstrations do not fit the {model.cfg.n_ctx}-"
            f"token context and were dropped from the ICL prompt (effective k = {episode.effective_k}); GD trains "
            f"on {len(episode.train_demos)}",
            file=sys.stderr,
        )
    if choices.precision == "fp16-mixed" and model.cfg.dtype != torch.float16:
        model = half_copy(model)
    labels = torch.tensor(episode.labels)
    parameters = trained_parameters(model, config.groups, config.biases)  # the trained model's, for every subject

    scores, records, W_O, deltas = {}, {}, {}, {}
    for name in tqdm(("model", *config.baselines), desc="models", disable=not progress or not config.baselines):
        subject = model if name == "model" else untrained_copy(model, name, seed, choices.init)
        recorded, weights, learned = run_settings(subject, episode, config, parameters, progress)
        if name == "model":
            deltas = learned
        scores[name] = score(
            recorded, labels, weights, config.methods, seed,
            eps=config.eps, dtype=model.cfg.dtype, subsets=config.subsets, class_names=task.label_words,
        )  # fmt: skip
        scores[name]["update_norm"] = {method: d.norms(model.cfg.n_layers) for method, d in learned.items()}
        prefix = "" if name == "model" else f"{name}/"
        records |= {prefix + s: r for s, r in recorded.items()}
        W_O |= {prefix + s: w for s, w in weights.items()}
        del subject

    result = Result(describe(model, task, episode, config, parameters), scores, records, W_O, labels, episode, deltas)
    if out is not None:
        result.save(out, overwrite=overwrite)
    return result


def run_settings(
    model: HookedTransformer,
    episode: Episode,
    config: CompareConfig,
    parameters: Sequence[str],
    progress: bool = False,
) -> tuple[dict[str, Record], dict[str, torch.Tensor], dict[str, Delta]]:
    """Record ZS, ICL and each method's finetuned model (training `parameters`). Also W_O for per-head outputs: the
    model's ("model") and, when O is trained, each method's W_O + ΔW_O; and each method's delta."""
    common = dict(
        queries=episode.queries,
        label_tokens=episode.label_tokens,
        position=config.choices.position,
        batch_size=config.batch_size,
        pad_token=episode.bos,
    )
    records = {
        "zs": record(model, prefix=episode.zs_prefix, desc="record zs" if progress else None, **common),
        "icl": record(model, prefix=episode.icl_prefix, desc="record icl" if progress else None, **common),
    }
    W_O = {"model": model.W_O.detach().float().cpu()}
    deltas = {}
    for method in config.methods:
        delta = fit(
            model, episode.train_demos, episode.bos, method, config.method_lr(method), parameters, config.lcgd_exit,
            progress, config.choices.precision,
        )  # fmt: skip
        records[method] = record(
            model, prefix=episode.zs_prefix, delta=delta, desc=f"record {method}" if progress else None, **common
        )
        if "o" in config.groups:
            W_O[method] = W_O["model"] + _stacked_W_O_delta(model, delta)
        deltas[method] = delta
    return records, W_O, deltas


def _stacked_W_O_delta(model: HookedTransformer, delta: Delta) -> torch.Tensor:
    stacked = torch.zeros_like(model.W_O, dtype=torch.float32, device="cpu")
    for layer in range(model.cfg.n_layers):
        change = delta.tensors.get(f"blocks.{layer}.attn.W_O")
        if change is not None:
            stacked[layer] = change.float().cpu()
    return stacked


def describe(
    model: HookedTransformer, task: Task, episode: Episode, config: CompareConfig, parameters: Sequence[str]
) -> dict:
    """result.json's config: every choice (the preset's resolved), the trained parameters, and the package
    versions."""
    packages = ("iclgd-lens", "transformer-lens", "torch", "transformers")
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "model": model.cfg.model_name,
        "task": task.name,
        "eval_split": task.eval_split,
        "k": config.k,
        "effective_k": episode.effective_k,
        "gd_k": len(episode.train_demos),
        "seed": config.seed,
        "permutation": config.permutation,
        "lr": config.lr,
        "lr_lcgd": config.method_lr("lcgd"),
        "methods": list(config.methods),
        "baselines": list(config.baselines),
        "subsets": list(config.subsets),
        "n_eval": len(episode.queries),
        "batch_size": config.batch_size,
        "groups": list(config.groups),
        "lcgd_exit": config.lcgd_exit,
        "biases": config.biases,
        "trained_parameters": list(parameters),
        "preset": config.preset,
        **config.choices.to_dict(),
        "dtype": str(model.cfg.dtype).removeprefix("torch."),
        "device": str(model.cfg.device),
        "versions": versions,
    }
