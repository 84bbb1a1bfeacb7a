"""The FLOP floor: the matmul FLOPs a comparison must compute, and the machine's measured matmul rate (their ratio
is the shortest time any implementation could take)."""

from __future__ import annotations

import time

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from iclgd_lens import Episode


def matmul_rate(device: str, dtype: torch.dtype, size: tuple[int, int, int] = (512, 768, 3072)) -> float:
    """Measured FLOP/s of one dense matmul of a GPT-2-small MLP's shape (512 rows)."""
    m, k, n = size
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    repeats = 20
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return repeats * 2 * m * k * n / (time.perf_counter() - start)


def block_flops(cfg: HookedTransformerConfig, n_tokens: int, n_keys: float) -> tuple[float, float]:
    """(linear, attention) matmul FLOPs (multiply-add = 2) of all blocks' forward for `n_tokens` tokens that attend
    to `n_keys` keys on average."""
    attn_dim = cfg.n_heads * cfg.d_head
    mlp = (3 if cfg.gated_mlp else 2) * cfg.d_model * cfg.d_mlp
    linear = 2 * (3 * cfg.d_model * attn_dim + attn_dim * cfg.d_model + mlp)
    return cfg.n_layers * n_tokens * linear, cfg.n_layers * n_tokens * 2 * 2 * attn_dim * n_keys


def flop_floor(model: HookedTransformer, episode: Episode) -> dict:
    """The matmul FLOPs a comparison (no baselines) must compute.

    Recordings (forward only): the ICL prefix once, then each query's tokens against their keys, for ZS, ICL, GD
    and LCGD (GD and LCGD add x·ΔW_K and x·ΔW_V), and the label read-outs. Fits, per demonstration token:
    forward, and a backward that needs the frozen weights' input gradients (1x their forward), attention's two
    operands (2x) and the K/V deltas' weight and input gradients (2x); one vocabulary read-out (GD) or one per
    layer (LCGD), forward and backward."""
    cfg = model.cfg
    readout = 2 * cfg.d_model * cfg.d_vocab_out
    kv_delta = cfg.n_layers * 2 * 2 * cfg.d_model * cfg.n_heads * cfg.d_head
    prefix = len(episode.icl_prefix)
    records = sum(block_flops(cfg, prefix, (prefix + 1) / 2))
    for keys_before, delta in ((1, 0), (prefix, 0), (1, 1), (1, 1)):  # zs, icl, gd, lcgd
        for query in episode.queries:
            tokens = len(query) + len(episode.label_tokens[0]) - 1
            records += sum(block_flops(cfg, tokens, keys_before + (tokens + 1) / 2)) + delta * kv_delta * tokens
            records += readout * sum(map(len, episode.label_tokens))
    out = {"records": records}
    for method, readouts in (("gd", 1), ("lcgd", cfg.n_layers)):
        out[f"fit_{method}"] = 0.0
        for demo in episode.train_demos:
            t = len(demo) + 1
            linear, attention = block_flops(cfg, t, (t + 1) / 2)
            forward = linear + attention + kv_delta * t + readouts * readout * t
            backward = linear + 2 * attention + 2 * kv_delta * t + readouts * readout * t
            out[f"fit_{method}"] += forward + backward
    out["total"] = out["records"] + out["fit_gd"] + out["fit_lcgd"]
    return out
