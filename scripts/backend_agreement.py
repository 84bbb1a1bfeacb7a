"""The same comparison on TransformerLens 3 (HookedTransformer) and 4 (TransformerBridge), and how far apart they are.

    python scripts/backend_agreement.py models tests/bridge/reference          # tiny checkpoints (once)
    python scripts/backend_agreement.py run tests/bridge/reference/gpt2/model OUT   # compare, in this environment
    python scripts/backend_agreement.py run smollm2-135m-q4_1 OUT --task rt-snippets --k 16 --n-eval 64 --lr 3e-3
    python scripts/backend_agreement.py diff REFERENCE_RESULT OTHER_RESULT        # the table of differences
    python scripts/backend_agreement.py kendall MODEL RESULT OUT.npz [--reference REFERENCE.npz]
    python scripts/backend_agreement.py attribution MODEL RESULT OUT.csv [--reference REFERENCE.csv]
    python scripts/backend_agreement.py lenses MODEL RESULT OUT.npz [--reference REFERENCE.npz]
    python scripts/backend_agreement.py function_vectors MODEL RESULT OUT.npz [--reference REFERENCE.npz]

`run` is `compare` with the settings below (the toy task of the tests unless --task names one) and no baselines
(their draws differ between the backends: they agree in distribution, not value).
`kendall` saves the two sides Kendall's tau ranks (ICL's attention scores and the finetuning's q·q', before the
softmax; analysis.heads.kendall.kendall_scores) for GD's refit and for no finetuning, and with --reference prints
how far
they are from another backend's. Tau itself is a rank statistic: items whose scores lie closer than the backends'
difference can swap order, so tau is compared through its inputs.
`attribution` saves the per-head attribution table (atp+verify, the 3 top heads verified exactly) and with --reference
prints its largest absolute difference from another backend's over every number of every row.
`lenses` saves every lens measure of the model (analysis.lenses.lens_values: per query and layer) and with
--reference prints the largest difference, relative to the measure's largest magnitude; `exact_error` (the implicit
update's own rounding, about 1e-7 on either backend) is not compared but must stay below LENS_EXACT on this one.
`function_vectors` saves every head's average indirect effect, the mean z it patches in and a 3-head function vector
(analysis.heads.function_vectors), and with --reference prints the largest difference (the effects, differences of
probabilities, absolutely; the rest relative to its largest magnitude).
`diff` prints, per kind, the largest difference: records relative to the largest magnitude of the same tensor, deltas
relative to the largest magnitude of the method's whole delta (a key bias's gradient is zero in exact arithmetic,
so its delta is rounding on either backend), every number of result.json (metrics, accuracies, counts) absolutely.
Numbers that measure rounding are left out and counted: a similarity of updates in a layer where the reference
result flags them as below float resolution (result.json "resolution": ICL's score updates in layer 0 of a rotary
model are zero in exact arithmetic, since a query's own tokens sit at the same relative positions with or without
the demonstrations), and result.json's "resolution" shares themselves, which count values at rounding level. It
exits non-zero when a difference is above the tolerances the toolkit promises (TOLERANCES). docs/architecture.md,
"Backends",
holds the measured table; tests/bridge checks it on every run of `make test-tl4`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

SETTINGS = dict(
    k=6, n_eval=12, lr=0.05, lr_lcgd="gd", baselines=(), seed=0
)  # what `run` compares on the toy task (LCGD
# at GD's lr, as the committed references were computed)
TOLERANCES = {
    "records": 1e-4,
    "metrics": 1e-4,
    "deltas": 1e-5,
    "kendall scores": 1e-4,
    "attribution": 1e-4,
    "lenses": 1e-4,
    "function vectors": 1e-4,
}  # relative, absolute, relative, relative, absolute, relative; function vectors: effects absolute, the rest relative
LENS_EXACT = 1e-5  # the implicit update reproduces the block to float32 rounding
ARCHITECTURES = ("gpt2", "llama-gqa", "neox")  # the tiny random checkpoints (`models`), on the tests' toy task
BUNDLED_TASKS = {"tiny-icl-neox": "synth-sst2"}  # the bundled models both backends load, each on a task it learned
READS = {"scores": ("simam_delta",), "attn_out": ("simaou", "simaou_norm", "random_simaou")}  # updates compared


def tiny_checkpoint(architecture: str, vocab_size: int):
    """A random 2-layer Hugging Face model (seed 0), every parameter perturbed so that biases and norms matter."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig

    configs = {
        "gpt2": lambda: GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=vocab_size, n_positions=256),
        "llama-gqa": lambda: LlamaConfig(
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=48,
            vocab_size=vocab_size,
            max_position_embeddings=256,
        ),
        "neox": lambda: GPTNeoXConfig(
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=4,
            intermediate_size=64,
            rotary_pct=0.5,
            vocab_size=vocab_size,
            max_position_embeddings=256,
        ),
    }
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(configs[architecture]())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def write_models(root: Path) -> None:
    from tests.helpers import make_tokenizer

    for architecture in ARCHITECTURES:
        folder = root / architecture / "model"
        tiny_checkpoint(architecture, len(make_tokenizer())).save_pretrained(folder)
        make_tokenizer().save_pretrained(folder)


