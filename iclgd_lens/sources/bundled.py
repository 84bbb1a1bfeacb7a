"""The bundled tiny-icl model, and any folder in its format: offline save / load.

A bundled model folder holds `config.json` (HookedTransformerConfig fields), `model.safetensors` (the
TransformerLens state dict, no weight processing), `tokenizer.json` and `MODEL_CARD.md`. Loading never touches
the network. Training: scripts/train_tiny_icl.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from iclgd_lens.backend import BRIDGE, require_hooked_transformer
from iclgd_lens.sources.tokenizers import load_tokenizer

if not BRIDGE:  # a bundled model is a TransformerLens 3 checkpoint (ALiBi: no Hugging Face model to wrap)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

BUNDLED_DIR = Path(__file__).parent.parent / "bundled"  # package data: iclgd_lens/bundled/<name>/
TINY_ICL_DIR = BUNDLED_DIR / "tiny-icl"
BUNDLED_MODELS = ("tiny-icl",)


def _hugging_face_folders() -> tuple[str, ...]:
    """The bundled models shipped as Hugging Face GPT-NeoX folders (`neox_export`), which both backends load."""
    names = []
    for folder in sorted(BUNDLED_DIR.glob("*/config.json")):
        if json.loads(folder.read_text()).get("model_type") == "gpt_neox":
            names.append(folder.parent.name)
    return tuple(names)


BUNDLED_HF_MODELS = _hugging_face_folders()

# The config fields a bundled model is rebuilt from (everything else takes HookedTransformerConfig's defaults).
CONFIG_FIELDS = (
    "n_layers",
    "d_model",
    "n_ctx",
    "d_head",
    "n_heads",
    "d_mlp",
    "d_vocab",
    "d_vocab_out",
    "act_fn",
    "normalization_type",
    "positional_embedding_type",
    "rotary_dim",
    "rotary_base",
    "attn_only",
    "init_mode",
    "initializer_range",
    "eps",
    "original_architecture",
    "model_name",
    "default_prepend_bos",
    "seed",
)


def model_config(
    d_vocab: int,
    n_layers: int = 4,
    d_model: int = 128,
    n_heads: int = 4,
    d_mlp: int | None = None,
    n_ctx: int = 1024,
    positional_embedding_type: str = "standard",
    seed: int = 0,
) -> HookedTransformerConfig:
    """A GPT-2-style config (LayerNorm, GELU, attention + MLP, GPT-2 init) for the tiny ICL model."""
    if d_model % n_heads:
        raise ValueError(f"d_model {d_model} must be a multiple of n_heads {n_heads}")
    return HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_ctx=n_ctx,
        d_head=d_model // n_heads,
        n_heads=n_heads,
        d_mlp=d_mlp or 4 * d_model,
        d_vocab=d_vocab,
        act_fn="gelu",
        normalization_type="LN",
        positional_embedding_type=positional_embedding_type,
        rotary_dim=d_model // n_heads if positional_embedding_type == "rotary" else None,
        init_mode="gpt2",
        original_architecture="tiny-icl",
        model_name="tiny-icl",
        default_prepend_bos=False,
        seed=seed,
    )


def save_bundled(model: HookedTransformer, tokenizer, folder: str | os.PathLike, card: str) -> Path:
    """Write config.json, model.safetensors (fp32, or fp16 when `model` is fp16), tokenizer.json, MODEL_CARD.md."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {name: _json_safe(getattr(model.cfg, name)) for name in CONFIG_FIELDS}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items() if _is_weight(model, k)}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "transformer_lens"})
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "MODEL_CARD.md").write_text(card if card.endswith("\n") else card + "\n")
    return folder


def load_bundled(
    folder: str | os.PathLike, device: str | None = None, dtype: torch.dtype = torch.float32
) -> HookedTransformer:
    """Rebuild `HookedTransformer(cfg, tokenizer)` from a bundled folder, offline, with no weight processing."""
    from safetensors.torch import load_file

    require_hooked_transformer(
        f"the bundled-format model {str(folder)!r} (a TransformerLens 3 checkpoint; tiny-icl's "
        "ALiBi positions have no place in TransformerLens 4's native models, which take "
        "standard and rotary positions only)"
    )

    folder = Path(folder)
    for needed in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (folder / needed).is_file():
            raise FileNotFoundError(
                f"bundled model folder {str(folder)!r} has no {needed}; train one with scripts/train_tiny_icl.py"
            )
    config = json.loads((folder / "config.json").read_text())
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = HookedTransformerConfig(**config, device=device, dtype=dtype)
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    missing = [k for k in missing if _is_weight(model, k)]
    if missing or unexpected:
        raise ValueError(
            f"{str(folder)!r}: weights do not match the config (missing {missing}, unexpected {unexpected})"
        )
    return model.to(device, print_details=False).eval()


def _is_weight(model: HookedTransformer, key: str) -> bool:
    # Buffers (causal masks, IGNORE, rotary tables) are rebuilt from the config; only parameters are stored.
    return key in dict(model.named_parameters())


def _json_safe(value):
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def is_bundled_folder(folder: Path) -> bool:
    """A TransformerLens config (it has d_model; a Hugging Face config has model_type) beside its weights."""
    config = folder / "config.json"
    if not config.is_file() or not (folder / "model.safetensors").is_file():
        return False
    fields = json.loads(config.read_text())
    return "d_model" in fields and "model_type" not in fields
