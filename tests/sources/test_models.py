"""Offline loading of local Hugging Face folders and of folders in the bundled format; names refused clearly."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig

from iclgd_lens.sources import load_model
from tests.helpers import make_tokenizer, tiny_model

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
    import transformers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    # both loaders a hub name goes through (transformers first, for the logit check), without a network attempt
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", offline)
    monkeypatch.setattr(transformer_lens.HookedTransformer, "from_pretrained_no_processing", offline)
    with pytest.raises(ValueError, match="'gpt2' could not be loaded from the Hugging Face hub.*local Hugging Face"):
        load_model("gpt2", device="cpu")


def planted_in_hub_cache(hf_model, name: str, cache: Path, monkeypatch) -> None:
    """`hf_model` and the test tokenizer as the hub's cached snapshot of `name`, and the hub offline: what a user
    who downloaded `name` once sees, without the network."""
    import huggingface_hub.constants

    repo = cache / f"models--{name.replace('/', '--')}"
    revision = "0" * 40
    hf_model.save_pretrained(repo / "snapshots" / revision)
    make_tokenizer().save_pretrained(repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_a_hub_name_is_checked_against_transformers_too(tmp_path, monkeypatch):
    """A TransformerLens name loads from the hub cache with transformers' logits; a converter that loses a weight on
    that path is refused as it is for a folder."""
    from transformer_lens import loading_from_pretrained as tl_loading

    torch.manual_seed(0)
    config = CONFIGS["gpt2"]()
    config.n_ctx = config.n_positions  # as the hub's GPT-2 config has it
    hf_model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in hf_model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    planted_in_hub_cache(hf_model, "gpt2", tmp_path, monkeypatch)

    model = load_model("gpt2", device="cpu")
    tokens = torch.tensor([[0, 5, 9, 12, 3, 17, 22, 8]])
    with torch.no_grad():
        assert (model(tokens) - hf_model(tokens).logits).abs().max() <= 1e-4

    converted = tl_loading.get_pretrained_state_dict

    def losing_the_attention_bias(*args, **kwargs):
        state_dict = converted(*args, **kwargs)
        state_dict["blocks.0.attn.b_O"] = torch.zeros_like(state_dict["blocks.0.attn.b_O"])
        return state_dict

    monkeypatch.setattr(tl_loading, "get_pretrained_state_dict", losing_the_attention_bias)
    with pytest.raises(ValueError, match="^gpt2: TransformerLens' conversion of this GPT2LMHeadModel gives logits"):
        load_model("gpt2", device="cpu")


def test_a_folder_in_the_bundled_format_loads_by_path(tmp_path):
    from iclgd_lens.sources.bundled import save_bundled

    model = tiny_model()
    model.cfg.model_name = "toy-bundled"
    save_bundled(model, model.tokenizer, tmp_path / "toy", card="# toy")
    loaded = load_model(tmp_path / "toy", device="cpu")
    tokens = torch.tensor([[0, 5, 9, 12, 3]])
    torch.testing.assert_close(loaded(tokens), model(tokens))


def test_a_conversion_that_drops_weights_is_refused(tmp_path, monkeypatch):
    """TransformerLens 3.9's Llama converter drops attention biases: the load check against transformers' logits
    refuses the folder instead of returning a silently different model."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    config = CONFIGS["llama"]()
    config.attention_bias = True
    hf_model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            if name.endswith("proj.bias"):
                p.normal_(0, 1.0)  # biases that change the logits
    hf_model.save_pretrained(tmp_path)
    make_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match="conversion of this LlamaForCausalLM gives logits .* refusing a silently wrong"
    ):
        load_model(str(tmp_path), device="cpu")


def test_an_architecture_transformer_lens_cannot_build_from_a_folder_is_one_line(tmp_path, monkeypatch):
    from transformers import Gemma3TextConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = Gemma3TextConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        intermediate_size=64,
        vocab_size=VOCAB,
        sliding_window=4,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    make_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match="cannot build Gemma3ForCausalLM from a folder's config .* --model gemma3-270m"
    ):
        load_model(str(tmp_path), device="cpu")