def run(model: str | Path, out: Path, task: str | None = None, **settings) -> None:
    """`compare` on `model` (a folder or a toolkit model name) and `task` (default: the tests' toy task), with
    SETTINGS unless `settings` replace them."""
    from iclgd_lens import compare, load_model, load_task
    from tests.helpers import toy_task

    chosen = toy_task() if task is None else load_task(task)
    compare(load_model(model, device="cpu"), chosen, out=out, progress=False, **(SETTINGS | settings))


def kendall(model: str | Path, result: Path, out: Path, n_queries: int = 12) -> None:
    """Kendall's inputs on `result` (a folder `run` wrote) for GD's refit and for no finetuning, saved to `out`."""
    import numpy as np

    from iclgd_lens import Result, load_model
    from iclgd_lens.analysis.heads.kendall import kendall_scores

    loaded, saved = load_model(model, device="cpu"), Result.load(result)
    arrays = {}
    for subject, finetune in (("gd", True), ("zero_delta", False)):
        icl, ft, _ = kendall_scores(loaded, saved, "gd", min(n_queries, len(saved.episode.queries)), finetune)
        arrays |= {f"{subject} icl": icl, f"{subject} ft": ft}
    np.savez(out, **arrays)


def array_difference(reference: Path, other: Path) -> tuple[str, float]:
    """The array of two npz files (`kendall`) that differs most, relative to its largest magnitude, and by how
    much."""
    import numpy as np

    a, b = np.load(reference), np.load(other)
    return max(
        ((name, _relative(torch.from_numpy(a[name]), torch.from_numpy(b[name]))) for name in a.files),
        key=lambda pair: pair[1],
    )


def attribution(model: str | Path, result: Path, out: Path) -> None:
    """The per-head attribution of `result` (atp+verify, 3 heads verified), saved as a csv."""
    from iclgd_lens import Result, load_model
    from iclgd_lens.analysis.heads.attribution import attribution_table

    table, _ = attribution_table(load_model(model, device="cpu"), Result.load(result), verify_top=3)
    table.to_csv(out, index=False)


def attribution_difference(reference: Path, other: Path) -> tuple[str, float]:
    """The number of two `attribution` tables (same rows, matched by method, layer and head) that differs most, and
    by how much; a NaN on one side only counts as infinitely far."""
    import pandas as pd

    key = ["method", "layer", "head"]
    a, b = pd.read_csv(reference), pd.read_csv(other)
    if len(a) != len(b):
        return "rows", math.inf
    both = a.merge(b, on=key, suffixes=("", " other"), how="outer")
    worst = ("", 0.0)
    for column in a.columns.drop(key):
        for (method, layer, head), x, y in zip(
            both[key].itertuples(index=False), both[column], both[f"{column} other"]
        ):
            diff = 0.0 if math.isnan(x) and math.isnan(y) else abs(x - y)
            if not diff <= worst[1]:
                worst = (f"{method} layer {layer} head {head} {column}", math.inf if math.isnan(diff) else diff)
    return worst


