"""TransformerLens 4 (TransformerBridge): loading, recording, deltas and GD against independent computations on the
tiny Hugging Face checkpoints of tests/bridge/reference (GPT-2's fused c_attn with every bias; Llama with grouped-query
attention, RMSNorm, rotary and SwiGLU; GPT-NeoX with partial rotary and its per-head interleaved fused QKV). These
run in the TransformerLens 4 environment (`make test-tl4`); under 3.x they are skipped, and the same properties are
tested on HookedTransformer in tests/core. test_cross_backend.py compares the two backends' numbers."""

from __future__ import annotations

import einops
import pytest
import torch
from transformers import AutoModelForCausalLM

from iclgd_lens.backend import BRIDGE, block_parameters
from tests.bridge.test_cross_backend import CHECKPOINTS, model_folder
from tests.helpers import toy_task

pytestmark = pytest.mark.skipif(not BRIDGE, reason="TransformerLens 4 only: make test-tl4")


@pytest.fixture(params=CHECKPOINTS, scope="module")
def folder(request):
    return model_folder(request.param)


def hf_model(folder):
    """The checkpoint as transformers runs it (the independent reference)."""
    return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()


def bridge(folder):
    from iclgd_lens import load_model

    return load_model(folder, device="cpu")


def test_loads_as_a_bridge_with_transformers_logits(folder):
    from transformer_lens.model_bridge import TransformerBridge

    model = bridge(folder)
    assert isinstance(model, TransformerBridge)
    ids = torch.tensor([[1, 4, 9, 12, 3, 7, 20]])
    with torch.no_grad():
        assert torch.allclose(model(ids), hf_model(folder)(ids).logits, atol=1e-5)


def test_bundled_model_is_refused_with_the_reason():
    from iclgd_lens import load_model

    with pytest.raises(NotImplementedError, match="TransformerLens 3.x.*pip install"):
        load_model("tiny-icl", device="cpu")


def test_block_parameters_are_the_checkpoint_weights(folder):
    """K per key-value head (GQA) or per head, read from the checkpoint's own tensors."""
    model = bridge(folder)
    params = block_parameters(model)
    name = "blocks.1.attn._W_K" if model.cfg.n_key_value_heads else "blocks.1.attn.W_K"
    assert torch.equal(params[name], key_weight(hf_model(folder), 1))


def key_weight(hf, layer: int) -> torch.Tensor:
    """Layer `layer`'s W_K [head, d_model, d_head], read from transformers' tensors in each layout."""
    if hf.config.model_type == "gpt2":  # Conv1D [d_model, 3 d_model], columns Q | K | V, head-major inside each
        d = hf.config.n_embd
        return einops.rearrange(hf.transformer.h[layer].attn.c_attn.weight[:, d : 2 * d], "m (n e) -> n m e", n=4)
    if hf.config.model_type == "gpt_neox":  # Linear [3 d_model, d_model], rows interleaved per head: (head, qkv, e)
        w = hf.gpt_neox.layers[layer].attention.query_key_value.weight
        return einops.rearrange(w, "(n three e) m -> three n m e", n=4, three=3)[1]
    return einops.rearrange(hf.model.layers[layer].self_attn.k_proj.weight, "(n e) m -> n m e", n=2)


def mlp_weight(hf, layer: int, name: str) -> torch.Tensor:
    """transformers' tensor holding TransformerLens' `name` ("mlp.W_in", "mlp.W_gate", "mlp.W_out") of `layer`."""
    if hf.config.model_type == "gpt2":
        mlp = hf.transformer.h[layer].mlp
        return {"mlp.W_in": mlp.c_fc.weight, "mlp.W_out": mlp.c_proj.weight}[name]
    if hf.config.model_type == "gpt_neox":
        mlp = hf.gpt_neox.layers[layer].mlp
        return {"mlp.W_in": mlp.dense_h_to_4h.weight, "mlp.W_out": mlp.dense_4h_to_h.weight}[name]
    mlp = hf.model.layers[layer].mlp
    return {"mlp.W_in": mlp.up_proj.weight, "mlp.W_gate": mlp.gate_proj.weight, "mlp.W_out": mlp.down_proj.weight}[name]


