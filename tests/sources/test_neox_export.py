"""`sources/neox_export.py`: a rotary TransformerLens model written as a GPT-NeoX folder computes the same logits
in transformers' own GPT-NeoX (the independent reference) and loads back through `load_model`; what GPT-NeoX would
compute differently is refused."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from iclgd_lens import load_model
from iclgd_lens.sources.neox_export import check_exportable, export_neox
from tests.helpers import tiny_model

TOKENS = torch.tensor([[1, 5, 9, 12, 3, 7, 20, 5, 30, 17, 2, 8]])


def neox_shaped(**overrides):
    model = tiny_model(positional="rotary", act_fn="gelu", **overrides)
    with torch.no_grad():
        model.unembed.b_U.zero_()
    return model


def test_an_exported_model_computes_the_same_logits_in_transformers_and_loads_back(tmp_path):
    model = neox_shaped()
    folder = export_neox(model, model.tokenizer, tmp_path / "neox", "# a card\n")
    assert (folder / "MODEL_CARD.md").read_text() == "# a card\n"
    hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    assert type(hf).__name__ == "GPTNeoXForCausalLM"
    with torch.no_grad():
        ours, theirs = model(TOKENS), hf(TOKENS).logits
        again = load_model(folder, device="cpu")(TOKENS)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    torch.testing.assert_close(again, ours, atol=1e-5, rtol=0)
    assert (ours[0, -1] - ours[0, -2]).abs().max() > 1e-2  # positions matter, so the check above can fail


@pytest.mark.parametrize(
    "change, reason",
    [
        (dict(positional="alibi"), "positions are not rotary"),
        (dict(act_fn="gelu_new"), "the activation is not exact GELU"),
        (dict(parallel_attn_mlp=True), "attention and MLP run in parallel"),
        (dict(normalization_type="RMS"), "the norm is not LayerNorm"),
    ],
)
def test_what_gpt_neox_computes_differently_is_refused(change, reason):
    settings = dict(positional="rotary", act_fn="gelu") | change
    model = tiny_model(**settings)
    with torch.no_grad():
        model.unembed.b_U.zero_()
    with pytest.raises(ValueError, match=reason):
        check_exportable(model)


def test_an_unembedding_bias_is_refused():
    model = neox_shaped()
    with torch.no_grad():
        model.unembed.b_U[3] = 0.5
    with pytest.raises(ValueError, match="the unembedding has a bias"):
        check_exportable(model)
