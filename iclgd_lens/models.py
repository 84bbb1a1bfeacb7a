"""Load HookedTransformer models without weight processing, and build the papers' untrained baselines.

No LayerNorm folding, centring or value-bias folding: SGD is not invariant to those re-parametrisations, and
centring changes the attention output the metrics read. So W_K/W_V are the trained parameters.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import torch
from transformer_lens import HookedTransformer
from transformer_lens import loading_from_pretrained as tl_loading

BUNDLED_MODELS = ("tiny-icl",)
BASELINES = ("no_training", "trained_embeddings")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    name: str | os.PathLike, device: str | None = None, dtype: str | torch.dtype = "float32"
) -> HookedTransformer:
    """Load a model by TransformerLens name, local Hugging Face folder, bundled name ("tiny-icl"), or a folder
    in the bundled format (what analyses/train_tiny_icl.py writes).

    The model is in eval mode, with no weight processing, on CUDA when available unless `device` is given.
    """
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype)
    name = str(name)
    if name in BUNDLED_MODELS:
        from iclgd_lens.tiny_model import BUNDLED_DIR, load_bundled

        model = load_bundled(BUNDLED_DIR / name, device=device, dtype=torch_dtype)
    elif Path(name).is_dir() and is_bundled_folder(Path(name)):
        from iclgd_lens.tiny_model import load_bundled

        model = load_bundled(Path(name), device=device, dtype=torch_dtype)
    elif Path(name).is_dir():
        model = load_local_hf_model(Path(name), device=device, dtype=torch_dtype)
    else:
        check_model_name(name)
        model = HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=torch_dtype)
    model.cfg.model_name = model.cfg.model_name or name
    return model.eval()


def is_bundled_folder(folder: Path) -> bool:
    """A TransformerLens config (it has d_model; a Hugging Face config has model_type) beside its weights."""
    config = folder / "config.json"
    if not config.is_file() or not (folder / "model.safetensors").is_file():
        return False
    fields = json.loads(config.read_text())
    return "d_model" in fields and "model_type" not in fields


def check_model_name(name: str) -> None:
    """Refuse an unknown name before anything is downloaded, listing what is valid."""
    try:
        tl_loading.get_official_model_name(name)
    except ValueError:
        raise ValueError(
            f"unknown model {name!r}: not a bundled model {list(BUNDLED_MODELS)}, not a local folder, and not a "
            "TransformerLens model name (e.g. gpt2, pythia-160m, meta-llama/Llama-3.2-1B; full list: "
            "transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES)"
        ) from None


def load_local_hf_model(folder: Path, device: str, dtype: torch.dtype) -> HookedTransformer:
    """A local HF checkpoint folder (config.json + weights + tokenizer) -> HookedTransformer, fully offline.

    `HookedTransformer.from_pretrained(hf_model=...)` still resolves the name on the hub (TransformerLens #846).
    Instead: the TL config from the folder's config.json, the HF model and tokenizer from disk, and TL's own
    weight converter on the loaded HF weights.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model folder {str(folder)!r} has no config.json; point to a Hugging Face checkpoint")
    # TL picks some architectures from the *name* (e.g. any path containing "llama") without reading the
    # config, so it is shown the folder under a neutral name.
    with tempfile.TemporaryDirectory() as neutral:
        link = Path(neutral) / "local-checkpoint"
        link.symlink_to(folder.resolve(), target_is_directory=True)
        cfg = tl_loading.get_pretrained_model_config(str(link), device=device, dtype=dtype)
    cfg.model_name = folder.resolve().name
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    state_dict = tl_loading.get_pretrained_state_dict(str(folder), cfg, hf_model, dtype=dtype)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict, fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False
    )
    del hf_model
    return model.to(device)


def untrained_copy(model: HookedTransformer, baseline: str, seed: int) -> HookedTransformer:
    """A seeded re-initialised copy of `model`, with TransformerLens' own initialisation scheme.

    - `no_training`: every weight re-initialised (matrices by cfg.init_mode, biases 0, norm gains 1);
    - `trained_embeddings`: keep token/positional embeddings, every LayerNorm and the unembedding; re-initialise
      the rest.
    """
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; use one of {list(BASELINES)}")
    fresh = copy.deepcopy(model)
    fresh.cfg.seed = seed  # init_weights seeds the global RNG from cfg.seed; fork_rng restores it afterwards
    devices = [torch.cuda.current_device()] if str(fresh.cfg.device).startswith("cuda") else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        # init_weights re-draws only the W_* matrices: reset biases and norm gains as a fresh model has them.
        # TransformerLens names norm parameters "w"/"b" and every other parameter "W_*"/"b_*".
        for name, param in fresh.named_parameters():
            if not _leaf(name).startswith("W_"):
                param.fill_(1.0 if _leaf(name) == "w" else 0.0)
        fresh.init_weights()
        if baseline == "trained_embeddings":
            trained = dict(model.named_parameters())
            for name, param in fresh.named_parameters():
                if _is_embedding_or_norm(name):
                    param.copy_(trained[name])
    return fresh.eval()


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _is_embedding_or_norm(name: str) -> bool:
    return name.startswith(("embed.", "pos_embed.", "unembed.")) or _leaf(name) in ("w", "b")
