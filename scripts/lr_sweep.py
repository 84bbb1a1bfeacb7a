"""Tune the GD learning rate per task, as the papers did: ZS, ICL and GD accuracy for each lr of a grid.

    python scripts/lr_sweep.py                                # tiny-icl on the six synthetic tasks
    python scripts/lr_sweep.py --model gpt2 --tasks sst2 --grid dai --n-eval 500

ZS and ICL are recorded once per task; each lr fits GD on the same k demonstrations and records the finetuned ZS
prompt. Like the papers, the lr is chosen on the evaluation queries themselves (Dai's grid: {1..9} x 10^{-1..-4}).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from iclgd_lens import MethodContext, build_episode, episode_accuracy, fit, load_model, load_task
from iclgd_lens.sources import SYNTHETIC_TASKS

GRIDS = {
    "coarse": [float(f"{m}e-{e}") for e in (1, 2, 3, 4) for m in (1, 3)],
    "dai": [float(f"{m}e-{e}") for e in (1, 2, 3, 4) for m in range(1, 10)],
}


def sweep(model, task, k: int, seed: int, n_eval: int, lrs: list[float], batch_size: int) -> dict:
    episode = build_episode(task, model.tokenizer, model.cfg.n_ctx, k=k, seed=seed, n_eval=n_eval)
    row = {"task": task.name, "effective_k": episode.effective_k}
    row |= episode_accuracy(model, episode, batch_size=batch_size)
    row["gd"] = {}
    for lr in lrs:
        try:
            delta = fit(model, episode.train_demos, episode.bos, MethodContext(lr))
        except FloatingPointError:
            row["gd"][lr] = float("nan")
            continue
        row["gd"][lr] = episode_accuracy(model, episode, {"gd": delta}, prompts=(), batch_size=batch_size)["gd"]
    finite = {lr: acc for lr, acc in row["gd"].items() if acc == acc}
    row["best_lr"] = max(finite, key=lambda lr: (finite[lr], -lr)) if finite else None
    row["best_gd"] = finite.get(row["best_lr"], float("nan"))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-icl")
    parser.add_argument("--tasks", nargs="+", default=list(SYNTHETIC_TASKS))
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--grid", choices=sorted(GRIDS), default="coarse")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()

    model = load_model(args.model, device=args.device)
    rows = []
    print("| task | k | ZS | ICL | best lr | GD | GD > ZS | ICL >= ZS + 15 |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.tasks:
        row = sweep(model, load_task(name), args.k, args.seed, args.n_eval, GRIDS[args.grid], args.batch_size)
        rows.append(row)
        print(
            f"| {name} | {row['effective_k']} | {row['zs']:.3f} | {row['icl']:.3f} | {row['best_lr']} | "
            f"{row['best_gd']:.3f} | {row['best_gd'] > row['zs']} | {row['icl'] >= row['zs'] + 0.15} |",
            flush=True,
        )
    print(
        f"GD above ZS on {sum(r['best_gd'] > r['zs'] for r in rows)}/{len(rows)} tasks; "
        f"ICL >= ZS + 15 points on {sum(r['icl'] >= r['zs'] + 0.15 for r in rows)}/{len(rows)}"
    )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
