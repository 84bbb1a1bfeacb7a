"""The papers' untrained baselines (seeded re-initialised copies of a model) and the float16 copy fp16-mixed
training runs on. The model itself is never edited."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch

from iclgd_lens.backend import BRIDGE, TL_VERSION, LensModel
from iclgd_lens.core.presets import BASELINES, CHOICES, check_choice

# TransformerLens 3 draws a baseline's matrices at cfg.initializer_range, which its converters take from the checkpoint
# for these architectures (Gemma and OLMo by name, at 0.02, their checkpoints' value) and leave at its default
# 0.8/sqrt(d_model) for every other (transformer_lens/loading_from_pretrained.py, 3.9). The bridge's config carries the
# checkpoint's value everywhere, so the bridge's baselines apply 3.x's rule: both backends draw at the same scale.
CHECKPOINT_INIT_RANGE = (
    "QWenLMHeadModel",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "PhiForCausalLM",
    "Phi3ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Gemma3ForConditionalGeneration",
    "OlmoForCausalLM",
    "Olmo2ForCausalLM",
    "Olmo3ForCausalLM",
    "OlmoeForCausalLM",
)


def half_copy(model: LensModel) -> LensModel:
    """A float16 copy of `model` (the reference runs every setting in fp16); the model itself is left as it is.
    On the bridge (whose wrapped modules do not all deep-copy): a fresh transformers model of the checkpoint's config
    in float16, wrapped, given the model's weights, and checked against the model's logits."""
    if not BRIDGE:
        return copy.deepcopy(model).to(torch.float16, print_details=False).eval()
    from transformers import AutoModelForCausalLM

    from iclgd_lens.sources.bridge_models import wrap_checked
    from iclgd_lens.sources.hf_models import check_logits, check_prompt_ids

    config = copy.deepcopy(model.original_model.config)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float16).to(model.cfg.device).eval()
    half = wrap_checked(fresh, model.tokenizer, model.cfg.model_name, f"the float16 copy of {model.cfg.model_name}")
    half.load_state_dict({name: tensor.half() for name, tensor in model.state_dict().items()})
    ids = check_prompt_ids(model.tokenizer).to(model.cfg.device)
    with torch.no_grad():
        check_logits(
            half(ids),
            model(ids),
            torch.float16,
            f"the float16 copy of {model.cfg.model_name}",
            type(model.original_model).__name__,
        )
    return half.eval()


def untrained_copy(model: LensModel, baseline: str, seed: int, init: str = "transformer_lens") -> LensModel:
    """A seeded re-initialised copy of `model` (Revisited 3.3; docs/science.md, "Baselines"):

    - `no_training`: every weight re-initialised;
    - `trained_norms`: every norm's parameters kept, the rest re-initialised (the setting behind Revisited's
      "No Training" row);
    - `trained_embeddings`: token/positional embeddings, every norm and the unembedding kept, the rest
      re-initialised.

    `init`: `transformer_lens` (cfg.init_mode for matrices, biases 0, norm gains 1) or `fairseq` (the reference:
    Q/K/V xavier-uniform with gain 1/sqrt(2), W_O xavier-uniform with b_O = 0, MLP matrices and every other bias
    PyTorch's U(±1/sqrt(fan_in)), embeddings N(0, 1/d_model), the unembedding tied to W_E where the model ties it).
    Returns the copy (with `model`'s tokenizer); `model` is left as it was.
    """
    check_choice("baseline", baseline, BASELINES)
    check_choice("init", init, CHOICES["init"])
    if BRIDGE:
        return _untrained_bridge(model, baseline, seed, init)
    fresh = copy.deepcopy(model)
    fresh.cfg.seed = seed  # init_weights seeds the global RNG from cfg.seed; fork_rng restores it afterwards
    devices = [torch.cuda.current_device()] if str(fresh.cfg.device).startswith("cuda") else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        if init == "transformer_lens":
            # init_weights re-draws only the W_* matrices: reset biases and norm gains as a fresh model has them.
            for name, param in fresh.named_parameters():
                if not _leaf(name).startswith("W_"):
                    param.fill_(1.0 if _leaf(name) == "w" else 0.0)
            fresh.init_weights()
        else:
            _fairseq_init(fresh, seed)
        kept = {
            "no_training": lambda name: False,
            "trained_norms": _is_norm,
            "trained_embeddings": _is_embedding_or_norm,
        }
        trained = dict(model.named_parameters())
        for name, param in fresh.named_parameters():
            if kept[baseline](name):
                param.copy_(trained[name])
    return fresh.eval()


def check_same_draws(config: dict, baselines: Sequence[str]) -> None:
    """Baselines re-drawn for a saved result (config: its result.json config) must be the ones it was computed with:
    the two TransformerLens backends draw them differently (the same distribution, not the same values)."""
    recorded = (config.get("versions") or {}).get("transformer-lens")
    if baselines and recorded and (int(recorded.split(".")[0]) >= 4) != BRIDGE:
        raise ValueError(
            f"the result's baselines {list(baselines)} were drawn under transformer-lens {recorded}, whose draws this "
            f"environment's {TL_VERSION} does not reproduce (HookedTransformer and TransformerBridge draw them apart): "
            "leave the baselines out (lenses: --baselines with no name; attribute: --kendall-queries 0) or use a "
            f"transformer-lens {recorded.split('.')[0]}.x environment"
        )


def _untrained_bridge(model: LensModel, baseline: str, seed: int, init: str) -> LensModel:
    """The same baselines on TransformerLens 4: a fresh Hugging Face model of the checkpoint's config, its matrices
    and embeddings drawn from N(0, init_scale) with a generator seeded by `seed`, biases 0, every norm neutral (as
    transformers builds it: gain 1, or weight 0 for Gemma's (1 + w) norms), the kept parameters copied from the trained
    model, wrapped in its own bridge. The draws differ from HookedTransformer's (another order and layout): the two
    backends' baselines agree in distribution, not value. The output embedding is drawn apart from the input one, as
    HookedTransformer (which unties them) draws W_U. `init="fairseq"` draws the reference's distributions instead
    (`_fairseq_draw`)."""
    from transformers import AutoModelForCausalLM

    from iclgd_lens.sources.bridge_models import wrap_checked

    trained = model.original_model
    config = copy.deepcopy(trained.config)
    config.tie_word_embeddings = False
    fresh = AutoModelForCausalLM.from_config(config, dtype=model.cfg.dtype).to(model.cfg.device).eval()
    norms, embeddings = _hf_norm_parameters(fresh), _hf_embedding_parameters(fresh)
    kept = {"no_training": set(), "trained_norms": norms, "trained_embeddings": norms | embeddings}[baseline]
    # the bridge wraps the trained model's modules in place: its state_dict names are transformers' own plus the
    # wrappers' "_original_component" (tied tensors appear under both names)
    trained_state = {name.replace("._original_component", ""): tensor for name, tensor in trained.state_dict().items()}
    std = init_scale(config, model.cfg.d_model)
    generator = torch.Generator(device=model.cfg.device).manual_seed(seed)
    with torch.no_grad():
        for name, param in fresh.named_parameters():
            if name in kept:
                param.copy_(trained_state[name])
            elif init == "fairseq" and name not in norms:
                _fairseq_draw(param, name, name in embeddings, model.cfg, generator)
            elif param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator, device=param.device) * std)
            elif name not in norms:
                param.zero_()
        if init == "fairseq" and trained.config.tie_word_embeddings and "lm_head.weight" not in kept:
            fresh.get_output_embeddings().weight.copy_(fresh.get_input_embeddings().weight)
    name = f"{model.cfg.model_name}-{baseline}"
    return wrap_checked(fresh, model.tokenizer, name, f"the {baseline} baseline of {model.cfg.model_name}")


def init_scale(hf_config, d_model: int) -> float:
    """The standard deviation HookedTransformer's `init_weights` draws this checkpoint's matrices at
    (CHECKPOINT_INIT_RANGE)."""
    if set(getattr(hf_config, "architectures", None) or ()) & set(CHECKPOINT_INIT_RANGE):
        return float(hf_config.initializer_range)
    return 0.8 / math.sqrt(d_model)


def _hf_norm_parameters(hf_model: torch.nn.Module) -> set[str]:
    """Names of the parameters of every normalisation module (LayerNorm, and transformers' *RMSNorm classes)."""
    return {
        f"{module_name}.{name}" if module_name else name
        for module_name, module in hf_model.named_modules()
        if "norm" in type(module).__name__.lower()
        for name, _ in module.named_parameters(recurse=False)
    }


def _hf_embedding_parameters(hf_model: torch.nn.Module) -> set[str]:
    """Names of the token and position embeddings' parameters and the output embedding's (the unembedding)."""
    output = hf_model.get_output_embeddings()
    return {
        f"{module_name}.{name}"
        for module_name, module in hf_model.named_modules()
        if isinstance(module, torch.nn.Embedding) or module is output
        for name, _ in module.named_parameters(recurse=False)
    }


def _fairseq_init(model: LensModel, seed: int) -> None:
    """fairseq's initialisation, written on TransformerLens' parameter layout (fan-in/out of the fused Linear)."""
    generator = torch.Generator(device=model.cfg.device).manual_seed(seed)
    cfg = model.cfg

    def uniform(param: torch.Tensor, bound: float) -> None:
        param.copy_((torch.rand(param.shape, generator=generator, device=param.device) * 2 - 1) * bound)

    fan = {  # leaf -> (fan_in, fan_out) of the Linear it belongs to
        "W_Q": (cfg.d_model, cfg.n_heads * cfg.d_head),
        "W_O": (cfg.n_heads * cfg.d_head, cfg.d_model),
        "W_in": (cfg.d_model, cfg.d_mlp),
        "W_gate": (cfg.d_model, cfg.d_mlp),
        "W_out": (cfg.d_mlp, cfg.d_model),
    }
    for leaf in ("W_K", "W_V", "_W_K", "_W_V"):
        fan[leaf] = (cfg.d_model, (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head)
    bias_fan_in = {"b_Q": cfg.d_model, "b_K": cfg.d_model, "b_V": cfg.d_model, "_b_K": cfg.d_model}
    bias_fan_in |= {"_b_V": cfg.d_model, "b_in": cfg.d_model, "b_out": cfg.d_mlp}
    for name, param in model.named_parameters():
        leaf = _leaf(name)
        if _is_norm(name):
            param.fill_(1.0 if leaf == "w" else 0.0)
        elif leaf in ("W_E", "W_pos", "W_U"):
            param.copy_(torch.randn(param.shape, generator=generator, device=param.device) * cfg.d_model**-0.5)
        elif leaf in ("W_Q", "W_K", "W_V", "_W_K", "_W_V", "W_O"):
            fan_in, fan_out = fan[leaf]
            gain = 1.0 if leaf == "W_O" else 2**-0.5
            uniform(param, gain * math.sqrt(6 / (fan_in + fan_out)))
        elif leaf in ("W_in", "W_gate", "W_out"):
            uniform(param, fan[leaf][0] ** -0.5)
        elif leaf in bias_fan_in:
            uniform(param, bias_fan_in[leaf] ** -0.5)
        else:  # b_O and the unembedding bias
            param.zero_()
    if model.cfg.d_vocab == model.cfg.d_vocab_out and _ties_embeddings(model):
        model.W_U.copy_(model.W_E.T)


# transformers' module names of each role fairseq draws differently (GPT-2, GPT-NeoX, Llama-family layouts).
QKV_MODULES = ("q_proj", "k_proj", "v_proj", "c_attn", "query_key_value")
OUT_MODULES = ("o_proj", "attn.c_proj", "attention.dense", "self_attn.dense")
MLP_IN_MODULES = ("gate_proj", "up_proj", "c_fc", "dense_h_to_4h", "fc1")
MLP_OUT_MODULES = ("down_proj", "mlp.c_proj", "dense_4h_to_h", "fc2")


def _fairseq_draw(param: torch.Tensor, name: str, embedding: bool, cfg, generator: torch.Generator) -> None:
    """One parameter of a bridge baseline drawn as `_fairseq_init` draws its TransformerLens twin (every element
    independent, so the layout of a fused projection does not matter): Q/K/V xavier-uniform with gain 1/sqrt(2) and
    their biases U(±1/sqrt(d_model)), the attention output xavier-uniform with a zero bias, MLP matrices and biases
    U(±1/sqrt(fan_in)), embeddings N(0, 1/d_model). A parameter of no known role is refused by name."""
    module = name.rsplit(".", 1)[0]
    bias = name.endswith(".bias")
    heads, kv_heads = cfg.n_heads * cfg.d_head, (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head

    def uniform(bound: float) -> None:
        param.copy_((torch.rand(param.shape, generator=generator, device=param.device) * 2 - 1) * bound)

    if embedding:
        param.copy_(torch.randn(param.shape, generator=generator, device=param.device) * cfg.d_model**-0.5)
    elif module.endswith(QKV_MODULES):
        fan_out = kv_heads if module.endswith(("k_proj", "v_proj")) else heads
        if kv_heads != heads and module.endswith(("c_attn", "query_key_value")):
            raise NotImplementedError(f"fairseq's init of a fused projection with grouped keys ({name})")
        uniform(cfg.d_model**-0.5 if bias else 2**-0.5 * math.sqrt(6 / (cfg.d_model + fan_out)))
    elif module.endswith(OUT_MODULES) and bias:
        param.zero_()
    elif module.endswith(OUT_MODULES):
        uniform(math.sqrt(6 / (heads + cfg.d_model)))
    elif module.endswith(MLP_IN_MODULES):
        uniform(cfg.d_model**-0.5)
    elif module.endswith(MLP_OUT_MODULES):
        uniform(cfg.d_mlp**-0.5)
    else:
        raise NotImplementedError(f"fairseq's init has no rule for {name}; use --init transformer_lens")


def _ties_embeddings(model: LensModel) -> bool:
    return model.W_U.shape == model.W_E.T.shape and bool(torch.equal(model.W_U, model.W_E.T))


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _is_norm(name: str) -> bool:
    # TransformerLens names norm parameters "w"/"b" and every other parameter "W_*"/"b_*".
    return _leaf(name) in ("w", "b")


def _is_embedding_or_norm(name: str) -> bool:
    return name.startswith(("embed.", "pos_embed.", "unembed.")) or _is_norm(name)
