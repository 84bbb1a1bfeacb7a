"""`compare`: ZS, ICL, GD and LCGD on one model and task (and on the untrained baselines), scored by every metric."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from iclgd_lens.deltas import DEFAULT_GROUPS, LCGD_EXITS, METHODS, Delta, check_groups, check_lr, fit
from iclgd_lens.episodes import Episode, build_episode
from iclgd_lens.models import BASELINES, untrained_copy
from iclgd_lens.recording import Record, check_position, record
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
    position: str = "prediction"
    n_eval: int | None = None
    batch_size: int = 8
    groups: tuple[str, ...] = DEFAULT_GROUPS
    lcgd_exit: str = "block"
    separator: str = "eos"

    def __post_init__(self) -> None:
        for name in ("methods", "baselines", "groups"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        check_lr(self.lr)
        _check_choices("method", self.methods, METHODS, allow_empty=False)
        _check_choices("baseline", self.baselines, BASELINES, allow_empty=True)
        check_groups(self.groups)
        check_position(self.position)
        _check_choices("LCGD exit", (self.lcgd_exit,), LCGD_EXITS, allow_empty=False)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


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
    position: str = "prediction",
    n_eval: int | None = None,
    batch_size: int = 8,
    groups: Sequence[str] = DEFAULT_GROUPS,
    lcgd_exit: str = "block",
    separator: str = "eos",
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Result:
    """Compare ICL with GD/LCGD on `task`: record ZS, ICL and each finetuned setting on the same queries, on the
    model and on each untrained baseline, and score every metric. With `out`, the result is saved there.

    Defaults follow PAPERS.md: k=32, the prediction position (the last prompt token; `first_option` is the
    reference code's), K/V weights and biases trained with SGD, one epoch, batch size 1, EOS between
    demonstrations. `lr` is the paper's per-task choice to make (e.g. SST-2 5e-4 for the 1.3B model).
    """
    config = CompareConfig(
        k,
        seed,
        permutation,
        lr,
        tuple(methods),
        tuple(baselines),
        position,
        n_eval,
        batch_size,
        tuple(groups),
        lcgd_exit,
        separator,
    )
    if out is not None:
        check_output_folder(Path(out), overwrite)
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; load it with load_model or attach one (model.set_tokenizer)")
    episode = build_episode(task, model.tokenizer, model.cfg.n_ctx, k, seed, permutation, n_eval, separator)
    labels = torch.tensor(episode.labels)

    scores, records, W_O = {}, {}, {}
    for name in tqdm(("model", *config.baselines), desc="models", disable=not progress or not config.baselines):
        subject = model if name == "model" else untrained_copy(model, name, seed)
        recorded, weights = run_settings(subject, episode, config, progress)
        scores[name] = score(recorded, labels, weights, config.methods, seed)
        prefix = "" if name == "model" else f"{name}/"
        records |= {prefix + s: r for s, r in recorded.items()}
        W_O |= {prefix + s: w for s, w in weights.items()}
        del subject

    result = Result(describe(model, task, episode, config), scores, records, W_O, labels, episode)
    if out is not None:
        result.save(out, overwrite=overwrite)
    return result


def run_settings(
    model: HookedTransformer, episode: Episode, config: CompareConfig, progress: bool = False
) -> tuple[dict[str, Record], dict[str, torch.Tensor]]:
    """Record ZS, ICL and each method's finetuned model. Also W_O for per-head outputs: the model's ("model") and,
    when O is trained, each method's W_O + ΔW_O."""
    common = dict(
        queries=episode.queries,
        label_tokens=episode.label_tokens,
        position=config.position,
        batch_size=config.batch_size,
        pad_token=episode.bos,
    )
    records = {
        "zs": record(model, prefix=episode.zs_prefix, desc="record zs" if progress else None, **common),
        "icl": record(model, prefix=episode.icl_prefix, desc="record icl" if progress else None, **common),
    }
    W_O = {"model": model.W_O.detach().float().cpu()}
    for method in config.methods:
        delta = fit(model, episode.demos, episode.bos, method, config.lr, config.groups, config.lcgd_exit, progress)
        records[method] = record(
            model, prefix=episode.zs_prefix, delta=delta, desc=f"record {method}" if progress else None, **common
        )
        if "o" in config.groups:
            W_O[method] = W_O["model"] + _stacked_W_O_delta(model, delta)
    return records, W_O


def _stacked_W_O_delta(model: HookedTransformer, delta: Delta) -> torch.Tensor:
    stacked = torch.zeros_like(model.W_O, dtype=torch.float32, device="cpu")
    for layer in range(model.cfg.n_layers):
        change = delta.tensors.get(f"blocks.{layer}.attn.W_O")
        if change is not None:
            stacked[layer] = change.float().cpu()
    return stacked


def describe(model: HookedTransformer, task: Task, episode: Episode, config: CompareConfig) -> dict:
    """result.json's config: every choice and the package versions."""
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
        "seed": config.seed,
        "permutation": config.permutation,
        "lr": config.lr,
        "methods": list(config.methods),
        "baselines": list(config.baselines),
        "position": config.position,
        "n_eval": len(episode.queries),
        "batch_size": config.batch_size,
        "groups": list(config.groups),
        "lcgd_exit": config.lcgd_exit,
        "separator": config.separator,
        "dtype": str(model.cfg.dtype).removeprefix("torch."),
        "device": str(model.cfg.device),
        "versions": versions,
    }
