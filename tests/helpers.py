"""Tiny offline fixtures: a word-level tokenizer, a toy sentiment task and small random models; imported by the tests
as `from tests.helpers import ...`."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from iclgd_lens.backend import BRIDGE
from iclgd_lens.sources.bundled import model_config
from iclgd_lens.sources.task import Task
from iclgd_lens.sources.tokenizers import build_tokenizer

if not BRIDGE:  # the tiny TransformerLens 3 models (tests/bridge builds Hugging Face ones)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

ROOT = Path(__file__).resolve().parents[1]  # the repository
SCRIPTS = ROOT / "scripts"

POSITIVE = ["good", "great", "fine", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "dull", "poor", "grim"]
FILLER = ["a", "the", "film", "movie", "plot", "was", "very", "truly", "and", "acting"]
TEMPLATE_WORDS = ["Sentence", ":", "Label", "Negative", "Positive", "Neutral", "Mixed", ".", ","]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """The bundled model's word-level tokenizer over the toy vocabulary (<|endoftext|> = 0, <unk> = 1)."""
    return build_tokenizer([*TEMPLATE_WORDS, *POSITIVE, *NEGATIVE, *FILLER])


def toy_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randrange(2)
        words = rng.sample(FILLER, rng.randrange(1, 5)) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"sentence": " ".join(words), "label": label})
    return rows


def toy_task(n_train: int = 40, n_eval: int = 12, labels=("Negative", "Positive")) -> Task:
    return Task("toy", "Sentence: {sentence} Label:", labels, toy_rows(n_train, 0), toy_rows(n_eval, 1))


def tiny_model(
    n_ctx: int = 256, seed: int = 0, normalization_type: str = "LN", positional: str = "standard", **overrides
) -> HookedTransformer:
    tokenizer = make_tokenizer()
    settings = dict(
        n_layers=2,
        d_model=32,
        n_heads=4,
        d_head=8,
        d_mlp=64,
        n_ctx=n_ctx,
        d_vocab=len(tokenizer),
        act_fn="gelu_new",
        normalization_type=normalization_type,
        positional_embedding_type=positional,
        rotary_dim=8 if positional == "rotary" else None,
        seed=seed,
        device="cpu",
    )
    cfg = HookedTransformerConfig(**(settings | overrides))
    model = HookedTransformer(cfg, tokenizer)
    with torch.no_grad():  # non-zero biases and norm parameters, so that every term of a delta is exercised
        generator = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if not name.rsplit(".", 1)[-1].startswith("W_"):
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return model.eval()


def assert_float32_close(actual: torch.Tensor, expected: torch.Tensor, trained: bool = False) -> None:
    """Equal to float32 rounding: within 1e-5, or for a trained model (`trained`, whose logits and activations are
    large) within 1e-5 of the expected tensor's largest magnitude (at least 1e-5)."""
    scale = max(1.0, float(expected.detach().abs().max())) if trained else 1.0
    torch.testing.assert_close(actual, expected, atol=1e-5 * scale, rtol=0)


def bundled_neox():
    """The bundled, trained tiny-icl-neox as TransformerLens 3 loads it (GPT-NeoX's converter): the model the
    equivalence tests run on both backends (tests/bridge for TransformerLens 4)."""
    from iclgd_lens import load_model

    return load_model("tiny-icl-neox", device="cpu")


def bias_free(model):
    """The model with its attention biases zeroed, as TransformerLens fills them for a bias-free checkpoint."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".attn." in name and name.rsplit(".", 1)[-1].lstrip("_").startswith("b_"):
                p.zero_()
    return model


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level tokenizer without merges (one token per byte, a space is a token of its own);
    <|endoftext|> (id 256) is BOS and EOS, as in GPT-2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def bundled_random_model(pos: str = "standard") -> tuple[HookedTransformer, PreTrainedTokenizerFast]:
    """A random 2-layer model in the bundled format (tiny-icl's tokenizer and config), with its tokenizer."""
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    cfg = model_config(len(tokenizer), n_layers=2, d_model=32, n_heads=2, n_ctx=256, positional_embedding_type=pos)
    cfg.device = "cpu"
    return HookedTransformer(cfg, tokenizer).eval(), tokenizer


# Gemma 3's features on a tiny TransformerLens model: RMS norms before and after attention and MLP, qk-norm, one
# key-value head, a gated MLP, and sliding-window (local) attention in the first layer with a window of 4 tokens, so
# that every prompt of the tests is longer than the window.
GEMMA3_LIKE = dict(
    normalization_type="RMS",
    positional="rotary",
    gated_mlp=True,
    act_fn="gelu_pytorch_tanh",
    n_key_value_heads=1,
    use_qk_norm=True,
    use_normalization_before_and_after=True,
    window_size=4,
    attn_types=["local", "global"],
    rotary_base=1000000,
    rotary_base_local=10000,
)


def check_estimate_is_the_derivative(model, episode, rows=(0, 1, 2, 3), step: float = 1e-2) -> None:
    """Attribution patching's first-order terms (`ZSBatch.estimate`, gradients of a zero added to z) equal central
    differences of the exact batched run along (source − z), per head and class contrast, in every layer."""
    from iclgd_lens.core.zs_batch import ZSBatch

    batch = ZSBatch(model, episode, list(rows), gradients=True)
    generator = torch.Generator().manual_seed(0)
    contrast = lambda v: v[..., 1:] - v[..., :1]  # noqa: E731  (log-probs and logits differ by a per-row constant)
    for layer in range(model.cfg.n_layers):
        z = batch.z[layer]
        source = z + torch.randn(z.shape, generator=generator, dtype=z.dtype)
        terms = batch.estimate(layer, source)  # [head, batch, class]
        up, down = (batch.run_heads(layer, range(model.cfg.n_heads), z + s * (source - z)) for s in (step, -step))
        slope = ((up - down) / (2 * step)).double()
        scale = float(contrast(terms).abs().max())
        torch.testing.assert_close(contrast(slope), contrast(terms).double(), rtol=0, atol=1e-2 * scale)
        assert scale > 1e-3
