"""Tokenizer helpers: the word-level tokenizer of the bundled tiny-icl and the synthetic tasks, and the special
tokens every prompt is built from."""

from __future__ import annotations

import os

from iclgd_lens.sources.synthetic_tasks import synthetic_vocabulary

EOS_TOKEN = "<|endoftext|>"  # BOS = EOS = pad, as in GPT-2
UNK_TOKEN = "<unk>"


def build_tokenizer(words=None):
    """A word-level `PreTrainedTokenizerFast` over the synthetic vocabulary.

    Splits on whitespace and isolates every punctuation character, so "Label:" is ["Label", ":"], and
    "A B" tokenizes as "A" followed by " B". Adds no special tokens by itself; BOS = EOS = pad = <|endoftext|>.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    if words is None:
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


def special_tokens(tokenizer) -> tuple[int, int | None]:
    """(BOS, EOS): a tokenizer without BOS uses EOS as BOS (GPT-2 does so itself); one with neither is refused."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None and eos is None:
        raise ValueError(
            "the tokenizer has neither a beginning- nor an end-of-sequence token, which start every prompt and "
            "separate demonstrations; set them (tokenizer.add_special_tokens({'bos_token': ..., 'eos_token': ...}), "
            "or bos_token and eos_token in a checkpoint folder's tokenizer_config.json)"
        )
    return (bos if bos is not None else eos), eos
