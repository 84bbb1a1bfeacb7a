"""`core/accuracy.py`: each setting runs on its own prompt (ZS and every delta on [BOS] + query, ICL after the
demonstrations), checked against one full forward per query."""

import pytest
import torch

from iclgd_lens import build_episode, episode_accuracy, record_settings
from iclgd_lens.core.deltas import Delta, trained_parameters
from tests.helpers import tiny_model, toy_task


def test_each_setting_is_scored_on_its_own_prompt():
    model = tiny_model()
    episode = build_episode(toy_task(), model.tokenizer, model.cfg.n_ctx, k=4, n_eval=5)
    delta = Delta.zeros(model, trained_parameters(model))
    generator = torch.Generator().manual_seed(0)
    for t in delta.tensors.values():
        t.copy_(0.3 * torch.randn(t.shape, generator=generator))
    firsts = [tokens[0] for tokens in episode.label_tokens]  # the toy task's label words are one token each

    def predictions(prefix, hooks=()):
        with model.hooks(list(hooks)):
            logits = [model(torch.tensor([[*prefix, *query]]))[0, -1] for query in episode.queries]
        return torch.stack([row[firsts] for row in logits]).argmax(-1)

    expected = {
        "zs": predictions(episode.zs_prefix),
        "icl": predictions(episode.icl_prefix),
        "gd": predictions(episode.zs_prefix, delta.hooks(model)),
    }
    recorded = record_settings(model, episode, {"gd": delta})
    assert list(recorded) == ["zs", "icl", "gd"]
    labels = torch.tensor(episode.labels)
    accuracies = episode_accuracy(model, episode, {"gd": delta})
    for name, pred in expected.items():
        assert torch.equal(recorded[name].pred, pred), name
        assert accuracies[name] == pytest.approx((pred == labels).double().mean().item())
    assert not torch.equal(expected["zs"], expected["icl"]) or not torch.equal(expected["zs"], expected["gd"])
    assert list(record_settings(model, episode, prompts=("icl",))) == ["icl"]
