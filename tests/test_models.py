"""Offline loading of local Hugging Face folders, and the untrained baselines."""

import json
import math

import pytest
import torch
from helpers import make_tokenizer, tiny_model
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig

from iclgd_lens.sources import load_model
from iclgd_lens.core.baselines import untrained_copy

VOCAB = len(make_tokenizer())
CONFIGS = {
    # As transformers >= 5 saves it: n_positions but no n_ctx (hub configs of GPT-2 have both).
    "gpt2": lambda: GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=VOCAB),
    "gpt-neox": lambda: GPTNeoXConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        vocab_size=VOCAB,
        rotary_pct=0.5,
    ),
    "llama": lambda: LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        vocab_size=VOCAB,
    ),
}


@pytest.mark.parametrize("arch", CONFIGS)
def test_local_hf_folder_matches_hf_logits(arch, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    hf_model = AutoModelForCausalLM.from_config(CONFIGS[arch]()).eval()
    with torch.no_grad():  # non-trivial biases and norms
        for name, p in hf_model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path / f"my-{arch}-llama-named"  # a name TransformerLens would otherwise misread
    hf_model.save_pretrained(folder)  # written by the installed transformers
    make_tokenizer().save_pretrained(folder)
    if arch == "gpt2":
        assert "n_ctx" not in json.loads((folder / "config.json").read_text())

    model = load_model(folder, device="cpu")
    tokens = torch.tensor([[0, 5, 9, 12, 3, 17, 22, 8]])
    with torch.no_grad():
        expected = hf_model(tokens).logits
    assert model.cfg.model_name == folder.name
    assert (model(tokens) - expected).abs().max() <= 1e-4
    # Unprocessed weights: the loaded W_K is the checkpoint's key projection.
    assert not model.cfg.normalization_type.endswith("Pre")


def test_unknown_model_name_is_refused_before_any_download():
    with pytest.raises(ValueError, match="unknown model 'gpt-7'.*bundled model"):
        load_model("gpt-7")


def test_missing_config_in_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)


def test_folder_without_weights_or_tokenizer_is_refused_clearly(tmp_path):
    AutoModelForCausalLM.from_config(CONFIGS["gpt2"]()).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="has no usable tokenizer.*tokenizer.save_pretrained"):
        load_model(tmp_path / "m", device="cpu")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has config.json but no weights"):
        load_model(tmp_path / "m", device="cpu")


def test_offline_hub_name_gives_a_clear_error(monkeypatch, tmp_path):
    import transformer_lens

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformer_lens.HookedTransformer, "from_pretrained_no_processing", offline)
    with pytest.raises(ValueError, match="'gpt2' could not be loaded from the Hugging Face hub.*local Hugging Face"):
        load_model("gpt2", device="cpu")


def test_no_training_baseline_reinitialises_every_weight():
    model = tiny_model()
    fresh = untrained_copy(model, "no_training", seed=1)
    again = untrained_copy(model, "no_training", seed=1)
    other = untrained_copy(model, "no_training", seed=2)
    trained = dict(model.named_parameters())
    for name, p in fresh.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        torch.testing.assert_close(p, dict(again.named_parameters())[name])  # seeded
        if leaf.startswith("W_"):
            assert not torch.equal(p, trained[name]) and not torch.equal(p, dict(other.named_parameters())[name])
            assert p.std() > 0
        else:
            assert torch.equal(p, torch.ones_like(p) if leaf == "w" else torch.zeros_like(p)), name
    # the trained model is untouched and the global RNG state is restored
    torch.testing.assert_close(dict(tiny_model().named_parameters())["blocks.0.attn.W_K"], trained["blocks.0.attn.W_K"])


def test_trained_embeddings_baseline_keeps_embeddings_norms_and_unembedding():
    model = tiny_model()
    fresh = untrained_copy(model, "trained_embeddings", seed=1)
    trained = dict(model.named_parameters())
    kept = {"embed.W_E", "pos_embed.W_pos", "unembed.W_U", "unembed.b_U", "ln_final.w", "ln_final.b"}
    kept |= {f"blocks.{l}.{ln}.{p}" for l in range(2) for ln in ("ln1", "ln2") for p in "wb"}
    for name, p in fresh.named_parameters():
        assert torch.equal(p, trained[name]) == (name in kept), name
    with pytest.raises(ValueError, match="unknown baseline"):
        untrained_copy(model, "random", seed=0)


@pytest.mark.parametrize("init", ["transformer_lens", "fairseq"])
def test_trained_norms_baseline_keeps_norms_only(init):
    model = tiny_model()
    fresh = untrained_copy(model, "trained_norms", seed=1, init=init)
    trained = dict(model.named_parameters())
    for name, p in fresh.named_parameters():
        is_norm = name.rsplit(".", 1)[-1] in ("w", "b")
        assert torch.equal(p, trained[name]) == is_norm, name


def test_fairseq_init_follows_the_reference_scheme():
    model = tiny_model(d_model=64, n_heads=4, d_head=16, d_mlp=256)
    fresh = {n: p.detach() for n, p in untrained_copy(model, "no_training", seed=0, init="fairseq").named_parameters()}
    d, d_mlp = 64, 256

    def uniform_bound(name):  # a U(-b, b) sample: max |x| just below b, std b / sqrt(3)
        x = fresh[name].detach()
        return float(x.abs().max()), float(x.std() * math.sqrt(3))

    xavier = lambda fan_in, fan_out, gain: gain * math.sqrt(6 / (fan_in + fan_out))
    expectations = {
        "blocks.0.attn.W_Q": xavier(d, d, 2**-0.5),
        "blocks.1.attn.W_V": xavier(d, d, 2**-0.5),
        "blocks.0.attn.W_O": xavier(d, d, 1.0),
        "blocks.0.mlp.W_in": d**-0.5,
        "blocks.0.mlp.W_out": d_mlp**-0.5,
        "blocks.0.attn.b_K": d**-0.5,
        "blocks.0.mlp.b_out": d_mlp**-0.5,
    }
    for name, bound in expectations.items():
        largest, spread = uniform_bound(name)
        assert largest <= bound and largest > 0.9 * bound and spread == pytest.approx(bound, rel=0.1), name
    assert torch.equal(fresh["blocks.0.attn.b_O"], torch.zeros_like(fresh["blocks.0.attn.b_O"]))
    assert float(fresh["embed.W_E"].std()) == pytest.approx(d**-0.5, rel=0.1)
    assert torch.equal(fresh["blocks.0.ln1.w"], torch.ones(d))


def test_a_folder_in_the_bundled_format_loads_by_path(tmp_path):
    from iclgd_lens.sources.bundled import save_bundled

    model = tiny_model()
    model.cfg.model_name = "toy-bundled"
    save_bundled(model, model.tokenizer, tmp_path / "toy", card="# toy")
    loaded = load_model(tmp_path / "toy", device="cpu")
    tokens = torch.tensor([[0, 5, 9, 12, 3]])
    torch.testing.assert_close(loaded(tokens), model(tokens))
