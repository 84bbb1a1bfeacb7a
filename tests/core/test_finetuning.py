"""`core/finetuning.py`: GD through hooks equals plain SGD; LCGD's gradients equal an explicit per-layer loss; the
layer-normalised and Adam steps equal their hand-computed first steps; fp16-mixed equals an explicit fairseq-style
loop and drops what falls below half an fp16 ulp; bad input is refused before a step."""

import copy

import pytest
import torch

from iclgd_lens.core.baselines import half_copy
from iclgd_lens.core.deltas import Delta, trained_parameters
from iclgd_lens.core.episodes import build_episode
from iclgd_lens.core.finetuning import LayerCausalReadout, _rounded_change, causal_lm_loss, fit
from iclgd_lens.core.hooks import parameter_layer
from iclgd_lens.core.methods import MethodContext
from iclgd_lens.core.recording import Prompts, record
from tests.core.test_deltas import ARCHS, episode_tokens, random_delta
from tests.helpers import bias_free, bundled_neox, tiny_model, toy_task


def bias_free_model(arch: str):
    """A model of `arch` (an ARCHS key, or the bundled "tiny-icl-neox") with its attention biases zeroed."""
    return bias_free(bundled_neox() if arch == "tiny-icl-neox" else tiny_model(**ARCHS[arch]))


@pytest.mark.parametrize("biases", ["checkpoint", "all"])
@pytest.mark.parametrize("arch", ["gpt2-like", "llama-like", "gemma3-like", "tiny-icl-neox"])
def test_gd_through_hooks_equals_plain_sgd(arch, biases):
    model = bias_free_model(arch)  # as Llama: "checkpoint" trains no bias, "all" trains them from 0
    episode, batches = episode_tokens(model, n=4)
    lr = 0.05
    delta = fit(model, episode.demos, episode.bos, MethodContext(lr, trained_parameters(model, biases=biases)))

    reference = copy.deepcopy(model)
    leaves = ("W_K", "W_V") if biases == "checkpoint" else ("W_K", "b_K", "W_V", "b_V")
    trained = {n: p for n, p in reference.named_parameters() if n.rsplit(".", 1)[-1].lstrip("_") in leaves}
    for p in reference.parameters():
        p.requires_grad_(False)
    for p in trained.values():
        p.requires_grad_(True)
    before = {n: p.detach().clone() for n, p in trained.items()}
    optimizer = torch.optim.SGD(trained.values(), lr=lr, momentum=0.0, weight_decay=0.0)
    for tokens in batches:
        optimizer.zero_grad()
        reference(tokens, return_type="loss").backward()  # TransformerLens' own mean next-token NLL
        optimizer.step()
    assert set(delta.tensors) == set(trained)
    for name, p in trained.items():
        torch.testing.assert_close(delta.tensors[name], p.detach() - before[name], atol=1e-6, rtol=1e-4)
    assert all(t.abs().max() > 0 for t in delta.tensors.values())
    # The base model itself is untouched.
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, dict(bias_free_model(arch).named_parameters())[name])


def explicit_layer_loss(model, delta, tokens, layer, exit):
    """Layer l's LCGD loss from an edited copy of block l alone, fed the (detached) input it gets in the
    delta'd model; frozen ln_final + unembed read it out."""
    with model.hooks(delta.hooks(model)):
        _, cache = model.run_with_cache(tokens)
    x = cache[f"blocks.{layer}.hook_resid_pre"].detach()
    block = copy.deepcopy(model.blocks[layer])
    local = {
        n.removeprefix(f"blocks.{layer}."): t for n, t in delta.tensors.items() if n.startswith(f"blocks.{layer}.")
    }
    params = dict(block.named_parameters())
    for p in block.parameters():
        p.requires_grad_(False)
    for name, change in local.items():
        params[name].data += change
        params[name].requires_grad_(True)
    if exit == "block":
        out = block(x)
    else:
        h = block.ln1(x)
        attn_out = block.attn(query_input=h, key_input=h, value_input=h)
        out = x + (block.ln1_post(attn_out) if model.cfg.use_normalization_before_and_after else attn_out)
    loss = causal_lm_loss(model.unembed(model.ln_final(out)), tokens)
    grads = torch.autograd.grad(loss, [params[n] for n in local], allow_unused=True)
    return loss, {f"blocks.{layer}.{n}": _zero_if_unused(g, params[n]) for n, g in zip(local, grads)}


def _zero_if_unused(grad, param):
    return torch.zeros_like(param) if grad is None else grad


