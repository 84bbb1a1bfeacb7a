"""Episodes fix every token id: seeded, demonstrations that overflow the context dropped, bad input refused."""

import pytest

from iclgd_lens.core.episodes import build_episode
from tests.helpers import make_tokenizer, toy_task


def test_episode_is_seeded_and_fixes_every_token():
    task, tokenizer = toy_task(n_train=40, n_eval=30), make_tokenizer()
    a = build_episode(task, tokenizer, 512, k=8, seed=2, n_eval=10)
    assert a == build_episode(task, tokenizer, 512, k=8, seed=2, n_eval=10)
    b = build_episode(task, tokenizer, 512, k=8, seed=3, n_eval=10)
    assert a.demo_rows != b.demo_rows and a.query_rows == b.query_rows  # eval shuffled with seed 1 regardless
    permuted = build_episode(task, tokenizer, 512, k=8, seed=2, permutation=1, n_eval=10)
    assert sorted(permuted.demo_rows) == sorted(a.demo_rows) and permuted.demo_rows != a.demo_rows
    eos = tokenizer.eos_token_id
    demo = a.demos[0]
    assert a.icl_prefix[: len(demo) + 2] == (a.bos, *demo, eos)
    assert demo[-1:] == a.label_tokens[task.train[a.demo_rows[0]]["label"]]

    def encode(text):
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])

    assert a.label_tokens == (encode(" Negative"), encode(" Positive"))
    assert len(a.queries) == 10 and a.labels == tuple(task.eval[i]["label"] for i in a.query_rows)
    newline = build_episode(task, tokenizer, 512, k=8, seed=2, n_eval=10, separator=".")
    assert newline.separator == tuple(tokenizer(".", add_special_tokens=False)["input_ids"])


def test_overflowing_demonstrations_are_dropped():
    task, tokenizer = toy_task(), make_tokenizer()
    full = build_episode(task, tokenizer, 512, k=20, n_eval=5)
    short = build_episode(task, tokenizer, 60, k=20, n_eval=5)
    assert full.effective_k == 20 and 0 < short.effective_k < 20
    longest = 1 + max(len(q) for q in short.queries) + 1
    assert len(short.icl_prefix) - 1 + longest <= 60
    assert set(short.demo_rows) <= set(full.demo_rows)


def test_bad_episode_input_is_refused():
    task, tokenizer = toy_task(n_train=10), make_tokenizer()
    with pytest.raises(ValueError, match="k=11 demonstrations requested but the train split has 10"):
        build_episode(task, tokenizer, 512, k=11)
    with pytest.raises(ValueError, match="model context is 5"):
        build_episode(task, tokenizer, 5, k=1)
    with pytest.raises(ValueError, match="tokenise identically"):
        build_episode(toy_task(labels=("Negative", "Negative ")), tokenizer, 512, k=1)
