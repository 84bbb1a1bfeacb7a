"""The findings' counts from the committed sweeps' tables, written into the pages that quote them.

    python scripts/findings.py                    # print the block
    python scripts/findings.py --write README.md docs/findings.md   # replace their findings blocks
    python scripts/findings.py --beside smollm2-paper5 smollm2-rt-matched-paper5 rt-snippets   # one task, two ways

`--beside FIRST SECOND TASK` prints every verdict of one task in two sweeps of the same runs side by side (the
tables of docs/findings.md that set the papers' way beside matched update size).
Every number of the README's findings paragraph (the <!-- findings-summary --> block: each design's summary
sentence) and of docs/findings.md's summary (the <!-- findings --> block: the sentences and their tables) comes
from here (iclgd_lens/analysis/protocol/findings.py counts, iclgd_lens/views/findings.py lays out);
tests/views/test_findings.py fails when a committed page differs from what this prints.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from iclgd_lens.analysis.protocol.findings import beside, load_pairs
from iclgd_lens.views.findings import beside_table, findings_block, findings_summary

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
BLOCKS = ("findings", "findings-summary")  # the full block (docs/findings.md), the paragraph (the README)


def pattern(name: str) -> re.Pattern:
    return re.compile(rf"<!-- {name} -->\n.*?<!-- /{name} -->", re.S)


def block(results: Path = RESULTS, name: str = "findings") -> str:
    pairs = load_pairs(results)
    body = findings_block(pairs) if name == "findings" else findings_summary(pairs)
    return f"<!-- {name} -->\n{body}\n<!-- /{name} -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="the committed sweeps' tables")
    parser.add_argument("--write", type=Path, nargs="*", default=[], help="pages whose findings block to replace")
    parser.add_argument(
        "--beside",
        nargs=3,
        metavar=("FIRST", "SECOND", "TASK"),
        help="two sweeps under --results (the papers' way, then matched) and a task of both",
    )
    args = parser.parse_args()
    if args.beside:
        first, second, task = args.beside
        print(beside_table(beside(args.results / first, args.results / second, task), "papers' way", "matched"))
        return
    print(block(args.results))
    for page in args.write:
        text = page.read_text()
        found = [name for name in BLOCKS if pattern(name).search(text)]
        if not found:
            raise SystemExit(f"{page} has no <!-- findings --> or <!-- findings-summary --> block")
        for name in found:
            made = block(args.results, name)
            text = pattern(name).sub(lambda _: made, text, count=1)
        page.write_text(text)


if __name__ == "__main__":
    main()
