"""The chained implicit patch against independent computations: the zero-shot forward under every layer's patch
gives ICL's logits at the query (float64, 1e-8), through hooks and through weights edited by hand; the unchained
per-layer patches do not. Its mean over queries, on other queries: no lift from a context without a task."""

import copy
import dataclasses

import pytest
import torch

from iclgd_lens import compare, load_task
from iclgd_lens.analysis.lenses.implicit_patch import chained_patch, icl_targets
from iclgd_lens.analysis.lenses.lens_runs import subject_runs
from iclgd_lens.analysis.lenses.patch_transfer import transfer_values
from iclgd_lens.core.episodes import build_episode
from tests.analysis.test_lenses import ARCHS
from tests.helpers import make_tokenizer, tiny_model, toy_task


def prompts(model, query: int = 0) -> tuple[list[int], list[int]]:
    episode = build_episode(toy_task(), make_tokenizer(), model.cfg.n_ctx, k=6, seed=2, n_eval=4)
    return [*episode.icl_prefix, *episode.queries[query]], [episode.bos, *episode.queries[query]]


def relative_gap(logits: torch.Tensor, target: torch.Tensor) -> float:
    return float((logits - target).detach().abs().max() / target.detach().abs().max())


def edited(model, patches):
    """A copy of the model with every layer's materialised patch added to its weights."""
    copy_ = copy.deepcopy(model)
    with torch.no_grad():
        for layer, patch in enumerate(patches):
            block = copy_.blocks[layer]
            for name, change in patch.materialise().items():
                module, weight = name.split(".")
                parameter = getattr(getattr(block, module), weight)
                parameter += change.to(parameter.dtype)
    return copy_


@pytest.mark.parametrize("arch", ARCHS, ids=list(ARCHS))
def test_the_chained_patch_reproduces_icl_and_the_unchained_one_does_not(arch):
    model = tiny_model(dtype=torch.float64, **ARCHS[arch])
    for query in (0, 3):
        icl, zs = prompts(model, query)
        target = icl_targets(model, icl)["logits"]
        patches, logits = chained_patch(model, icl, zs)
        assert relative_gap(logits, target) < 1e-8
        # the same patches written into the weights, run as a plain zero-shot forward
        with torch.no_grad():
            plain = edited(model, patches)(torch.tensor([zs]))[0, -1].double()
        assert relative_gap(plain, target) < 1e-8
        _, unchained = chained_patch(model, icl, zs, chained=False)
        assert relative_gap(unchained, target) > 1e-4
        zs_logits = model(torch.tensor([zs]))[0, -1].double()
        assert relative_gap(zs_logits, target) > 1e-3  # the context changed the answer's logits to begin with
    post_norm = arch == "gemma3-like"
    assert all((p.gamma is not None) == post_norm and (p.h is None) == post_norm for p in patches)
    assert all(not p.a for p in patches) == (arch == "neox-like")  # parallel blocks: u is ICL's already


@pytest.mark.slow  # tiny-icl runs and the CLI: make test, not the edit loop
def test_transfer_of_the_mean_patch_on_tiny_icl(tiny):
    """With the demonstrations' labels removed (a context that carries no task) the mean patch does not move the
    other queries' answers; with the real demonstrations it lifts their label log-odds, reported beside GD's on
    the same target queries; the gains are the paired log-odds differences with ZS."""
    result = compare(tiny, load_task("synth-sst2"), k=16, n_eval=40, baselines=(), groups=("mlp_in",), progress=False)
    [subject] = subject_runs(tiny, result)
    episode = result.episode
    labels_removed = tuple(demo[: len(demo) - len(episode.label_tokens[0])] for demo in episode.demos)
    without, _ = transfer_values(subject, dataclasses.replace(episode, demos=labels_removed), n_sources=16)
    assert torch.equal(without["transfer_correct_patch_mean"], without["transfer_correct_zs"])
    assert abs(without["transfer_gain_patch_mean"].mean()) < 0.1
    real, mean = transfer_values(subject, episode, n_sources=16)
    assert real["transfer_gain_patch_mean"].mean() > 1.0 and real["transfer_correct_icl"].mean() == 1.0
    assert real["transfer_correct_gd"].shape == real["transfer_correct_patch_mean"].shape == (24, 1)
    torch.testing.assert_close(real["transfer_gain_gd"], real["transfer_logodds_gd"] - real["transfer_logodds_zs"])
    assert {f"transfer_correct_patch_n{n}" for n in (1, 2, 4, 8)} <= set(real)
    cos = real["patch_cos_gd"]
    assert cos.shape == (1, tiny.cfg.n_layers) and (cos.abs() <= 1).all()
    assert (real["random_abs_cos_patch_gd"] > 0).all()
    with pytest.raises(ValueError, match="source queries"):
        transfer_values(subject, episode, n_sources=40)


@pytest.mark.slow  # tiny-icl runs and the CLI: make test, not the edit loop
def test_lenses_transfer_option(tiny, tmp_path, capsys):
    """`lenses --transfer N`: the transfer measures on the model and each baseline, the mean patch's gain paired
    with each baseline's; N that leaves no target is refused before the model runs."""
    import pandas as pd

    from iclgd_lens.cli import main

    run = tmp_path / "run"
    compare(
        tiny,
        load_task("synth-sst2"),
        k=6,
        n_eval=6,
        lr=0.3,
        groups=("k", "v", "mlp_in"),
        baselines=("no_training",),
        out=run,
        progress=False,
    )
    assert main(["lenses", str(run), "--out", str(tmp_path / "lenses"), "--transfer", "3", "--threads", "1"]) == 0
    table = pd.read_csv(tmp_path / "lenses" / "per_layer.csv")
    gains = table[table.measure == "transfer_gain_patch_mean"]
    assert set(gains.subject) == {"model", "no_training"} and set(gains.covers) == {"queries"}
    assert "transfer_gain_patch_mean" in set(pd.read_csv(tmp_path / "lenses" / "paired.csv").measure)
    capsys.readouterr()
    assert main(["lenses", str(run), "--out", str(tmp_path / "x"), "--transfer", "6"]) == 2
    assert "source queries" in capsys.readouterr().err and not (tmp_path / "x").exists()
