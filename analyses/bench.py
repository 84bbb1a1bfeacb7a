"""Benchmark: the toolkit's whole `compare` against a naive pipeline written the reference's way.

    make bench                                               # everything below, written to runs/bench.json
    python analyses/bench.py --n-queries 872 --out runs/bench.json
    python analyses/bench.py --n-queries 64 --no-scaling --no-smollm2 --out /tmp/quick.json

Model: GPT-2-small-shaped with random weights (12 layers, d_model 768, 12 heads, vocabulary 50,257, context 1024);
episode: SST-2-shaped, real Rotten Tomatoes snippets (`rt-snippets`, SST-2's source) of at most 32 tokens with
their template, tokenised by SmolLM2's tokenizer: k = 32 demonstrations and queries of about 25 tokens.

(a) toolkit: `compare(..., baselines=())`: ZS, ICL, GD, LCGD, all records, metrics and per-head values.
(b) naive: one query at a time, the whole prompt through `run_with_cache` keeping the full cache; GD and LCGD as
    plain finetuning of a model copy (torch.optim.SGD; LCGD's per-layer losses written out block by block);
    metrics in Python loops. It is timed at `--naive-queries` queries (its fits do not depend on the number of
    queries, its recordings and metrics grow linearly with it) and extrapolated, labelled as such, beyond.
Both paths must agree on every number (accuracies, metric means, per-layer and per-head values): checked here.

Timing needs a quiet machine: the benchmark samples the CPU time of other processes and refuses to start when they
keep more than half a core busy (`--allow-busy` times anyway and prints the load beside the numbers).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import dataclasses
import gc
import json
import math
import os
import platform
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer, HookedTransformerConfig

from iclgd_lens import compare, load_task
from iclgd_lens.sources.devices import available_threads
from iclgd_lens.core.finetuning import fit
from iclgd_lens.core.episodes import Episode, build_episode
from iclgd_lens.files import write_text_atomic
from iclgd_lens.sources.devices import DTYPES
from iclgd_lens.sources import load_model
from iclgd_lens.sources.packaged_models import packaged_model_folder
from iclgd_lens.core.recording import record, record_offset
from iclgd_lens.sources.task import Task
from iclgd_lens.views.markdown import markdown_table

BENCH_FORMAT = "iclgd-lens bench 1"
BUSY_CORES = 0.5  # other processes' CPU use above which timing is refused (or flagged)
AGREEMENT = 1e-4  # largest allowed difference of any number between the two pipelines (fp32, end to end)
RECORDS_AGREEMENT = 1e-4  # ... of a recorded tensor, relative to its largest value
# ... of a GD or LCGD recording: the naive fit's W + ΔW in float32 drops ΔW's bits below W's resolution
FIT_RECORDS_AGREEMENT = 1e-3
METRIC_CODE_AGREEMENT = 1e-9  # ... of any number when both metric codes score the same records (float64)
SST2_EVAL_SIZE = 872
SCALING_K = (8, 16, 32)
SCALING_N = (64, 256, 872)


# ------------------------------------------------------------------------------------------------ the machine
class Monitor:
    """Samples, in a background thread, this process's resident memory (peak per `stage`) and the CPU time that
    other processes use (from /proc/stat less this process's own), so that a timing taken on a busy machine says so.
    """

    def __init__(self, interval_s: float = 0.05, load_every_s: float = 1.0) -> None:
        self.interval_s, self.load_every_s = interval_s, load_every_s
        self.peak_rss = 0
        self.others_cores: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Monitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @contextmanager
    def stage(self, name: str) -> Iterator[dict]:
        """Wall seconds and peak resident bytes of the block (CUDA: peak allocated bytes too), printed as it ends."""
        out: dict = {}
        release_free_memory()
        self.peak_rss = rss_bytes()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        yield out
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            out["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
        out["seconds"] = time.perf_counter() - start
        out["peak_rss_bytes"] = max(self.peak_rss, rss_bytes())
        print(f"bench: {name}: {out['seconds']:.1f} s, peak {gib(out['peak_rss_bytes'])}", file=sys.stderr, flush=True)

    def _run(self) -> None:
        last = (time.monotonic(), busy_jiffies(), own_jiffies())
        while not self._stop.wait(self.interval_s):
            self.peak_rss = max(self.peak_rss, rss_bytes())
            now = time.monotonic()
            if now - last[0] >= self.load_every_s:
                current = (now, busy_jiffies(), own_jiffies())
                self.others_cores.append(others_cores(last, current))
                last = current


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it otherwise), so that a stage's resident peak counts its
    own allocations and the live data, not what an earlier stage freed."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak may include memory freed earlier
        pass


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def busy_jiffies() -> int:
    """All CPUs' non-idle time since boot (user, nice, system, irq, softirq, steal), in clock ticks."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values[:3]) + sum(values[5:8])


def own_jiffies() -> int:
    """This process's CPU time (all its threads, user + system), in clock ticks."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def others_cores(before: tuple[float, int, int], after: tuple[float, int, int]) -> float:
    """Cores kept busy by other processes between two (time, busy, own) samples."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = after[0] - before[0]
    return max(0.0, ((after[1] - before[1]) - (after[2] - before[2])) / ticks / seconds)


def check_quiet(allow_busy: bool, seconds: float = 2.0) -> float:
    """Other processes' CPU use over `seconds`; refuses to go on above BUSY_CORES unless `allow_busy`."""
    before = (time.monotonic(), busy_jiffies(), own_jiffies())
    time.sleep(seconds)
    load = others_cores(before, (time.monotonic(), busy_jiffies(), own_jiffies()))
    if load > BUSY_CORES and not allow_busy:
        sys.exit(
            f"bench: other processes keep {load:.1f} cores busy: timings would measure them too. Wait until they "
            "finish, or pass --allow-busy to time anyway (the load is then printed beside the numbers)."
        )
    return load


# ------------------------------------------------------------------------------------------------ the workload
def sst2_shaped_task(tokenizer, max_tokens: int = 32) -> Task:
    """rt-snippets restricted to rows whose prompt (template included) has at most `max_tokens` tokens: SST-2's
    sentence length (about 25 tokens), so that k = 32 demonstrations fit GPT-2's 1024-token context."""
    task = load_task("rt-snippets")

    def short(rows):
        return tuple(e for e in rows if len(tokenizer(task.prompt(e))["input_ids"]) <= max_tokens)

    return Task(task.name + "-sst2-shaped", task.template, task.label_words, short(task.train), short(task.eval))


def gpt2_small_shaped(tokenizer, device: str, dtype: torch.dtype, args: argparse.Namespace) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=args.layers,
        d_model=args.d_model,
        n_heads=args.heads,
        d_head=args.d_model // args.heads,
        d_mlp=4 * args.d_model,
        n_ctx=args.n_ctx,
        d_vocab=max(args.vocab, len(tokenizer)),
        act_fn="gelu_new",
        normalization_type="LN",
        model_name="gpt2-small-shaped-random",
        seed=0,
        device=device,
        dtype=dtype,
    )
    return HookedTransformer(cfg, tokenizer).eval()