@pytest.mark.parametrize("exit", ["block", "attn"])
@pytest.mark.parametrize(
    "groups, arch",
    [
        (("k", "v"), "gpt2-like"),
        (("q", "o", "mlp"), "gpt2-like"),
        (("q", "k", "v"), "gemma3-like"),
        (("k", "v", "mlp"), "tiny-icl-neox"),
    ],
)
def test_lcgd_gradients_equal_explicit_per_layer_losses(exit, groups, arch):
    three_layers = {"attn_types": ["local", "global", "local"]} if arch == "gemma3-like" else {}
    model = bundled_neox() if arch == "tiny-icl-neox" else tiny_model(n_layers=3, **ARCHS[arch] | three_layers)
    delta = random_delta(model, groups, scale=0.02)
    _, (tokens, *_) = episode_tokens(model)
    params = list(delta.tensors.values())
    for p in params:
        p.requires_grad_(True)
    readout = LayerCausalReadout(model, exit)
    with model.hooks(readout.input_hooks() + delta.hooks(model) + readout.exit_hooks()):
        loss = readout.loss(model, tokens)
    raw = torch.autograd.grad(loss, params, allow_unused=True)
    grads = {n: _zero_if_unused(g, p) for (n, p), g in zip(delta.tensors.items(), raw)}
    for p in params:
        p.requires_grad_(False)

    total = 0.0
    for layer in range(model.cfg.n_layers):
        layer_loss, expected = explicit_layer_loss(model, delta, tokens, layer, exit)
        total += layer_loss
        for name, g in expected.items():
            torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(loss, total, atol=1e-5, rtol=0)

    # Sanity: plain GD's gradient differs (earlier layers also get later layers' losses).
    for p in params:
        p.requires_grad_(True)
    with model.hooks(delta.hooks(model)):
        gd_grads = torch.autograd.grad(causal_lm_loss(model(tokens), tokens), params, allow_unused=True)
    gd_grads = [_zero_if_unused(g, p) for g, p in zip(gd_grads, params)]
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(grads.values(), gd_grads))


def test_lcgd_fit_runs_one_step_per_demonstration_and_differs_from_gd():
    model = tiny_model()
    episode, _ = episode_tokens(model, n=3)
    gd = fit(model, episode.demos, episode.bos, MethodContext(0.05))
    lcgd = fit(model, episode.demos, episode.bos, MethodContext(0.05), "lcgd")
    assert set(gd.tensors) == set(lcgd.tensors)
    assert any((gd.tensors[n] - lcgd.tensors[n]).abs().max() > 1e-5 for n in gd.tensors)


@pytest.mark.parametrize("method", ["gd", "lcgd"])
def test_diverging_lr_stops_with_an_error_naming_it(method):
    model = tiny_model(normalization_type=None)  # no LayerNorm to tame the blow-up
    episode, _ = episode_tokens(model, n=6)
    with pytest.raises(FloatingPointError, match="lr=1e\\+30; lower the learning rate"):
        fit(model, episode.demos, episode.bos, MethodContext(1e30), method)


def one_demo_step(step, **options):
    model = tiny_model()
    parameters = trained_parameters(model, ("k", "v"))
    demos = [[3, 4, 5, 6, 7]]
    sgd = fit(model, demos, 0, MethodContext(1.0, parameters), "lcgd")  # one step at lr 1: −g
    other = fit(model, demos, 0, MethodContext(0.01, parameters, options=options), "lcgd", step)
    return sgd, other


def test_the_layer_normalised_step_moves_each_layer_by_lr_along_its_gradient():
    sgd, normalised = one_demo_step("layer-normalised")
    for layer in (0, 1):
        names = [n for n in sgd.tensors if parameter_layer(n) == layer]
        norm = torch.sqrt(sum(sgd.tensors[n].double().pow(2).sum() for n in names))
        for name in names:
            torch.testing.assert_close(normalised.tensors[name].double(), 0.01 * sgd.tensors[name].double() / norm)


def test_the_adam_step_is_adams_first_step_and_epochs_repeat_the_demonstrations():
    sgd, adam = one_demo_step("adam", betas=(0.9, 0.999))
    for name, minus_g in sgd.tensors.items():
        g = -minus_g
        torch.testing.assert_close(adam.tensors[name], -0.01 * g / (g.abs() + 1e-8))  # m̂ = g, v̂ = g²
    model = tiny_model()
    parameters = trained_parameters(model, ("k", "v"))
    demos = [[3, 4, 5], [6, 7, 8, 9]]
    twice = fit(model, demos, 0, MethodContext(0.1, parameters, options={"epochs": 2}))
    repeated = fit(model, demos + demos, 0, MethodContext(0.1, parameters))
    for name in twice.tensors:
        torch.testing.assert_close(twice.tensors[name], repeated.tensors[name])


