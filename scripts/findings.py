"""The findings' counts from the committed sweeps' tables, written into the pages that quote them.

    python scripts/findings.py                    # print the block
    python scripts/findings.py --write README.md docs/findings.md   # replace their <!-- findings --> blocks
    python scripts/findings.py --beside smollm2-paper5 smollm2-rt-matched-paper5 rt-snippets   # one task, two ways

`--beside FIRST SECOND TASK` prints every verdict of one task in two sweeps of the same runs side by side (the
tables of docs/findings.md that set the papers' way beside matched update size).
Every number of the README's findings section and of docs/findings.md's summary comes from here
(iclgd_lens/analysis/protocol/findings.py counts, iclgd_lens/views/findings.py lays out); tests/views/test_findings.py
fails when a committed page differs from what this prints.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from iclgd_lens.analysis.protocol.findings import beside, load_pairs
from iclgd_lens.views.findings import beside_table, findings_block

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
BLOCK = re.compile(r"<!-- findings -->\n.*?<!-- /findings -->", re.S)


def block(results: Path = RESULTS) -> str:
    return f"<!-- findings -->\n{findings_block(load_pairs(results))}\n<!-- /findings -->"


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
    made = block(args.results)
    print(made)
    for page in args.write:
        text = page.read_text()
        if not BLOCK.search(text):
            raise SystemExit(f"{page} has no <!-- findings --> ... <!-- /findings --> block")
        page.write_text(BLOCK.sub(lambda _: made, text, count=1))


if __name__ == "__main__":
    main()