def parameter_bytes(model: HookedTransformer) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ------------------------------------------------------------------------------------------------ (b) naive
KV_WEIGHTS = ("attn.W_K", "attn.W_V")  # the toolkit's default groups, k and v
KV_BIASES = ("attn.b_K", "attn.b_V")  # trained only where the checkpoint has them (not all zero), as the toolkit does


def naive_finetune(model: HookedTransformer, episode: Episode, method: str, lr: float) -> HookedTransformer:
    """A finetuned copy of the model: SGD on K/V weights (and biases the checkpoint has), one epoch, batch size 1."""
    tuned = copy.deepcopy(model)
    # Grouped-query attention stores K/V as attn._W_K, attn._b_K (one per key-value head).
    by_name: dict[str, list[torch.nn.Parameter]] = {}
    for name, p in tuned.named_parameters():
        by_name.setdefault(name.split(".", 2)[-1].replace("._", "."), []).append(p)
    checkpoint_biases = [n for n in KV_BIASES if any(p.abs().max() > 0 for p in by_name.get(n, []))]
    trained = [p for n in (*KV_WEIGHTS, *checkpoint_biases) for p in by_name.get(n, [])]
    for p in tuned.parameters():
        p.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(trained, lr=lr)
    for demo in episode.train_demos:
        tokens = torch.tensor([[episode.bos, *demo]], device=model.cfg.device)
        loss = tuned(tokens, return_type="loss") if method == "gd" else naive_layer_causal_loss(tuned, tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return tuned.requires_grad_(False)


def naive_layer_causal_loss(model: HookedTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """LCGD's loss written out: each block reads its input detached, its output goes through the final norm and
    unembedding, and the per-layer next-token NLLs are summed."""
    resid, _, shortformer_pos_embed, attention_mask = model.input_to_embed(tokens)
    loss = 0.0
    for block in model.blocks:
        resid = block(resid.detach(), shortformer_pos_embed=shortformer_pos_embed, attention_mask=attention_mask)
        logits = model.unembed(model.ln_final(resid))
        loss = loss + F.cross_entropy(logits[0, :-1].float(), tokens[0, 1:])
    return loss


@torch.no_grad()
def naive_record(model: HookedTransformer, episode: Episode, prefix: Sequence[int]) -> list[dict]:
    """Per query, the whole prompt (prefix + query + first label) through run_with_cache with the full cache."""
    rows = []
    for query in episode.queries:
        at = len(prefix) + record_offset(query, episode.label_tokens, "prediction")
        tokens = torch.tensor([[*prefix, *query, *episode.label_tokens[0]]], device=model.cfg.device)
        logits, cache = model.run_with_cache(tokens)
        label_logprobs = []
        for c, label in enumerate(episode.label_tokens):
            if c > 0 and len(label) > 1:  # a label of several tokens gets its own prompt
                logits = model(torch.tensor([[*prefix, *query, *label]], device=model.cfg.device))
            logprobs = logits[0].float().log_softmax(-1)
            label_logprobs.append(sum(float(logprobs[at + j, t]) for j, t in enumerate(label)) / len(label))
        layers = range(model.cfg.n_layers)
        rows.append(
            {
                "attn_out": [cache[f"blocks.{l}.hook_attn_out"][0, at].double().cpu() for l in layers],
                "z": [cache[f"blocks.{l}.attn.hook_z"][0, at].double().cpu() for l in layers],
                "scores": [cache[f"blocks.{l}.attn.hook_attn_scores"][0, :, at, len(prefix) : at + 1].double().cpu()
                           for l in layers],
                "label_logprobs": label_logprobs,
                "pred": max(range(len(label_logprobs)), key=label_logprobs.__getitem__),
            }
        )  # fmt: skip
        del cache
    return rows


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """Exact cosine; NaN when either vector is zero (the toolkit's arithmetic)."""
    na, nb = float(a.norm()), float(b.norm())
    return float((a / na) @ (b / nb)) if na > 0 and nb > 0 else math.nan


def mean_defined(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def naive_scores(records: dict[str, list[dict]], labels: Sequence[int], W_O: torch.Tensor, seed: int) -> dict:
    """Every metric of result.json's "model" scores, per example, layer and head in Python loops."""
    zs, icl = records["zs"], records["icl"]
    n, n_layers, n_heads = len(zs), len(zs[0]["attn_out"]), zs[0]["z"][0].shape[0]
    W_O = W_O.double()
    random_update = torch.rand((n, n_layers, W_O.shape[-1]), generator=torch.Generator().manual_seed(seed),
                               dtype=torch.float64)  # fmt: skip  (the draw the toolkit makes: Dai's r ~ U[0, 1))

    def unit(v):
        return v / v.norm()

    def head_out(row, l, h):
        return row["z"][l][h] @ W_O[l, h]

    def layer_heads(fn) -> dict:
        """fn(i, l, h) -> value: the papers' reduction (heads, examples, layers) and the per-head means."""
        values = [[[fn(i, l, h) for h in range(n_heads)] for l in range(n_layers)] for i in range(n)]
        per_layer = [mean_defined([mean_defined(values[i][l]) for i in range(n)]) for l in range(n_layers)]
        per_head = [[mean_defined([values[i][l][h] for i in range(n)]) for h in range(n_heads)]
                    for l in range(n_layers)]  # fmt: skip
        return {"mean": mean_defined(per_layer), "per_layer": per_layer, "per_head": per_head}

    def layers_only(fn) -> dict:
        per_layer = [mean_defined([fn(i, l) for i in range(n)]) for l in range(n_layers)]
        return {"mean": mean_defined(per_layer), "per_layer": per_layer}

    accuracy = {s: sum(r["pred"] == y for r, y in zip(rows, labels)) / n for s, rows in records.items()}
    out: dict = {"accuracy": accuracy, "metrics": {}, "per_head": {}}
    for method in (m for m in records if m not in ("zs", "icl")):
        ft = records[method]
        metrics = {
            "simaou": layers_only(lambda i, l: cos(icl[i]["attn_out"][l] - zs[i]["attn_out"][l],
                                                   ft[i]["attn_out"][l] - zs[i]["attn_out"][l])),
            "simaou_norm": layers_only(lambda i, l: cos(unit(icl[i]["attn_out"][l]) - unit(zs[i]["attn_out"][l]),
                                                        unit(ft[i]["attn_out"][l]) - unit(zs[i]["attn_out"][l]))),
            "random_simaou": layers_only(lambda i, l: cos(unit(icl[i]["attn_out"][l]) - unit(zs[i]["attn_out"][l]),
                                                          random_update[i, l])),
            "simam_before": layer_heads(lambda i, l, h: cos(icl[i]["scores"][l][h], zs[i]["scores"][l][h])),
            "simam": layer_heads(lambda i, l, h: cos(icl[i]["scores"][l][h], ft[i]["scores"][l][h])),
            "simam_delta": layer_heads(lambda i, l, h: cos(icl[i]["scores"][l][h] - zs[i]["scores"][l][h],
                                                           ft[i]["scores"][l][h] - zs[i]["scores"][l][h])),
        }  # fmt: skip
        per_head = {
            "simaou": layer_heads(lambda i, l, h: cos(head_out(icl[i], l, h) - head_out(zs[i], l, h),
                                                      head_out(ft[i], l, h) - head_out(zs[i], l, h))),
            "simaou_norm": layer_heads(
                lambda i, l, h: cos(unit(head_out(icl[i], l, h)) - unit(head_out(zs[i], l, h)),
                                    unit(head_out(ft[i], l, h)) - unit(head_out(zs[i], l, h)))),
        }  # fmt: skip
        fixed = [i for i in range(n) if ft[i]["pred"] == labels[i] and zs[i]["pred"] != labels[i]]
        rec2ftp = 100.0 * sum(icl[i]["pred"] == labels[i] for i in fixed) / len(fixed) if fixed else math.nan
        out["metrics"][method] = {name: {"mean": v["mean"], "per_layer": v["per_layer"]} for name, v in metrics.items()}
        out["metrics"][method]["rec2ftp"] = rec2ftp
        out["per_head"][method] = {name: v["per_head"] for name, v in per_head.items()} | {
            name: metrics[name]["per_head"] for name in ("simam_before", "simam", "simam_delta")
        }
    if "gd" in records and "lcgd" in records:
        lcgd, gd = records["lcgd"], records["gd"]
        alpha = layer_heads(lambda i, l, h: cos(lcgd[i]["scores"][l][h] - zs[i]["scores"][l][h],
                                                gd[i]["scores"][l][h] - zs[i]["scores"][l][h]))  # fmt: skip
        out["metrics"]["alpha"] = {"mean": alpha["mean"], "per_layer": alpha["per_layer"]}
        out["per_head"]["alpha"] = alpha["per_head"]
    return out


def naive_compare(model: HookedTransformer, episode: Episode, lr: float, seed: int, monitor: Monitor) -> dict:
    """The naive pipeline, stage by stage: {"scores", "stages": {name: {seconds, peak_rss_bytes}}}."""
    stages, records = {}, {}
    for name, prefix in (("zs", episode.zs_prefix), ("icl", episode.icl_prefix)):
        with monitor.stage(f"naive record {name}") as stages[f"record {name}"]:
            records[name] = naive_record(model, episode, prefix)
    for method in ("gd", "lcgd"):
        with monitor.stage(f"naive fit {method}") as stages[f"fit {method}"]:
            tuned = naive_finetune(model, episode, method, lr)
        with monitor.stage(f"naive record {method}") as stages[f"record {method}"]:
            records[method] = naive_record(tuned, episode, episode.zs_prefix)
        del tuned
    with monitor.stage("naive metrics") as stages["metrics"]:
        scores = naive_scores(records, episode.labels, model.W_O.detach().float().cpu(), seed)
    return {"scores": scores, "records": records, "stages": stages}


def rows_of(record) -> list[dict]:
    """A toolkit Record in the naive pipeline's layout (per query: per-layer lists), to score it in Python loops."""
    rows = []
    for i in range(len(record.pred)):
        n = int(record.query_len[i])
        rows.append({"attn_out": list(record.attn_out[i].double()), "z": list(record.z[i].double()),
                     "scores": list(record.scores[i, :, :, :n].double()),
                     "label_logprobs": record.label_logprobs[i].tolist(), "pred": int(record.pred[i])})  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------------ agreement
def flatten(scores: dict, prefix: str = "") -> dict[str, float]:
    """Every number of a scores dict by its path, e.g. 'metrics/gd/simaou/per_layer/3'."""
    out = {}
    items = scores.items() if isinstance(scores, dict) else enumerate(scores)
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, (dict, list)):
            out |= flatten(value, path + "/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[path] = float(value)
    return out


def agreement(naive: dict, toolkit: dict, tolerance: float = AGREEMENT) -> dict:
    """The largest difference between the naive numbers and the toolkit's at the same paths (NaN must meet NaN)."""
    ours = flatten({key: toolkit[key] for key in ("accuracy", "metrics", "per_head")})
    theirs = flatten(naive)
    missing = sorted(set(theirs) - set(ours))
    if missing:
        raise SystemExit(f"bench: the toolkit's scores lack {missing[:5]}")
    worst, where, nan_mismatch = 0.0, None, []
    for path, value in theirs.items():
        other = ours[path]
        if math.isnan(value) or math.isnan(other):
            if math.isnan(value) != math.isnan(other):
                nan_mismatch.append(path)
            continue
        if abs(value - other) >= worst:
            worst, where = abs(value - other), path
    return {"compared": len(theirs), "max_abs_diff": worst, "at": where, "nan_mismatch": nan_mismatch,
            "tolerance": tolerance, "agree": worst <= tolerance and not nan_mismatch}  # fmt: skip


def records_agreement(naive: dict[str, list[dict]], toolkit: dict) -> dict:
    """Per setting, the largest difference between the two pipelines' recorded tensors relative to the tensor's
    largest value: the forward passes (whole prompt vs cached prefix and batches) agree to float32 rounding; the
    fitted settings also carry the naive copy's rounding of W + ΔW (FIT_RECORDS_AGREEMENT)."""
    out: dict = {"settings": {}}
    for setting, rows in naive.items():
        record, worst, where = toolkit[setting], 0.0, None
        for i, row in enumerate(rows):
            pairs = {
                "attn_out": (record.attn_out[i], torch.stack(row["attn_out"])),
                "z": (record.z[i], torch.stack(row["z"])),
                "scores": (record.scores[i, :, :, : int(record.query_len[i])], torch.stack(row["scores"])),
                "label_logprobs": (record.label_logprobs[i], torch.tensor(row["label_logprobs"])),
            }
            for name, (ours, theirs) in pairs.items():
                ours, theirs = ours.double(), theirs.double()
                relative = float((ours - theirs).abs().max() / ours.abs().max())
                if relative >= worst:
                    worst, where = relative, f"{name}/query {i}"
        tolerance = RECORDS_AGREEMENT if setting in ("zs", "icl") else FIT_RECORDS_AGREEMENT
        out["settings"][setting] = {"max_relative_diff": worst, "at": where, "tolerance": tolerance,
                                    "agree": worst <= tolerance}  # fmt: skip
    out["agree"] = all(v["agree"] for v in out["settings"].values())
    return out


def all_agreements(naive: dict, result, strict: bool) -> dict:
    """Three checks. `records`: the recorded tensors agree to float32 rounding; `metric_code`: the naive metric
    loops score the toolkit's own records exactly as the toolkit does; `metrics`: every number end to end (with
    `strict`, required within AGREEMENT; otherwise reported: a similarity of an update near float32 resolution
    turns the two pipelines' rounding into differences larger than the tolerance)."""
    toolkit_rows = {setting: rows_of(record) for setting, record in result.records.items()}
    out = {
        "records": records_agreement(naive["records"], result.records),
        "metric_code": agreement(naive_scores(toolkit_rows, result.labels.tolist(), result.W_O["model"], 0),
                                 result.scores["model"].to_json(), METRIC_CODE_AGREEMENT),  # fmt: skip
        "metrics": agreement(naive["scores"], result.scores["model"].to_json()),
        "metrics_required": strict,
    }
    out["agree"] = out["records"]["agree"] and out["metric_code"]["agree"] and (out["metrics"]["agree"] or not strict)
    return out


# ------------------------------------------------------------------------------------------------ (a) toolkit
def toolkit_compare(model, task, k: int, n: int, lr: float, batch_size: int, monitor: Monitor,
                    keep_result: bool = False) -> dict:  # fmt: skip
    with monitor.stage(f"toolkit compare k={k} n={n}") as stage:
        result = compare(model, task, k=k, seed=0, lr=lr, baselines=(), n_eval=n, batch_size=batch_size,
                         progress=False)  # fmt: skip
    out = stage | {"k": k, "n_queries": n, "effective_k": result.config["effective_k"],
                   "prefix_tokens": len(result.episode.icl_prefix),
                   "query_tokens": sum(map(len, result.episode.queries)) / n}  # fmt: skip
    if keep_result:  # for the agreement checks; the caller drops it before later timings
        out["result"] = result
    return out


def fit_times(model, episode: Episode, lr: float, monitor: Monitor) -> dict:
    """GD's and LCGD's fits alone (the toolkit's `fit`), seconds per demonstration step."""
    out = {}
    for method in ("gd", "lcgd"):
        with monitor.stage(f"toolkit fit {method}") as out[method]:
            fit(model, episode.train_demos, episode.bos, method, lr)
        out[method]["per_step"] = out[method]["seconds"] / len(episode.train_demos)
    out["lcgd_over_gd"] = out["lcgd"]["seconds"] / out["gd"]["seconds"]
    return out


def head_to_head(model, task, args, monitor: Monitor, lr: float, runs: dict, strict: bool = True) -> dict:
    """Toolkit vs naive at `--naive-queries` (agreement checked there), the toolkit also at `--n-queries`; the
    naive time beyond what it was timed on is its fits plus its per-query stages scaled linearly (labelled)."""
    n, n_naive = args.n_queries, min(args.naive_queries, args.n_queries)
    # The toolkit first: its peak memory is measured before the naive pipeline's model copies and full caches.
    for queries in dict.fromkeys((n, n_naive)):  # once each, in this order
        runs[args.k, queries] = toolkit_compare(model, task, args.k, queries, lr, args.batch_size, monitor,
                                                keep_result=queries == n_naive)  # fmt: skip
    episode = build_episode(task, model.tokenizer, model.cfg.n_ctx, args.k, 0, n_eval=n_naive)
    naive = naive_compare(model, episode, lr, 0, monitor)
    agree = all_agreements(naive, runs[args.k, n_naive].pop("result"), strict)
    stages = naive.pop("stages")
    del naive  # its records: later stages' peak memory counts their own
    fixed = stages["fit gd"]["seconds"] + stages["fit lcgd"]["seconds"]
    per_query = sum(s["seconds"] for s in stages.values()) - fixed
    naive_summary = {
        "n_queries": n,
        "seconds": fixed + per_query * n / n_naive,
        "extrapolated_from": n_naive if n != n_naive else None,
        "seconds_measured": fixed + per_query,
        "peak_rss_bytes": max(s["peak_rss_bytes"] for s in stages.values()),
        "stages": stages,
    }
    toolkit = dict(runs[args.k, n])
    full_episode = build_episode(task, model.tokenizer, model.cfg.n_ctx, args.k, 0, n_eval=n)
    toolkit["flops"] = flop_floor(model, full_episode)
    toolkit["flop_floor_s"] = toolkit["flops"]["total"] / args.matmul_rate
    return {
        "k": args.k,
        "n_queries": n,
        "toolkit": toolkit,
        "naive": naive_summary,
        "speedup": naive_summary["seconds"] / toolkit["seconds"],
        "speedup_measured": naive_summary["seconds_measured"] / runs[args.k, n_naive]["seconds"],
        "agreement": agree,
    }


def scaling(model, task, args, monitor: Monitor, runs: dict) -> list[dict]:
    """The toolkit's `compare` for k x n_queries (runs already timed are reused)."""
    for k in SCALING_K:
        for n in SCALING_N:
            if (k, n) not in runs:
                runs[k, n] = toolkit_compare(model, task, k, n, args.lr, args.batch_size, monitor)
    return [runs[k, n] for k in SCALING_K for n in SCALING_N]


def recording_cost(model, task, args, monitor: Monitor, n: int = 64, n_naive: int = 8) -> list[dict]:
    """Seconds per query of the ZS and ICL recordings alone, toolkit and naive, for each k: what grows with the
    prompt's length and what with the query's."""
    rows = []
    for k in SCALING_K:
        episode = build_episode(task, model.tokenizer, model.cfg.n_ctx, k, 0, n_eval=n)
        row = {"k": k, "prefix_tokens": len(episode.icl_prefix), "n_queries": n, "naive_n_queries": n_naive}
        for name, prefix in (("zs", episode.zs_prefix), ("icl", episode.icl_prefix)):
            with monitor.stage(f"toolkit record {name} k={k}") as stage:
                record(model, episode.queries, episode.label_tokens, prefix, batch_size=args.batch_size,
                       pad_token=episode.bos)  # fmt: skip
            row[f"toolkit_{name}_s_per_query"] = stage["seconds"] / n
        few = dataclasses.replace(episode, queries=episode.queries[:n_naive])
        with monitor.stage(f"naive record icl k={k}") as stage:
            naive_record(model, few, few.icl_prefix)
        row["naive_icl_s_per_query"] = stage["seconds"] / n_naive
        rows.append(row)
    return rows


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


def block_flops(cfg, n_tokens: int, n_keys: float) -> tuple[float, float]:
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


# ------------------------------------------------------------------------------------------------ output
def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def headline_table(run: dict) -> str:
    n, tk, naive = run["n_queries"], run["toolkit"], run["naive"]
    measured = naive["extrapolated_from"] is None
    rows = [
        ["toolkit `compare`", str(n), f"{tk['seconds']:.1f}", f"{n / tk['seconds']:.2f}", gib(tk["peak_rss_bytes"]),
         ""],
        ["naive" + ("" if measured else f" (extrapolated from {naive['extrapolated_from']} queries)"), str(n),
         f"{naive['seconds']:.1f}", f"{n / naive['seconds']:.2f}",
         gib(naive["peak_rss_bytes"]) + ("" if measured else f" (at {naive['extrapolated_from']})"),
         f"naive / toolkit = {run['speedup']:.1f}x"],
        ["FLOP floor (matmul FLOPs / measured matmul rate)", str(n), f"{tk['flop_floor_s']:.1f}", "", "",
         f"floor / toolkit = {tk['flop_floor_s'] / tk['seconds']:.0%}"],
    ]  # fmt: skip
    return markdown_table(["pipeline", "queries", "wall s", "queries/s", "peak memory", "ratio"], rows)


def stage_table(stages: dict) -> str:
    return markdown_table(["naive stage", "wall s", "peak memory"],
                 [[name, f"{s['seconds']:.1f}", gib(s["peak_rss_bytes"])] for name, s in stages.items()])  # fmt: skip


def recording_cost_table(rows: list[dict]) -> str:
    return markdown_table(
        ["k", "prefix tokens", "toolkit ZS s/query", "toolkit ICL s/query", "ICL / ZS", "naive ICL s/query",
         "naive / toolkit ICL"],
        [[str(r["k"]), str(r["prefix_tokens"]), f"{r['toolkit_zs_s_per_query']:.3f}",
          f"{r['toolkit_icl_s_per_query']:.3f}",
          f"{r['toolkit_icl_s_per_query'] / r['toolkit_zs_s_per_query']:.1f}", f"{r['naive_icl_s_per_query']:.3f}",
          f"{r['naive_icl_s_per_query'] / r['toolkit_icl_s_per_query']:.1f}x"] for r in rows],
    )  # fmt: skip


def scaling_table(rows: list[dict]) -> str:
    return markdown_table(
        ["k", "prefix tokens", "queries", "query tokens", "wall s", "queries/s", "peak memory"],
        [[str(r["k"]), str(r["prefix_tokens"]), str(r["n_queries"]), f"{r['query_tokens']:.1f}", f"{r['seconds']:.1f}",
          f"{r['n_queries'] / r['seconds']:.2f}", gib(r["peak_rss_bytes"])] for r in rows],
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n-queries", type=int, default=SST2_EVAL_SIZE, help="queries of the headline comparison")
    p.add_argument("--k", type=int, default=32, help="demonstrations")
    p.add_argument("--naive-queries", type=int, default=64, help="queries the naive pipeline is timed on")
    p.add_argument("--lr", type=float, default=1e-2, help="GD/LCGD learning rate (random weights: a visible update)")
    p.add_argument("--batch-size", type=int, default=8, help="the toolkit's query batch size")
    p.add_argument("--threads", type=int, default=available_threads(), help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--no-scaling", action="store_true", help="skip the k x n_queries scaling table")
    p.add_argument("--no-smollm2", action="store_true", help="skip the SmolLM2-135M run")
    p.add_argument("--allow-busy", action="store_true", help="time even when other processes use the CPU")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write (replaced atomically)")
    shape = p.add_argument_group("model shape (defaults: GPT-2 small)")
    shape.add_argument("--layers", type=int, default=12)
    shape.add_argument("--d-model", type=int, default=768)
    shape.add_argument("--heads", type=int, default=12)
    shape.add_argument("--vocab", type=int, default=50257)
    shape.add_argument("--n-ctx", type=int, default=1024)
    args = p.parse_args(argv)
    for name in ("n_queries", "k", "naive_queries", "threads", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.out.exists() and not _is_bench_file(args.out):
        p.error(f"{args.out} exists and was not written by this benchmark; choose another --out")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no GPU")
    return args


def _is_bench_file(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("format") == BENCH_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    load = check_quiet(args.allow_busy)
    smollm2_folder, _ = packaged_model_folder("smollm2-135m-q4_1")  # its tokenizer (and model) work offline
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    task = sst2_shaped_task(tokenizer)
    model = gpt2_small_shaped(tokenizer, args.device, dtype, args)
    report: dict = {
        "format": BENCH_FORMAT,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": args.threads, "device": args.device, "dtype": args.dtype,
                    "torch": torch.__version__, "others_cores_before": load},
        "model_bytes": parameter_bytes(model),
    }  # fmt: skip
    args.matmul_rate = report["machine"]["matmul_flops_per_s"] = matmul_rate(args.device, dtype)
    print(f"bench: {args.threads} threads, {args.device} {args.dtype}; other processes used {load:.2f} cores before; "
          f"matmul rate {args.matmul_rate / 1e9:.0f} GFLOP/s")  # fmt: skip
    runs: dict = {}
    with Monitor() as monitor:
        report["gpt2_small"] = head_to_head(model, task, args, monitor, args.lr, runs)
        report["speedup"] = report["gpt2_small"]["speedup"]
        episode = build_episode(task, tokenizer, model.cfg.n_ctx, args.k, 0, n_eval=1)
        report["gpt2_small"]["fits"] = fit_times(model, episode, args.lr, monitor)
        if not args.no_scaling:
            report["scaling"] = scaling(model, task, args, monitor, runs)
            report["recording_cost"] = recording_cost(model, task, args, monitor)
        if not args.no_smollm2:
            report["smollm2"] = smollm2_run(smollm2_folder, task, args, monitor)
    report["machine"]["others_cores_max"] = max([load, *monitor.others_cores])
    busy = report["machine"]["others_cores_max"] > BUSY_CORES
    report["warning"] = (f"other processes used up to {report['machine']['others_cores_max']:.1f} cores while "
                         "timing: these numbers measure them too") if busy else None  # fmt: skip
    print_report(report)
    write_text_atomic(args.out, json.dumps(report, indent=1) + "\n")
    print(f"bench: wrote {args.out}")
    failed = [name for name in ("gpt2_small", "smollm2") if name in report and not report[name]["agreement"]["agree"]]
    if failed:
        sys.exit(f"bench: the toolkit and the naive pipeline disagree on {failed}: see 'agreement' in {args.out}")
    return report


SMOLLM2_LR = 3e-3  # the papers' MR lr, as `make run` uses on rt-snippets


def smollm2_run(folder: Path, task: Task, args, monitor: Monitor) -> dict:
    """The same head-to-head on SmolLM2-135M (real weights), at --naive-queries queries."""
    model = load_model(str(folder), device=args.device, dtype=args.dtype)
    smaller = argparse.Namespace(**{**vars(args), "n_queries": min(args.naive_queries, args.n_queries)})
    out = head_to_head(model, task, smaller, monitor, SMOLLM2_LR, {}, strict=False)
    out["model_bytes"] = parameter_bytes(model)
    episode = build_episode(task, model.tokenizer, model.cfg.n_ctx, args.k, 0, n_eval=1)
    out["fits"] = fit_times(model, episode, SMOLLM2_LR, monitor)
    return out


def agreement_lines(agree: dict) -> str:
    code, metrics = agree["metric_code"], agree["metrics"]

    def verdict(check: dict) -> str:
        return "agree" if check["agree"] else "DISAGREE"

    required = "required" if agree["metrics_required"] else "reported, not required: see docs/performance.md"
    records = ", ".join(f"{setting} {r['max_relative_diff']:.1e} ({r['at']}, tolerance {r['tolerance']:g})"
                        for setting, r in agree["records"]["settings"].items())  # fmt: skip
    return "\n".join([
        f"agreement of the recorded tensors, largest relative difference: {records}: {verdict(agree['records'])}",
        f"agreement of the metric code on the same records: {code['compared']} numbers, largest difference "
        f"{code['max_abs_diff']:.1e}: {verdict(code)} (tolerance {code['tolerance']:g})",
        f"agreement of every number end to end: {metrics['compared']} numbers, largest difference "
        f"{metrics['max_abs_diff']:.1e} (at {metrics['at']}), NaN mismatches {len(metrics['nan_mismatch'])}: "
        f"{verdict(metrics)} (tolerance {metrics['tolerance']:g}; {required})",
    ])  # fmt: skip


def print_report(report: dict) -> None:
    machine = report["machine"]
    print(f"\nmachine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} torch threads, "
          f"{machine['device']} {machine['dtype']}, torch {machine['torch']}")  # fmt: skip
    if report["warning"]:
        print(f"WARNING: {report['warning']}")
    for name, title in (("gpt2_small", "GPT-2-small-shaped, random weights"), ("smollm2", "SmolLM2-135M")):
        if name not in report:
            continue
        run = report[name]
        tk = run["toolkit"]
        print(f"\n## {title}: k = {run['k']} (effective {tk['effective_k']}, ICL prefix {tk['prefix_tokens']} "
              f"tokens), queries of {tk['query_tokens']:.1f} tokens on average\n")  # fmt: skip
        print(headline_table(run))
        print("\n" + agreement_lines(run["agreement"]))
        print(f"measured head-to-head at {run['naive']['extrapolated_from'] or run['n_queries']} queries: "
              f"{run['speedup_measured']:.1f}x\n")  # fmt: skip
        print(stage_table(run["naive"]["stages"]))
        fits = run["fits"]
        print(f"\ntoolkit fits: GD {fits['gd']['per_step']:.3f} s/step, LCGD {fits['lcgd']['per_step']:.3f} s/step "
              f"(LCGD / GD = {fits['lcgd_over_gd']:.2f})")  # fmt: skip
    if "scaling" in report:
        print("\n## toolkit `compare` scaling (GPT-2-small-shaped)\n")
        print(scaling_table(report["scaling"]))
        print("\n## recording cost per query against the prompt's length (GPT-2-small-shaped)\n")
        print(recording_cost_table(report["recording_cost"]))
    print(f"\nspeedup (naive / toolkit, {report['gpt2_small']['n_queries']} queries): {report['speedup']:.1f}x")


if __name__ == "__main__":
    main()
