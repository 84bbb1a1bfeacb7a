"""scripts/train_tiny_icl.py, which trains the bundled model: end to end on a tiny configuration, its curricula, and
its loss against an independent computation from the cache."""

import subprocess
import sys

import pytest
import torch

from iclgd_lens.sources.bundled import load_bundled
from iclgd_lens.sources.synthetic_tasks import synthetic_task
from iclgd_lens.sources.tokenizers import build_tokenizer
from tests.helpers import ROOT, SCRIPTS, bundled_random_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def training(script):
    """scripts/tiny_icl_training.py: the mixture, curricula and loss train_tiny_icl.py trains with."""
    return script("tiny_icl_training")


@pytest.mark.slow  # a subprocess or a whole CLI run: make test, not the edit loop
def test_training_script_end_to_end(tmp_path):
    out = tmp_path / "tiny"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "train_tiny_icl.py"),
            "--tiny",
            "--steps",
            "3",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model = load_bundled(out, device="cpu")
    assert model.cfg.n_layers == 1
    card = (out / "MODEL_CARD.md").read_text()
    assert "| synth-sst2 |" in card and "--tiny" in card
    tokens = torch.tensor([[0] + model.tokenizer.encode("Sentence: a dull film . Label:")])
    assert model(tokens).shape == (1, tokens.shape[1], model.cfg.d_vocab_out)


def test_cue_curriculum_keeps_only_class_specific_words(training):
    Mixture, class_cues = training.Mixture, training.class_cues

    sst2, cb = synthetic_task("synth-sst2", n_train=400), synthetic_task("synth-cb", n_train=400)
    field, cues = class_cues(sst2)
    assert field == "sentence" and {"awful", "brilliant"} <= cues and not {"the", "film", "."} & cues
    assert class_cues(cb) is None  # two fields: premise and hypothesis are never cut
    mixture = Mixture(build_tokenizer(), [sst2], 1024, 1.0, 0.0, 6, 6, 6, 0.0, seed=0, p_cues=1.0)
    tokens, positions, _, _ = mixture.sequence(0, 6)
    text = mixture.tok.decode(tokens)
    sentences = [s.split("Label")[0].strip() for s in text.split("Sentence :")[1:]]
    assert len(sentences) == 6 and all(1 <= len(s.split()) <= 2 for s in sentences), sentences


def test_repeat_curriculum_reuses_rows_of_the_sequence(training):
    Mixture = training.Mixture

    task = synthetic_task("synth-mr", n_train=400)
    mixture = Mixture(build_tokenizer(), [task], 1024, 1.0, 0.0, 8, 8, 8, 0.0, seed=0, p_repeat=1.0)
    tokens, positions, targets, _ = mixture.sequence(0, 8)
    demos = mixture.tok.decode(tokens).split("<|endoftext|>")[1:-1]
    assert len(demos) == 8 and len(set(demos)) == 1  # every demonstration repeats the first
    mixture.p_repeat = 0.0
    demos = mixture.tok.decode(mixture.sequence(0, 8)[0]).split("<|endoftext|>")[1:-1]
    assert len(set(demos)) == 8


def test_batch_classes_name_each_demonstrations_class(training):
    Mixture = training.Mixture

    tasks = [synthetic_task("synth-sst2", n_train=200), synthetic_task("synth-agnews", n_train=200)]
    mixture = Mixture(build_tokenizer(), tasks, 1024, 0.0, 1.0, 4, 4, 4, 0.0, seed=1)  # fixed mappings only
    for _ in range(4):
        batch = mixture.batch(3, "cpu")
        t = 0 if batch.classes.max() < 2 else 1
        fixed = torch.tensor(mixture.fixed[t])
        local = batch.classes - mixture.class_offset[t]
        assert torch.equal(fixed[local], batch.targets)  # the fixed word of each class is the label that follows
        assert torch.equal(batch.tokens[batch.rows, batch.cols + 1], batch.targets)
    assert mixture.n_classes == 6 and mixture.class_offset == [0, 2]


