"""The bundled tiny ICL model: a word-level tokenizer for the synthetic tasks, and offline save / load.

A bundled model folder holds `config.json` (HookedTransformerConfig fields), `model.safetensors` (the
TransformerLens state dict, no weight processing), `tokenizer.json` and `MODEL_CARD.md`. Loading never touches
the network. Training: analyses/train_tiny_icl.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

BUNDLED_DIR = Path(__file__).parent / "bundled"
TINY_ICL_DIR = BUNDLED_DIR / "tiny-icl"
EOS_TOKEN = "<|endoftext|>"  # BOS = EOS = pad, as in GPT-2
UNK_TOKEN = "<unk>"

# The config fields a bundled model is rebuilt from (everything else takes HookedTransformerConfig's defaults).
CONFIG_FIELDS = (
    "n_layers", "d_model", "n_ctx", "d_head", "n_heads", "d_mlp", "d_vocab", "d_vocab_out", "act_fn",
    "normalization_type", "positional_embedding_type", "rotary_dim", "rotary_base", "attn_only", "init_mode",
    "initializer_range", "eps", "original_architecture", "model_name", "default_prepend_bos", "seed",
)


def build_tokenizer(words=None):
    """A word-level `PreTrainedTokenizerFast` over the synthetic vocabulary.

    Splits on whitespace and isolates every punctuation character, so "Label:" is ["Label", ":"], and
    "A B" tokenizes as "A" followed by " B". Adds no special tokens by itself; BOS = EOS = pad = <|endoftext|>.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    if words is None:
        from iclgd_lens.synthetic import synthetic_vocabulary

        words = synthetic_vocabulary()
    vocab = {EOS_TOKEN: 0, UNK_TOKEN: 1}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies " ." -> "."
    tok.add_special_tokens([EOS_TOKEN, UNK_TOKEN])
    return _wrap(tok)


def _wrap(tok, name_or_path: str = "tiny-icl"):
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="right",
        model_max_length=int(1e9),
        clean_up_tokenization_spaces=False,
    )
    # HookedTransformer.set_tokenizer re-loads a tokenizer "with BOS" by name from the hub unless its init
    # kwargs say add_bos_token: say so, to keep this one (offline). The backend has no post-processor, so
    # encode() still adds no BOS (the toolkit adds BOS ids itself; cfg.tokenizer_prepends_bos stays False).
    wrapped.init_kwargs["name_or_path"] = name_or_path
    wrapped.init_kwargs["add_bos_token"] = True
    return wrapped


def load_tokenizer(path: str | os.PathLike):
    """The word-level tokenizer from a tokenizer.json file (offline)."""
    from tokenizers import Tokenizer

    return _wrap(Tokenizer.from_file(str(path)), name_or_path=str(path))


def model_config(
    d_vocab: int, n_layers: int = 4, d_model: int = 128, n_heads: int = 4, d_mlp: int | None = None,
    n_ctx: int = 1024, positional_embedding_type: str = "standard", seed: int = 0,
) -> HookedTransformerConfig:
    """A GPT-2-style config (LayerNorm, GELU, attention + MLP, GPT-2 init) for the tiny ICL model."""
    if d_model % n_heads:
        raise ValueError(f"d_model {d_model} must be a multiple of n_heads {n_heads}")
    return HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_ctx=n_ctx, d_head=d_model // n_heads, n_heads=n_heads,
        d_mlp=d_mlp or 4 * d_model, d_vocab=d_vocab, act_fn="gelu", normalization_type="LN",
        positional_embedding_type=positional_embedding_type,
        rotary_dim=d_model // n_heads if positional_embedding_type == "rotary" else None,
        init_mode="gpt2", original_architecture="tiny-icl", model_name="tiny-icl", default_prepend_bos=False,
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

    folder = Path(folder)
    for needed in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (folder / needed).is_file():
            raise FileNotFoundError(
                f"bundled model folder {str(folder)!r} has no {needed}; train one with analyses/train_tiny_icl.py"
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
        raise ValueError(f"{str(folder)!r}: weights do not match the config (missing {missing}, unexpected {unexpected})")
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
