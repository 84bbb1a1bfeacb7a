"""Hugging Face models on TransformerLens 4: the model wrapped in a `TransformerBridge`, raw weights.

`TransformerBridge.boot_transformers(..., hf_model=...)` wraps the loaded model itself; without
`enable_compatibility_mode()` nothing is folded or centred, so W_K and W_V stay the trained parameters (as
`hf_models` keeps them on TransformerLens 3). Booting replaces the model's submodules in place, so transformers'
logits for the load check are taken before.
"""

from __future__ import annotations

from pathlib import Path

import torch

from iclgd_lens.backend import BRIDGE, LensModel
from iclgd_lens.errors import error_summary
from iclgd_lens.sources.hf_models import (
    check_folder_files,
    check_logits,
    check_prompt_ids,
    folder_tokenizer,
    quiet_transformers,
)

if BRIDGE:
    from transformer_lens.model_bridge import TransformerBridge


def load_bridge_model(source: str | Path, device: str, dtype: torch.dtype, name: str | None = None) -> LensModel:
    """A local Hugging Face folder (offline) or a hub name -> TransformerBridge on `device` in `dtype`, checked
    against transformers' own logits on a short prompt. `name` labels the model (cfg.model_name)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(source).is_dir()
    if local:
        check_folder_files(Path(source))
        tokenizer = folder_tokenizer(Path(source))
    try:
        with quiet_transformers():
            if not local:
                tokenizer = AutoTokenizer.from_pretrained(str(source))
            hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local).eval()
    except OSError as error:  # an unreachable or refused hub
        raise ValueError(
            f"model {str(source)!r} could not be loaded from the Hugging Face hub ({error_summary(error)}); offline, "
            "give a local Hugging Face folder (--model PATH)"
        ) from error
    label = name or (Path(source).resolve().name if local else str(source))
    return wrap_checked(hf_model.to(device), tokenizer, label, str(source))


def wrap_checked(hf_model, tokenizer, label: str, source: str) -> LensModel:
    """`hf_model` (on its device, in its dtype) wrapped in a TransformerBridge named `label`, checked against its own
    logits on a short prompt taken before wrapping (booting replaces its submodules in place)."""
    device, dtype = hf_model.device, hf_model.dtype
    ids = check_prompt_ids(tokenizer).to(device)
    with torch.no_grad():
        reference = hf_model(ids).logits
    model = TransformerBridge.boot_transformers(
        label, hf_model=hf_model, tokenizer=tokenizer, device=str(device), dtype=dtype
    )
    with torch.no_grad():
        check_logits(model(ids), reference, dtype, source, type(hf_model).__name__)
    return model.eval()
