"""Each reference choice against an expectation built by hand the way the reference code computes it."""

import numpy as np
import pytest

from iclgd_lens import compare
from iclgd_lens.core.episodes import build_episode
from iclgd_lens.core.presets import PRESETS, resolve
from iclgd_lens.sources.task import Task
from tests.helpers import byte_tokenizer, make_tokenizer, tiny_model, toy_task


def test_presets_resolve_and_overrides_win():
    reference = resolve("reference")
    assert reference == PRESETS["reference"] and reference.position == "first_option"
    assert resolve("reference", position="prediction").position == "prediction"
    assert resolve("toolkit", position=None) == PRESETS["toolkit"]
    with pytest.raises(ValueError, match="unknown truncation 'cut'"):
        resolve("toolkit", truncation="cut")
    with pytest.raises(ValueError, match="unknown preset 'paper'"):
        resolve("paper")


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def reference_truncation(tokenizer, task, rows, n_ctx):
    """The reference loop, written as its code reads (GiilDe/ft-vs-icl fewshot_task.py): each demonstration costs
    [BOS] + input + label + EOS minus its BOS; max_valid_len counts BOS + the longest input + label; strict < n_ctx;
    break at the first overflow."""
    labels = [encode(tokenizer, " " + w) for w in task.label_words]
    max_valid_len = max(
        1 + len(encode(tokenizer, task.prompt(r, raw=True))) + len(l) for r in task.eval for l in labels
    )
    context, kept = [0], []
    for row in rows:
        example = task.train[row]
        demo = [0, *encode(tokenizer, task.prompt(example, raw=True)), *labels[example["label"]], 2]
        if len(context) + len(demo[1:]) + max_valid_len < n_ctx:
            context.extend(demo[1:])
            kept.append(row)
        else:
            break
    return kept


def crafted_task():
    """Short sentences except one long one early in the seed-0 shuffle: `fit` skips it and keeps later short
    ones; the reference stops there."""
    short = [{"sentence": "a good film", "label": 1}, {"sentence": "a bad film", "label": 0}] * 6
    order = np.random.default_rng(0).permutation(len(short) + 1)
    rows = list(short)
    rows.insert(int(np.where(order == len(short))[0][0]), {"sentence": " ".join(["film"] * 30), "label": 1})
    return Task("crafted", "Sentence: {sentence} Label:", ("Negative", "Positive"), rows, short[:2])


def test_reference_truncation_stops_at_the_first_overflow():
    task, tokenizer = crafted_task(), make_tokenizer()
    k = len(task.train)
    shuffled = [int(i) for i in np.random.default_rng(0).permutation(k)]
    long_row = next(i for i, r in enumerate(task.train) if len(r["sentence"]) > 50)
    position = shuffled.index(long_row)
    assert 0 < position < k - 1  # a later, shorter demonstration could fit after it
    n_ctx = 60
    reference = build_episode(task, tokenizer, n_ctx, k=k, preset="reference", text="normalised")
    assert list(reference.demo_rows) == reference_truncation(tokenizer, task, shuffled, n_ctx)
    assert list(reference.demo_rows) == shuffled[: len(reference.demo_rows)] and long_row not in reference.demo_rows
    fit_ = build_episode(task, tokenizer, n_ctx, k=k, preset="toolkit")
    assert long_row not in fit_.demo_rows and fit_.effective_k > reference.effective_k
    assert any(shuffled.index(r) > position for r in fit_.demo_rows)


@pytest.mark.parametrize("n_ctx", range(40, 70))
def test_reference_budget_is_the_strict_test_with_bos_counted_twice(n_ctx):
    task, tokenizer = toy_task(n_train=30, n_eval=4), make_tokenizer()
    shuffled = [int(i) for i in np.random.default_rng(0).permutation(30)][:12]
    episode = build_episode(task, tokenizer, n_ctx, k=12, preset="reference", text="normalised")
    assert list(episode.demo_rows) == reference_truncation(tokenizer, task, shuffled, n_ctx)
    assert len(episode.icl_prefix) + max(map(len, episode.queries)) + 1 <= n_ctx - 2


