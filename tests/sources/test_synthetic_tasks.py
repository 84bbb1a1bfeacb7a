"""The bundled synthetic tasks and their word-level tokenizer (offline, fast)."""

from collections import Counter

import pytest

from iclgd_lens.sources.hub_tasks import HUB_TASKS
from iclgd_lens.sources.synthetic_tasks import SYNTHETIC_TASKS, synthetic_task
from iclgd_lens.sources.tokenizers import UNK_TOKEN, build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _real(name: str) -> str:
    return name.removeprefix("synth-")


@pytest.mark.parametrize("name", SYNTHETIC_TASKS)
def test_same_seed_same_examples_other_seed_differs(name):
    a = synthetic_task(name, seed=3, n_train=300, n_eval=50)
    b = synthetic_task(name, seed=3, n_train=300, n_eval=50)
    c = synthetic_task(name, seed=4, n_train=300, n_eval=50)
    assert a.train == b.train and a.eval == b.eval
    assert a.train != c.train and a.eval != c.eval


@pytest.mark.parametrize("name", SYNTHETIC_TASKS)
def test_real_template_and_label_words(name):
    task = synthetic_task(name, n_train=200, n_eval=40)
    spec = HUB_TASKS[_real(name)]
    assert task.template == spec.template
    assert task.label_words == spec.label_words
    expected_fields = {"sst2": ("sentence",), "cb": ("premise", "hypothesis")}.get(_real(name), ("text",))
    assert task.fields == expected_fields


@pytest.mark.parametrize("name", SYNTHETIC_TASKS)
def test_default_splits_sizes_disjoint_balanced(name):
    task = synthetic_task(name)
    assert 2000 <= len(task.train) <= 10000 and 200 <= len(task.eval) <= 1000
    key = lambda row: tuple(row[f] for f in task.fields)  # noqa: E731
    assert not {key(r) for r in task.train} & {key(r) for r in task.eval}
    assert len({key(r) for r in task.train}) == len(task.train)
    n_classes = len(task.label_words)
    for split in (task.train, task.eval):
        counts = Counter(r["label"] for r in split)
        assert set(counts) == set(range(n_classes))
        assert max(counts.values()) - min(counts.values()) <= 1


@pytest.mark.parametrize("name", SYNTHETIC_TASKS)
def test_sentences_are_short_and_in_vocabulary(name, tokenizer):
    task = synthetic_task(name, seed=7, n_train=500, n_eval=100)
    unk = tokenizer.convert_tokens_to_ids(UNK_TOKEN)
    for row in task.train + task.eval:
        for field in task.fields:
            assert 3 <= len(row[field].split()) <= 16, row[field]
        ids = tokenizer.encode(task.prompt(row) + " " + task.label_words[row["label"]], add_special_tokens=False)
        assert unk not in ids, task.prompt(row)


def test_label_words_single_tokens_and_concatenation(tokenizer):
    for spec in HUB_TASKS.values():
        for word in spec.label_words:
            assert len(tokenizer.encode(" " + word, add_special_tokens=False)) == 1, word
    task = synthetic_task("synth-cb", n_train=50, n_eval=10)
    prompt = task.prompt(task.train[0])
    whole = tokenizer.encode(prompt + " Neither", add_special_tokens=False)
    assert whole == tokenizer.encode(prompt, add_special_tokens=False) + tokenizer.encode(
        " Neither", add_special_tokens=False
    )
    assert tokenizer.tokenize("Question: film. True, False, or Neither? Answer:")[:4] == ["Question", ":", "film", "."]
    assert ["?", "Answer", ":"] == tokenizer.tokenize("Neither? Answer:")[1:]


def test_special_tokens(tokenizer):
    assert tokenizer.bos_token == tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.unk_token == UNK_TOKEN
    assert tokenizer.encode("", add_special_tokens=True) == []  # callers add the BOS id themselves
    assert tokenizer.encode("zyzzyva", add_special_tokens=False) == [tokenizer.unk_token_id]


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="synth-sst2"):
        synthetic_task("synth-nope")
