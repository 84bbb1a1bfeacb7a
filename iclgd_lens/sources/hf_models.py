"""Hugging Face models as HookedTransformers (TransformerLens 3) without weight processing: TransformerLens hub names
and local checkpoint folders (fully offline); the checks every Hugging Face load passes, on either backend
(`bridge_models` loads them on TransformerLens 4).

No LayerNorm folding, centring or value-bias folding: SGD is not invariant to those re-parametrisations, and
centring changes the attention output the metrics read. So W_K/W_V are the trained parameters.
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from iclgd_lens.backend import BRIDGE
from iclgd_lens.errors import error_summary
from iclgd_lens.sources.bundled import BUNDLED_MODELS
from iclgd_lens.sources.tokenizers import special_tokens

if not BRIDGE:
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as tl_loading

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# How far TransformerLens' logits may sit from transformers' own on the load check, relative to the largest logit.
LOGIT_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
CHECK_PROMPT = "The quick brown fox jumps over the lazy dog. Review: a warm, funny film. Sentiment:"


def load_local_hf_model(folder: Path, device: str, dtype: torch.dtype, tl_name: str | None = None) -> HookedTransformer:
    """A local HF checkpoint folder (config.json + weights + tokenizer) -> HookedTransformer, fully offline, checked
    against transformers' own logits on a short prompt (a converter that drops weights is refused, never loaded).

    `HookedTransformer.from_pretrained(hf_model=...)` still resolves the name on the hub (TransformerLens #846).
    Instead: the TL config from the folder's config.json (or, with `tl_name`, from TransformerLens' official name,
    for architectures its folder reader does not map), the HF model and tokenizer from disk, and TL's own weight
    converter on the loaded HF weights.
    """
    from transformers import AutoModelForCausalLM

    check_folder_files(folder)
    tokenizer = folder_tokenizer(folder)
    cfg = _tl_config(folder, device, dtype, tl_name)
    cfg.model_name = folder.resolve().name
    with quiet_transformers():
        hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True).eval()
    state_dict = tl_loading.get_pretrained_state_dict(tl_name or str(folder), cfg, hf_model, dtype=dtype)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict, fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False
    )
    check_against_transformers(model.eval(), hf_model, str(folder))
    del hf_model
    return model.to(device, print_details=False)


def check_folder_files(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model folder {str(folder)!r} has no config.json; point to a Hugging Face checkpoint")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(
            f"model folder {str(folder)!r} has config.json but no weights (one of {list(WEIGHT_FILES)}); save the "
            "model with save_pretrained into it"
        )


def folder_tokenizer(folder: Path):
    from transformers import AutoTokenizer

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
    return tokenizer


def _tl_config(folder: Path, device: str, dtype: torch.dtype, tl_name: str | None):
    if tl_name is not None:
        return tl_loading.get_pretrained_model_config(tl_name, device=device, dtype=dtype)
    hf_config = json.loads((folder / "config.json").read_text())
    if hf_config.get("model_type") == "gpt2" and "n_ctx" not in hf_config:
        # transformers >= 5 no longer writes GPT-2's n_ctx, which TransformerLens reads: it equals n_positions.
        hf_config["n_ctx"] = hf_config["n_positions"]
    # TL picks some architectures from the *name* (e.g. any path containing "llama") without reading the
    # config, so it reads the config from a folder with a neutral name.
    with tempfile.TemporaryDirectory() as neutral:
        checkpoint = Path(neutral) / "local-checkpoint"
        checkpoint.mkdir()
        (checkpoint / "config.json").write_text(json.dumps(hf_config))
        try:
            return tl_loading.get_pretrained_model_config(str(checkpoint), device=device, dtype=dtype)
        except NotImplementedError:
            architecture = (hf_config.get("architectures") or [hf_config.get("model_type")])[0]
            raise ValueError(
                f"model folder {str(folder)!r}: TransformerLens cannot build {architecture} from a folder's config "
                "(the architectures it can: transformer_lens.loading_from_pretrained.convert_hf_model_config; others "
                "it builds by official name only, as Gemma 3 270M is here: --model gemma3-270m)"
            ) from None


def check_against_transformers(model, hf_model, source: str) -> None:
    """Refuse a conversion whose logits differ from transformers' own on a short prompt by more than the dtype's
    tolerance, relative to the largest logit (TransformerLens 3.9 drops Llama's attention biases, for one)."""
    ids = check_prompt_ids(model.tokenizer)
    with torch.no_grad():
        check_logits(model(ids), hf_model(ids).logits, model.cfg.dtype, source, type(hf_model).__name__)


def check_prompt_ids(tokenizer) -> torch.Tensor:
    """The load check's prompt, at most 24 tokens ([1, pos])."""
    return tokenizer(CHECK_PROMPT, return_tensors="pt").input_ids[:, :24]


def check_logits(ours: torch.Tensor, theirs: torch.Tensor, dtype: torch.dtype, source: str, architecture: str) -> None:
    """The load check: TransformerLens' logits within the dtype's tolerance of transformers', relative to the
    largest logit."""
    ours, theirs = ours.float().cpu(), theirs.float().cpu()
    gap = float((ours - theirs).abs().max() / theirs.abs().max().clamp(min=1e-12))
    tolerance = LOGIT_TOLERANCE.get(dtype, LOGIT_TOLERANCE[torch.float16])
    if not gap <= tolerance:
        raise ValueError(
            f"{source}: TransformerLens' conversion of this {architecture} gives logits {gap:.2g} (relative "
            f"to the largest) from transformers' own on a short prompt, above the {tolerance:g} a faithful "
            "conversion stays within; refusing a silently wrong model (e.g. TransformerLens 3.9 drops Llama's "
            "attention biases)"
        )


@contextmanager
def quiet_transformers(gguf_bar: bool = False) -> Iterator[None]:
    """transformers' own progress bars off (its per-tensor "Loading weights" bar says nothing a user needs).

    The GGUF dequantisation bar is plain tqdm inside transformers (transformers 5.x's
    modeling_gguf_pytorch_utils, not its logging switch): it is silenced unless `gguf_bar`."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    shown, bar = hf_logging.is_progress_bar_enabled(), gguf_utils.tqdm
    hf_logging.disable_progress_bar()
    if not gguf_bar:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar
        if shown:
            hf_logging.enable_progress_bar()


# TransformerLens' own checkpoints on the hub (its `get_pretrained_state_dict` reads them as .pth files): no
# transformers model exists for them, so no conversion happens that a check could catch.
TL_NATIVE_PREFIXES = ("NeelNanda", "ArthurConmy", "Baidicoot")


def load_hub_model(name: str, device: str, dtype: torch.dtype) -> HookedTransformer:
    """A TransformerLens model name through the Hugging Face hub (or its local cache), checked against transformers'
    own logits as a local folder is: transformers loads the checkpoint once and TransformerLens converts that
    same model (`hf_model=`), so the check costs one short forward, not a second download."""
    from transformers import AutoModelForCausalLM

    official = tl_loading.get_official_model_name(name)
    try:
        if official.startswith(TL_NATIVE_PREFIXES):
            return HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=dtype)
        with quiet_transformers():
            hf_model = AutoModelForCausalLM.from_pretrained(official, dtype=dtype).eval()
        model = HookedTransformer.from_pretrained_no_processing(name, hf_model=hf_model, device="cpu", dtype=dtype)
    except OSError as error:  # transformers and huggingface_hub report an unreachable or refused hub as OSError
        raise ValueError(
            f"model {name!r} could not be loaded from the Hugging Face hub ({error_summary(error)}); offline, give a "
            f"local Hugging Face folder (--model PATH) or a bundled model {list(BUNDLED_MODELS)}"
        ) from error
    check_against_transformers(model.eval(), hf_model, name)
    del hf_model
    return model.to(device, print_details=False)
