"""The bundled tiny ICL model: offline save / load, and that it truly learns in context (fast, CPU)."""

import dataclasses

import pytest
import torch

from iclgd_lens.core.episodes import build_episode
from iclgd_lens.sources.bundled import TINY_ICL_DIR, load_bundled, save_bundled
from iclgd_lens.sources.synthetic_tasks import synthetic_task
from tests.helpers import bundled_random_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("pos", ["standard", "rotary"])
def test_save_load_round_trip(tmp_path, pos):
    model, tokenizer = bundled_random_model(pos)
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