def test_record_equals_whole_prompt_forwards(folder):
    """The recording (batched, right-padded, every row prefix + query) against one whole prompt per query: the
    bridge's own cache for activations, transformers' logits for the label log-probabilities."""
    from iclgd_lens import Prompts, build_episode, record

    model, hf = bridge(folder), hf_model(folder)
    task = toy_task(labels=("Negative", "Positive Mixed"))
    episode = build_episode(task, model.tokenizer, model.cfg.n_ctx, k=6, n_eval=5)
    prefix = list(episode.icl_prefix)
    rec = record(model, Prompts(episode.queries, episode.label_tokens, prefix, pad_token=5), batch_size=2)
    layers = range(model.cfg.n_layers)
    for i, query in enumerate(episode.queries):
        tokens = torch.tensor([prefix + list(query)])
        at = len(prefix) + len(query) - 1
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens)
            logits = hf(torch.tensor([prefix + list(query) + list(episode.label_tokens[1])])).logits[0].log_softmax(-1)
        assert int(rec.position[i]) == at
        for layer in layers:
            assert torch.allclose(rec.attn_out[i, layer], cache[f"blocks.{layer}.hook_attn_out"][0, at], atol=1e-5)
            assert torch.allclose(rec.z[i, layer], cache[f"blocks.{layer}.attn.hook_z"][0, at], atol=1e-5)
            scores = cache[f"blocks.{layer}.attn.hook_attn_scores"][0, :, at, len(prefix) : at + 1]
            assert torch.allclose(rec.scores[i, layer, :, : len(query)], scores, atol=1e-5)
        label = episode.label_tokens[1]
        expected = torch.stack([logits[at + j, t] for j, t in enumerate(label)]).mean()
        assert torch.allclose(rec.label_logprobs[i, 1], expected, atol=1e-5)


def edited(folder, delta):
    """transformers' model with the delta written into its weights, in each layout: the attention's (fused c_attn
    columns, NeoX's interleaved query_key_value rows, k/v_proj) and the MLP's (TransformerLens' W_in and W_out are
    [d_model, d_mlp] and [d_mlp, d_model]: GPT-2's Conv1D stores them so, Linear layers transposed)."""
    hf = hf_model(folder)
    with torch.no_grad():
        for name, change in delta.tensors.items():
            layer = int(name.split(".")[1])
            if ".mlp." in name:
                weight = mlp_weight(hf, layer, name.split(".", 2)[2])
                weight += (change if hf.config.model_type == "gpt2" else change.T).to(weight.dtype)
            else:
                add_attention_change(hf, layer, name, change)
    return hf


def add_attention_change(hf, layer: int, name: str, change: torch.Tensor) -> None:
    """Add a change of W_Q/K/V or b_Q/K/V (TransformerLens' layout) to transformers' tensors holding it."""
    kind_index = {"Q": 0, "K": 1, "V": 2}
    kind, weight = name[-1], ".W_" in name or "._W_" in name
    if hf.config.model_type == "gpt2":
        d = hf.config.n_embd
        cols = slice(kind_index[kind] * d, (kind_index[kind] + 1) * d)
        attn = hf.transformer.h[layer].attn.c_attn
        if weight:
            attn.weight[:, cols] += einops.rearrange(change, "n m e -> m (n e)")
        else:
            attn.bias[cols] += change.flatten()
    elif hf.config.model_type == "gpt_neox":
        qkv = hf.gpt_neox.layers[layer].attention.query_key_value
        n = change.shape[0]
        if weight:
            qkv.weight.view(n, 3, -1, qkv.weight.shape[1])[:, kind_index[kind]] += change.transpose(1, 2)
        else:
            qkv.bias.view(n, 3, -1)[:, kind_index[kind]] += change
    else:
        proj = getattr(hf.model.layers[layer].self_attn, f"{kind.lower()}_proj")
        proj.weight += einops.rearrange(change, "n m e -> (n e) m")


def test_delta_hooks_equal_edited_weights(folder):
    from iclgd_lens import Delta

    model = bridge(folder)
    delta = Delta.zeros(model)
    assert delta.tensors, "K and V must be trainable"
    generator = torch.Generator().manual_seed(3)
    for t in delta.tensors.values():
        t.copy_(0.3 * torch.randn(t.shape, generator=generator))
    ids = torch.tensor([[1, 4, 9, 12, 3, 7, 20, 2, 11]])
    with torch.no_grad(), model.hooks(delta.hooks(model)):
        ours = model(ids)
    with torch.no_grad():
        theirs = edited(folder, delta)(ids).logits
    assert not torch.allclose(ours, model(ids), atol=1e-3)  # the delta matters
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_mlp_delta_hooks_equal_edited_weights(folder):
    """A change of the MLP's matrices (W_in, a gated MLP's W_gate, W_out) through the bridge's hooks against
    transformers' weights edited by hand: the hooks read the MLP's input at its own hook point
    (backend.mlp_input_point)."""
    from iclgd_lens import Delta

    model = bridge(folder)
    names = ("mlp.W_in", "mlp.W_out") + (("mlp.W_gate",) if model.cfg.gated_mlp else ())
    parameters = block_parameters(model)
    generator = torch.Generator().manual_seed(4)
    delta = Delta(
        {
            f"blocks.{layer}.{name}": 0.3 * torch.randn(parameters[f"blocks.{layer}.{name}"].shape, generator=generator)
            for layer in range(model.cfg.n_layers)
            for name in names
        }
    )
    ids = torch.tensor([[1, 4, 9, 12, 3, 7, 20, 2, 11]])
    with torch.no_grad(), model.hooks(delta.hooks(model)):
        ours = model(ids)
    with torch.no_grad():
        assert not torch.allclose(ours, model(ids), atol=1e-3)  # the delta matters
        assert torch.allclose(ours, edited(folder, delta)(ids).logits, atol=1e-5)