def function_vectors(model: str | Path, result: Path, out: Path) -> None:
    """Function vectors on `result` (the run's shuffled labels as the corruption): every head's average indirect
    effect, the mean z it patches in, and the vector of the 3 heads of highest effect, saved to `out`."""
    import numpy as np

    from iclgd_lens import Result, load_model
    from iclgd_lens.analysis.heads.function_vectors import function_vector, indirect_effects

    loaded, saved = load_model(model, device="cpu"), Result.load(result)
    effects, mean_z = indirect_effects(loaded, saved.episode, saved.config["seed"], batch_size=4)
    vector, _ = function_vector(loaded, effects, mean_z, n_heads=3)
    np.savez(out, effects=effects.numpy(), mean_z=mean_z.numpy(), vector=vector.numpy())


def function_vector_difference(reference: Path, other: Path) -> tuple[str, float]:
    """The array of two `function_vectors` files that differs most, and by how much: the effects absolutely (they are
    differences of probabilities, about 1e-3 on the tiny random models, so relative to their largest they measure
    float32 rounding), the mean z and the vector relative to their largest magnitude."""
    import numpy as np

    a, b = np.load(reference), np.load(other)
    effects = float(np.abs(a["effects"] - b["effects"]).max())
    relative = [
        (name, _relative(torch.from_numpy(a[name]), torch.from_numpy(b[name]))) for name in ("mean_z", "vector")
    ]
    return max([("effects", effects), *relative], key=lambda pair: pair[1])


def lenses(model: str | Path, result: Path, out: Path) -> None:
    """Every lens measure of the model on `result` (no baselines), saved as an npz."""
    import numpy as np

    from iclgd_lens import Result, load_model
    from iclgd_lens.analysis.lenses.values import lens_values

    values = lens_values(load_model(model, device="cpu"), Result.load(result), baselines=[])
    np.savez(out, **values["model"])


def lens_difference(reference: Path, other: Path) -> tuple[str, float]:
    """The lens measure of two `lenses` files that differs most (relative to its largest magnitude), and by how much;
    `exact_error` counts only when above LENS_EXACT in `other`."""
    import numpy as np

    a, b = np.load(reference), np.load(other)
    worst = ("", 0.0)
    for name in a.files:
        if name == "exact_error":
            diff = 0.0 if np.nanmax(b[name]) <= LENS_EXACT else math.inf
        else:
            diff = _relative(torch.from_numpy(a[name]).nan_to_num(), torch.from_numpy(b[name]).nan_to_num())
            diff = diff if np.array_equal(np.isnan(a[name]), np.isnan(b[name])) else math.inf
        if not diff <= worst[1]:
            worst = (name, diff)
    return worst


# The analyses that read a saved result: command -> (write its reading of a result, the largest difference between
# two readings, its TOLERANCES key, the file name of the TransformerLens 3 reading committed beside each tiny result).
READINGS = {
    "kendall": (kendall, array_difference, "kendall scores", "kendall-scores.npz"),
    "function_vectors": (function_vectors, function_vector_difference, "function vectors", "function-vectors.npz"),
    "attribution": (attribution, attribution_difference, "attribution", "attribution.csv"),
    "lenses": (lenses, lens_difference, "lenses", "lenses.npz"),
}


def differences(reference: Path, other: Path) -> Iterator[tuple[str, str, float]]:
    """(kind, quantity, difference) for every record tensor, delta and number the two result folders hold; kind
    "rounding" for a number left out (difference NaN)."""
    from iclgd_lens import Result

    a, b = Result.load(reference), Result.load(other)
    for setting in a.records:
        for name, x in a.records[setting].tensors().items():
            if x.is_floating_point():
                yield "records", f"{setting} {name}", _relative(x, b.records[setting].tensors()[name])
    for method in a.deltas:
        scale = max(float(t.double().abs().max()) for t in a.deltas[method].tensors.values())
        for name, x in a.deltas[method].tensors.items():
            change = float((x.double() - b.deltas[method].tensors[name].double()).abs().max())
            yield "deltas", f"{method} {name}", change / max(scale, 1e-30)
    ours, theirs = a.scores["model"].to_json(), b.scores["model"].to_json()
    rounding = _rounding(ours["resolution"])
    for path, x in _numbers(ours):
        quantity = "/".join(map(str, path))
        if _measures_rounding(path, rounding):
            yield "rounding", quantity, math.nan
            continue
        y = _lookup(theirs, path)
        yield "metrics", quantity, 0.0 if math.isnan(x) and math.isnan(y) else abs(x - y)


