"""ZS, ICL and finetuned settings over one episode's queries: the loop that the comparison, the learning-rate
search and the scripts share.

A setting is recorded on the ZS prompt ([BOS] + query) when it is "zs" or a finetuned setting (its delta applied
through hooks), and on the ICL prompt ([BOS] + demonstrations + query) when it is "icl".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from iclgd_lens.backend import LensModel
from iclgd_lens.core.deltas import Delta
from iclgd_lens.core.episodes import Episode
from iclgd_lens.core.metrics import accuracy
from iclgd_lens.core.recording import Prompts, Record, record


def setting_inputs(
    episode: Episode, deltas: Mapping[str, Delta] | None = None, prompts: tuple[str, ...] = ("zs", "icl")
) -> dict[str, tuple[tuple[int, ...], Delta | None]]:
    """Each setting's prefix and delta: `prompts` ("zs", "icl") on their own prefix, each finetuned setting on ZS's
    through its delta."""
    prefixes = {"zs": episode.zs_prefix, "icl": episode.icl_prefix}
    settings = {name: (prefixes[name], None) for name in prompts}
    return settings | {name: (episode.zs_prefix, delta) for name, delta in (deltas or {}).items()}


def record_settings(
    model: LensModel,
    episode: Episode,
    deltas: Mapping[str, Delta] | None = None,
    *,
    prompts: tuple[str, ...] = ("zs", "icl"),
    position: str = "prediction",
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Record]:
    """Returns the `Record` of each of `prompts` ("zs", "icl") and of each finetuned setting in `deltas` (name ->
    delta, applied through hooks on the ZS prompt), on the episode's queries, read at `position`, `batch_size`
    queries per forward; `progress` shows a bar per setting."""
    return {
        name: record(
            model, Prompts.of(episode, prefix, position), delta, batch_size, desc=f"record {name}" if progress else None
        )
        for name, (prefix, delta) in setting_inputs(episode, deltas, prompts).items()
    }


def episode_accuracy(
    model: LensModel, episode: Episode, deltas: Mapping[str, Delta] | None = None, **options: Any
) -> dict[str, float]:
    """Returns the accuracy of each setting `record_settings` records of `model` on `episode` with `deltas` and
    `options` (prompts, position, batch_size): {"zs": ..., "icl": ..., <delta name>: ...}."""
    labels = torch.tensor(episode.labels)
    recorded = record_settings(model, episode, deltas, **options)
    return {name: accuracy(r.pred, labels) for name, r in recorded.items()}