@pytest.mark.parametrize("permutation", [1, 2, 3, 4])
def test_reference_permutations_are_the_legacy_numpy_draws(permutation):
    task, tokenizer = toy_task(n_train=40, n_eval=4), make_tokenizer()
    seed, k = 5, 8
    shuffled = np.random.default_rng(seed).permutation(40)[:k]
    np.random.seed(seed)  # each reference process; the finetuning one draws ICL's five first, then GD's five
    draws = [np.random.permutation(k) for _ in range(10)]
    episode = build_episode(task, tokenizer, 512, k=k, seed=seed, permutation=permutation, preset="reference")
    assert list(episode.demo_rows) == shuffled[draws[permutation]].tolist()
    assert list(episode.train_rows) == shuffled[draws[5 + permutation]].tolist()
    toolkit = build_episode(task, tokenizer, 512, k=k, seed=seed, permutation=permutation)
    assert toolkit.train_rows == toolkit.demo_rows and sorted(toolkit.demo_rows) == sorted(shuffled.tolist())
    with pytest.raises(ValueError, match="permutation 5 does not exist in the reference code"):
        build_episode(task, tokenizer, 512, k=k, permutation=5, preset="reference")


def test_permutation_zero_keeps_the_shuffle_in_both_presets():
    task, tokenizer = toy_task(n_train=40, n_eval=4), make_tokenizer()
    shuffled = np.random.default_rng(3).permutation(40)[:8].tolist()
    for preset in PRESETS:
        episode = build_episode(task, tokenizer, 512, k=8, seed=3, preset=preset)
        assert list(episode.demo_rows) == list(episode.train_rows) == shuffled


def test_gd_trains_on_all_k_when_icl_truncates_under_the_reference():
    task, tokenizer = toy_task(n_train=40, n_eval=4), make_tokenizer()
    reference = build_episode(task, tokenizer, 60, k=20, preset="reference", text="normalised")
    toolkit = build_episode(task, tokenizer, 60, k=20)
    assert reference.effective_k < 20 and len(reference.train_demos) == 20
    assert len(toolkit.train_demos) == toolkit.effective_k < 20 and toolkit.train_demos == toolkit.demos
    shuffled = np.random.default_rng(0).permutation(40)[:20].tolist()
    assert list(reference.train_rows) == shuffled


def test_raw_text_keeps_trailing_spaces_and_joins_lines_with_eos():
    tokenizer = byte_tokenizer()
    rows = [{"sentence": "a fine film ", "label": 1}, {"sentence": "first line\nsecond line", "label": 0}]
    task = Task("sst2-like", "Sentence: {sentence} Label:", ("Negative", "Positive"), rows, rows)
    raw = build_episode(task, tokenizer, 512, k=2, preset="reference")
    normalised = build_episode(task, tokenizer, 512, k=2)
    eos = tokenizer.eos_token_id
    by_row = dict(zip(raw.query_rows, raw.queries))
    assert by_row[0] == tuple(encode(tokenizer, "Sentence: a fine film  Label:"))  # the doubled space stays
    assert by_row[1] == (*encode(tokenizer, "Sentence: first line"), eos, *encode(tokenizer, "second line Label:"))
    normalised_by_row = dict(zip(normalised.query_rows, normalised.queries))
    assert normalised_by_row[0] == tuple(encode(tokenizer, "Sentence: a fine film Label:"))
    assert normalised_by_row[1] == tuple(encode(tokenizer, "Sentence: first line second line Label:"))


def test_reference_preset_records_every_resolved_choice(tmp_path):
    result = compare(
        tiny_model(),
        toy_task(),
        k=4,
        lr=0.05,
        n_eval=4,
        baselines=("trained_norms",),
        preset="reference",
        position="prediction",
        subsets=("f2t",),
        progress=False,
    )
    config = result.config
    expected = PRESETS["reference"].to_dict() | {"position": "prediction"}
    assert {name: config[name] for name in expected} == expected
    assert config["preset"] == "reference" and config["dtype"] == "float16"
    assert result.scores["model"].resolution["dtype"] == "float16"
    assert set(result.scores["model"].subsets["f2t"]) == {"gd", "lcgd"}


def test_a_demonstration_longer_than_the_context_is_refused_for_gd_on_all_k():
    rows = [{"sentence": " ".join(["film"] * 40), "label": 1}, {"sentence": "a good film", "label": 1}]
    rows += [{"sentence": "a bad film", "label": 0}]
    task = Task("long", "Sentence: {sentence} Label:", ("Negative", "Positive"), rows, rows[1:])
    tokenizer = make_tokenizer()
    kept = build_episode(task, tokenizer, 30, k=3)
    assert kept.effective_k == len(kept.train_demos) == 2
    with pytest.raises(ValueError, match="do not fit the 30-token context even alone.*--gd-demos kept"):
        build_episode(task, tokenizer, 30, k=3, preset="reference")
