"""The bundled tiny ICL model: offline save / load, and that it truly learns in context (fast, CPU)."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformer_lens import HookedTransformer

from iclgd_lens.sources.synthetic_tasks import synthetic_task
from iclgd_lens.sources.bundled import TINY_ICL_DIR, load_bundled, model_config, save_bundled
from iclgd_lens.sources.tokenizers import build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "analyses"))

from iclgd_lens.core.episodes import build_episode  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_random_model(pos="standard"):
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    cfg = model_config(len(tokenizer), n_layers=2, d_model=32, n_heads=2, n_ctx=256, positional_embedding_type=pos)
    cfg.device = "cpu"
    return HookedTransformer(cfg, tokenizer).eval(), tokenizer


@pytest.mark.parametrize("pos", ["standard", "rotary"])
def test_save_load_round_trip(tmp_path, pos):
    model, tokenizer = _tiny_random_model(pos)
    save_bundled(model, tokenizer, tmp_path, "# card")
    assert {p.name for p in tmp_path.iterdir()} == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "MODEL_CARD.md",
    }
    loaded = load_bundled(tmp_path, device="cpu")
    tokens = torch.tensor([[tokenizer.bos_token_id] + tokenizer.encode("Sentence: a dull film . Label:")])
    torch.testing.assert_close(loaded(tokens), model(tokens), rtol=0, atol=0)
    assert loaded.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert not loaded.cfg.tokenizer_prepends_bos
    half = load_bundled(tmp_path, device="cpu", dtype=torch.float16)
    assert half.W_K.dtype == torch.float16


def test_load_bundled_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_bundled(tmp_path)


def _zs_icl_correct(model, task, k: int, n_eval: int) -> tuple[int, int]:
    """Correct ZS and ICL predictions, from plain full forwards (independent of the cached recording path)."""
    episode = build_episode(task, model.tokenizer, model.cfg.n_ctx, k=k, n_eval=n_eval)
    label_ids = [t[0] for t in episode.label_tokens]
    zs_correct = icl_correct = 0
    with torch.no_grad():
        for query, label in zip(episode.queries, episode.labels):
            zs = model(torch.tensor([[episode.bos, *query]]))[0, -1, label_ids]
            icl = model(torch.tensor([[*episode.icl_prefix, *query]]))[0, -1, label_ids]
            zs_correct += int(zs.argmax() == label)
            icl_correct += int(icl.argmax() == label)
    return zs_correct, icl_correct


def test_shipped_model_learns_subj_in_context():
    """The card's ICL-over-ZS gap on synth-subj, with its label words and with them reversed.

    Reversing the words of a binary task turns every ZS hit into a miss, so the two ZS counts sum to the number of
    queries whatever the model's zero-shot tilt; ICL must follow the demonstrations' mapping to be high in both.
    """
    model = load_bundled(TINY_ICL_DIR, device="cpu")
    task = synthetic_task("synth-subj")
    reversed_task = dataclasses.replace(task, label_words=task.label_words[::-1])
    zs, icl = _zs_icl_correct(model, task, k=16, n_eval=40)
    zs_reversed, icl_reversed = _zs_icl_correct(model, reversed_task, k=16, n_eval=40)
    assert zs + zs_reversed == 40
    assert min(icl, icl_reversed) >= 34, (icl, icl_reversed)  # >= 85 % under both mappings
    assert icl + icl_reversed >= zs + zs_reversed + 16, (zs, icl, zs_reversed, icl_reversed)  # >= 20 points


def test_training_script_end_to_end(tmp_path):
    out = tmp_path / "tiny"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "analyses" / "train_tiny_icl.py"),
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


def test_cue_curriculum_keeps_only_class_specific_words():
    from train_tiny_icl import Mixture, class_cues

    sst2, cb = synthetic_task("synth-sst2", n_train=400), synthetic_task("synth-cb", n_train=400)
    field, cues = class_cues(sst2)
    assert field == "sentence" and {"awful", "brilliant"} <= cues and not {"the", "film", "."} & cues
    assert class_cues(cb) is None  # two fields: premise and hypothesis are never cut
    mixture = Mixture(build_tokenizer(), [sst2], 1024, 1.0, 0.0, 6, 6, 6, 0.0, seed=0, p_cues=1.0)
    tokens, positions, _, _ = mixture.sequence(0, 6)
    text = mixture.tok.decode(tokens)
    sentences = [s.split("Label")[0].strip() for s in text.split("Sentence :")[1:]]
    assert len(sentences) == 6 and all(1 <= len(s.split()) <= 2 for s in sentences), sentences


def test_repeat_curriculum_reuses_rows_of_the_sequence():
    from train_tiny_icl import Mixture

    task = synthetic_task("synth-mr", n_train=400)
    mixture = Mixture(build_tokenizer(), [task], 1024, 1.0, 0.0, 8, 8, 8, 0.0, seed=0, p_repeat=1.0)
    tokens, positions, targets, _ = mixture.sequence(0, 8)
    demos = mixture.tok.decode(tokens).split("<|endoftext|>")[1:-1]
    assert len(demos) == 8 and len(set(demos)) == 1  # every demonstration repeats the first
    mixture.p_repeat = 0.0
    demos = mixture.tok.decode(mixture.sequence(0, 8)[0]).split("<|endoftext|>")[1:-1]
    assert len(set(demos)) == 8


def test_batch_classes_name_each_demonstrations_class():
    from train_tiny_icl import Mixture

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


def test_training_loss_adds_the_lm_and_class_probe_terms():
    from train_tiny_icl import Mixture, training_loss

    model, tokenizer = _tiny_random_model("alibi")
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
        lm_terms = [torch.nn.functional.cross_entropy(logits[b, : n - 1], batch.tokens[b, 1:n], reduction="sum")
                    for b, n in enumerate(batch.lengths.tolist())]
        expected_lm = sum(lm_terms) / (batch.lengths - 1).sum()
    torch.testing.assert_close(label_only, expected_label, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(with_lm, expected_label + 0.5 * expected_lm, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(total, expected_label + expected_probe, rtol=1e-5, atol=1e-5)