def test_training_loss_adds_the_lm_and_class_probe_terms(training):
    Mixture, training_loss = training.Mixture, training.training_loss

    model, tokenizer = bundled_random_model("alibi")
    mixture = Mixture(tokenizer, [synthetic_task("synth-mr", n_train=200)], 256, 0.5, 0.3, 2, 4, 4, 0.0, seed=0)
    batch = mixture.batch(2, "cpu")
    torch.manual_seed(0)
    probe = torch.nn.Linear(model.cfg.d_model, mixture.n_classes)
    with torch.no_grad():
        total = training_loss(model, batch, 0.0, probe, probe_layer=1)
        label_only = training_loss(model, batch, 0.0)
        # independent: full forward logits and the cached residual stream
        logits, cache = model.run_with_cache(batch.tokens)
        expected_label = torch.nn.functional.cross_entropy(logits[batch.rows, batch.cols], batch.targets)
        resid = cache["blocks.1.hook_resid_pre"][batch.rows, batch.cols + 1]
        expected_probe = torch.nn.functional.cross_entropy(probe(resid), batch.classes)
        with_lm = training_loss(model, batch, 0.5)
        lm_terms = [
            torch.nn.functional.cross_entropy(logits[b, : n - 1], batch.tokens[b, 1:n], reduction="sum")
            for b, n in enumerate(batch.lengths.tolist())
        ]
        expected_lm = sum(lm_terms) / (batch.lengths - 1).sum()
    torch.testing.assert_close(label_only, expected_label, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(with_lm, expected_label + 0.5 * expected_lm, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(total, expected_label + expected_probe, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # two subprocesses
def test_a_rotary_model_without_unembedding_bias_trains_and_exports_to_gpt_neox(tmp_path):
    """--no-unembed-bias keeps b_U at zero through training; scripts/export_neox.py writes the GPT-NeoX folder,
    which transformers runs to the trained model's logits and load_model loads; an existing folder is refused."""
    from transformers import AutoModelForCausalLM

    from iclgd_lens import load_model

    out, exported = tmp_path / "tiny", tmp_path / "tiny-neox"
    train = [sys.executable, str(SCRIPTS / "train_tiny_icl.py"), "--tiny", "--steps", "3", "--device", "cpu"]
    train += ["--pos", "rotary", "--no-unembed-bias", "--out", str(out)]
    assert subprocess.run(train, capture_output=True, text=True, timeout=120, cwd=ROOT).returncode == 0
    model = load_bundled(out, device="cpu")
    assert bool((model.unembed.b_U == 0).all())
    export = [sys.executable, str(SCRIPTS / "export_neox.py"), str(out), str(exported)]
    done = subprocess.run(export, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    tokens = torch.tensor([[0, *range(5, 16)]])
    with torch.no_grad():
        ours = model(tokens)
        torch.testing.assert_close(
            AutoModelForCausalLM.from_pretrained(exported, local_files_only=True)(tokens).logits,
            ours,
            atol=1e-5,
            rtol=0,
        )
        torch.testing.assert_close(load_model(exported, device="cpu")(tokens), ours, atol=1e-5, rtol=0)
    assert "GPT-NeoX" in (exported / "MODEL_CARD.md").read_text()
    again = subprocess.run(export, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert again.returncode != 0 and "exists" in again.stderr


def test_init_copies_an_alibi_models_parameters_into_a_rotary_one(script):
    """--init from tiny-icl (ALiBi) into a rotary model of its shapes: every parameter equal, the unused W_pos left
    behind, the positions the new model's own (other logits); a model of other shapes is refused by name."""
    from transformer_lens import HookedTransformer

    from iclgd_lens.sources import TINY_ICL_DIR, model_config

    train = script("train_tiny_icl")
    alibi = load_bundled(TINY_ICL_DIR, device="cpu")
    cfg = alibi.cfg
    rotary = HookedTransformer(
        model_config(cfg.d_vocab, cfg.n_layers, cfg.d_model, cfg.n_heads, positional_embedding_type="rotary")
    )
    train.copy_parameters(alibi, rotary)
    source = dict(alibi.named_parameters())
    assert "pos_embed.W_pos" in source and "pos_embed.W_pos" not in dict(rotary.named_parameters())
    for name, parameter in rotary.named_parameters():
        assert torch.equal(parameter, source[name]), name
    tokens = torch.tensor([[0, *range(5, 16)]])
    with torch.no_grad():
        assert not torch.allclose(rotary(tokens), alibi(tokens), atol=1e-3)  # same parameters, other positions
    wider = HookedTransformer(model_config(cfg.d_vocab, cfg.n_layers, 2 * cfg.d_model, cfg.n_heads))
    with pytest.raises(ValueError, match="other parameters or shapes"):
        train.copy_parameters(alibi, wider)