def trained_weights(hf) -> list[torch.nn.Parameter]:
    """The tensors holding K and V: a fused QKV (Q's part too: its gradient is zeroed), or k/v_proj."""
    return [
        p for n, p in hf.named_parameters() if any(s in n for s in ("c_attn", "query_key_value", "k_proj", "v_proj"))
    ]


def zero_query_gradient(hf, p: torch.nn.Parameter) -> None:
    if hf.config.model_type == "gpt2":
        p.grad[..., : hf.config.n_embd] = 0
    elif hf.config.model_type == "gpt_neox":
        p.grad.view(4, 3, -1, *p.shape[1:])[:, 0] = 0


def test_gd_equals_sgd_on_the_weights(folder):
    """GD's delta (through hooks) against torch SGD on transformers' K/V weights, one demonstration per step."""
    from iclgd_lens import MethodContext, build_episode, fit

    model = bridge(folder)
    episode = build_episode(toy_task(), model.tokenizer, model.cfg.n_ctx, k=4, n_eval=2)
    lr = 0.05
    delta = fit(model, episode.train_demos, episode.bos, MethodContext(lr))
    hf = hf_model(folder)
    trained = trained_weights(hf)
    for p in hf.parameters():
        p.requires_grad_(any(p is t for t in trained))
    optimizer = torch.optim.SGD(trained, lr=lr)
    for demo in episode.train_demos:
        tokens = torch.tensor([[episode.bos, *demo]])
        optimizer.zero_grad()
        hf(tokens, labels=tokens).loss.backward()
        for p in trained:
            zero_query_gradient(hf, p)
        optimizer.step()
    untouched = trained_weights(hf_model(folder))
    for sgd, ours, start in zip(trained, trained_weights(edited(folder, delta)), untouched):
        assert not torch.equal(sgd, start)  # SGD moved them
        assert torch.allclose(sgd, ours, atol=1e-6)


def test_every_hook_point_the_toolkit_names_fires_with_its_shape(folder):
    """The toolkit asks the bridge for HookedTransformer's names (core.hooks.HOOK_POINTS), which TransformerLens 4
    answers as aliases: pinned here, name by name, with the shapes the pipeline indexes."""
    from iclgd_lens.core.hooks import HOOK_POINTS, hook_name

    model = bridge(folder)
    cfg = model.cfg
    heads, kv_heads = cfg.n_heads, cfg.n_key_value_heads or cfg.n_heads
    pos = 7
    shapes = {
        "resid_pre": (1, pos, cfg.d_model),
        "resid_mid": (1, pos, cfg.d_model),
        "resid_post": (1, pos, cfg.d_model),
        "attn_out": (1, pos, cfg.d_model),
        "mlp_out": (1, pos, cfg.d_model),
        "q": (1, pos, heads, cfg.d_head),
        "k": (1, pos, kv_heads, cfg.d_head),
        "v": (1, pos, kv_heads, cfg.d_head),
        "z": (1, pos, heads, cfg.d_head),
        "attn_scores": (1, heads, pos, pos),
        "pattern": (1, heads, pos, pos),
        "mlp_pre": (1, pos, cfg.d_mlp),
        "mlp_pre_linear": (1, pos, cfg.d_mlp),
        "mlp_post": (1, pos, cfg.d_mlp),
        "pos_embed": (1, pos, cfg.d_model),
    }
    absent = {"mlp_pre_linear"} if not cfg.gated_mlp else set()
    absent |= {"resid_mid"} if cfg.parallel_attn_mlp else set()
    absent |= {"pos_embed"} if cfg.positional_embedding_type != "standard" else set()
    assert set(shapes) == set(HOOK_POINTS)
    names = {hook_name(point, 1): point for point in HOOK_POINTS if point not in absent}
    _, cache = model.run_with_cache(torch.tensor([[1, 4, 9, 12, 3, 7, 20]]), names_filter=list(names))
    for name, point in names.items():
        assert name in cache, f"{name} ({point}) did not fire"
        assert tuple(cache[name].shape) == shapes[point], point