def _rounding(resolution: dict) -> dict[str, set[int]]:
    """Per method, the layers where ICL's or the method's updates of a quantity are (partly) below resolution,
    keyed by the metrics comparing those updates."""
    flagged: dict[str, set[int]] = {}
    for setting, shares in resolution.items():
        if not isinstance(shares, dict):
            continue
        for quantity, metrics in READS.items():
            layers = {layer for layer, share in enumerate(shares.get(quantity, [])) if share > 0}
            for metric in metrics:
                flagged.setdefault(f"{setting}/{metric}", set()).update(layers)
    return flagged


def _measures_rounding(path: tuple, rounding: dict[str, set[int]]) -> bool:
    """metrics/<method>/<metric>/(mean|defined|per_layer/<l>) or per_head/<method>/<metric>/<l>/<h>; and the
    resolution diagnostic itself (shares of updates at rounding level)."""
    if path[0] == "resolution":
        return True
    if path[0] not in ("metrics", "per_head") or len(path) < 4:
        return False
    method, metric = path[1], path[2]
    layers = rounding.get(f"icl/{metric}", set()) | rounding.get(f"{method}/{metric}", set())
    if path[0] == "per_head":
        return path[3] in layers
    return bool(layers) and (path[3] != "per_layer" or path[4] in layers)


def _relative(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double(), y.double()
    return float((x - y).abs().max() / x.abs().max().clamp(min=1e-30))


def _numbers(tree, path=()) -> Iterator[tuple[tuple, float]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _numbers(value, (*path, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _numbers(value, (*path, index))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, float(tree)


def _lookup(tree, path: tuple):
    for key in path:
        tree = tree[key]
    return float(tree) if tree is not None else math.nan


def largest(reference: Path, other: Path) -> dict[str, tuple[str, float]]:
    """Per kind, the quantity that differs most and by how much ("rounding": how many numbers were left out)."""
    worst: dict[str, tuple[str, float]] = {}
    left_out = 0
    for kind, quantity, diff in differences(reference, other):
        if kind == "rounding":
            left_out += 1
        elif kind not in worst or not diff <= worst[kind][1]:
            worst[kind] = (quantity, diff)
    return worst | {"rounding": (f"{left_out} numbers measure rounding, left out", math.nan)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models").add_argument("root", type=Path)
    run_parser = sub.add_parser("run")
    run_parser.add_argument("model", help="a model folder or name (load_model)")
    run_parser.add_argument("out", type=Path)
    run_parser.add_argument("--task", default=None, help="a task name (default: the tests' toy task)")
    from iclgd_lens import separator_text  # '\n' on the command line: a newline, as compare reads it

    for option, kind in (("--k", int), ("--n-eval", int), ("--lr", float), ("--separator", separator_text)):
        run_parser.add_argument(option, type=kind, default=None)
    for command in READINGS:
        reading_parser = sub.add_parser(command)
        for argument in ("model", "result", "out"):
            reading_parser.add_argument(argument)
        reading_parser.add_argument("--reference", type=Path, default=None, help=f"another backend's {command} file")
    diff_parser = sub.add_parser("diff")
    diff_parser.add_argument("reference", type=Path)
    diff_parser.add_argument("other", type=Path)
    args = parser.parse_args(argv)
    if args.command == "models":
        write_models(args.root)
    elif args.command == "run":
        chosen = {name: getattr(args, name) for name in ("k", "n_eval", "lr", "separator")}
        run(args.model, args.out, args.task, **{name: value for name, value in chosen.items() if value is not None})
    elif args.command in READINGS:
        write, difference, kind, _ = READINGS[args.command]
        write(args.model, Path(args.result), Path(args.out))
        if args.reference is not None:
            name, diff = difference(args.reference, Path(args.out))
            print(f"{kind}: largest difference {diff:.2g} ({name}), tolerance {TOLERANCES[kind]:g}")
            return int(not diff <= TOLERANCES[kind])
    else:
        worst = largest(args.reference, args.other)
        print("| kind | largest difference | where | tolerance |\n|---|---|---|---|")
        note = worst.pop("rounding")[0]
        for kind, (quantity, diff) in worst.items():
            print(f"| {kind} | {diff:.2g} | {quantity} | {TOLERANCES[kind]:g} |")
        print(note)
        return int(any(not diff <= TOLERANCES[kind] for kind, (_, diff) in worst.items()))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers: the toy task and tokenizer
    sys.exit(main())