def test_rounded_change_drops_updates_below_half_an_fp16_ulp():
    weight = torch.tensor([1.0, 1.0, 0.5, 0.0], dtype=torch.float16)
    ulp = torch.tensor([2**-10, 2**-10, 2**-11, 0.0])
    master = torch.tensor([0.4, 0.6, 0.6, 0.0]) * ulp + torch.tensor([0, 0, 0, 1e-3])
    change = _rounded_change(weight, master).float()
    assert change.tolist() == [0.0, 2**-10, 2**-11, float(torch.tensor(1e-3).half())]


def test_sub_ulp_update_vanishes_under_the_reference_precision_only():
    model = tiny_model()
    episode = build_episode(toy_task(), model.tokenizer, model.cfg.n_ctx, k=4, n_eval=6)
    lr = 1e-9  # every update far below half an fp16 ulp of the weights
    native = fit(model, episode.train_demos, episode.bos, MethodContext(lr))
    assert all(bool(t.abs().max() > 0) for t in native.tensors.values())
    half = half_copy(model)
    mixed = fit(half, episode.train_demos, episode.bos, MethodContext(lr, precision="fp16-mixed"))
    assert all(bool((t == 0).all()) for t in mixed.tensors.values())
    prompts = Prompts.of(episode, episode.zs_prefix)
    zs, ft = record(half, prompts), record(half, prompts, mixed)
    assert torch.equal(zs.attn_out, ft.attn_out) and torch.equal(zs.scores, ft.scores)
    zs32, ft32 = record(model, prompts), record(model, prompts, native)
    assert not torch.equal(zs32.attn_out, ft32.attn_out)


def test_fp16_mixed_fit_matches_an_explicit_fairseq_style_loop():
    """Independent: an fp16 copy whose K/V weights are physically set to round16(W + ΔW) each step, the summed
    token NLL scaled by 4 and backpropagated in fp16, the fp32 master updated with grad / (4 · n_tokens)."""
    model = half_copy(tiny_model(seed=2))
    episode = build_episode(toy_task(), model.tokenizer, model.cfg.n_ctx, k=5, n_eval=2)
    lr = 0.5
    ours = fit(model, episode.train_demos, episode.bos, MethodContext(lr, precision="fp16-mixed"))

    edited = copy.deepcopy(model)
    names = list(Delta.zeros(model).tensors)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    master = {n: torch.zeros_like(base[n], dtype=torch.float32) for n in names}
    params = dict(edited.named_parameters())
    for demo in episode.train_demos:
        tokens = torch.tensor([[episode.bos, *demo]])
        with torch.no_grad():
            for n in names:
                params[n].copy_((base[n].float() + master[n]).half())
        logits = edited(tokens).float()
        nll = torch.nn.functional.cross_entropy(logits[0, :-1], tokens[0, 1:], reduction="sum")
        grads = torch.autograd.grad(nll * 4.0, [params[n] for n in names])
        for n, g in zip(names, grads):
            master[n] -= lr * g.float() / (4.0 * (tokens.shape[1] - 1))
    expected = {n: ((base[n].float() + master[n]).half().float() - base[n].float()) for n in names}
    for n in names:
        assert ours.tensors[n].dtype == torch.float16
        torch.testing.assert_close(ours.tensors[n].float(), expected[n], rtol=0.02, atol=3e-3)
    assert max(float(expected[n].abs().max()) for n in names) > 0.05  # many ulps: a real update was compared


def test_a_bad_lr_or_method_is_refused_before_a_step():
    model = tiny_model()
    with pytest.raises(ValueError, match="positive"):
        fit(model, [[1, 2]], 0, MethodContext(0.0))
    with pytest.raises(ValueError, match="unknown method"):
        fit(model, [[1, 2]], 0, MethodContext(0.1), "sgd")
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        fit(model, [[1, 2]], 0, MethodContext(0.1, options={"epochs": 0}))
    with pytest.raises(ValueError, match="fp16-mixed reproduces the reference's SGD only"):
        fit(model, [[1, 2]], 0, MethodContext(0.1, precision="fp16-mixed"), step="adam")
