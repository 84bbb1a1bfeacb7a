"""The coverage of the sweeps' bootstrap intervals on simulated crossed sweeps, as a Markdown table.

    python scripts/coverage.py                      # print the table
    python scripts/coverage.py --write docs/reproduction.md   # replace its <!-- coverage-table --> block

Every row: 1,000 simulated sweeps at the committed sweeps' setting (5 runs, 64 queries, the tables' 4,000 draws and
seed), with run, query, interaction and layer effects of the mix's standard deviations, normal or skewed
(iclgd_lens/analysis/protocol/coverage.py); the crossed interval (the tables') beside the former nested one.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from iclgd_lens.analysis.protocol.coverage import Effects, coverage

MIXES = {
    "queries dominate": dict(run=0.01, query=0.20, interaction=0.10),
    "balanced": dict(run=0.05, query=0.10, interaction=0.10),
    "runs dominate": dict(run=0.10, query=0.05, interaction=0.05),
}
BLOCK = re.compile(r"<!-- coverage-table -->.*?(<!-- /coverage-table -->|$)", re.S)


def table() -> str:
    lines = [
        "| effects | sd run / query / run×query | crossed (the tables') | nested (former) | widths crossed / nested |",
        "|---|---|---|---|---|",
    ]
    for shape in ("normal", "skewed"):
        for mix, sds in MIXES.items():
            effects = Effects(**sds, shape=shape)
            crossed, nested = coverage(effects), coverage(effects, crossed=False)
            lines.append(
                f"| {shape}, {mix} | {sds['run']} / {sds['query']} / {sds['interaction']} | "
                f"{crossed.share:.1%} [{crossed.mc_error:.1%}] | {nested.share:.1%} [{nested.mc_error:.1%}] | "
                f"{crossed.width:.3f} / {nested.width:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="a Markdown file whose <!-- coverage-table --> block to replace")
    args = parser.parse_args()
    made = table()
    print(made)
    if args.write:
        text = args.write.read_text()
        if "<!-- coverage-table -->" not in text:
            raise SystemExit(f"{args.write} has no <!-- coverage-table --> marker")
        block = f"<!-- coverage-table -->\n{made}\n<!-- /coverage-table -->"
        args.write.write_text(BLOCK.sub(lambda _: block, text, count=1))


if __name__ == "__main__":
    main()
