"""The findings' counts from the committed sweeps' tables, written into the pages that quote them.

    python scripts/findings.py                    # print the summary block
    python scripts/findings.py --write            # rewrite every generated block of README.md and docs/findings*
    python scripts/findings.py --write README.md docs/findings.md docs/findings/   # the same, pages named
    python scripts/findings.py --beside smollm2-paper5 smollm2-rt-matched-paper5 rt-snippets   # one task, two ways
    python scripts/findings.py --verdicts smollm2-rt-matched-paper10 rt-snippets   # one task's verdicts, Holm's too
    python scripts/findings.py --lenses smollm2-rt-lenses implicit_abs_cos_gd      # a lens per layer beside its nulls
    python scripts/findings.py --kendall smollm2-mr-kendall tau_token              # Kendall per layer over runs

Every number of the README's findings paragraph (the <!-- findings-summary --> block: each design's summary
sentence) and of docs/findings.md's summary (the <!-- findings --> block: the sentences and their tables) comes
from here (iclgd_lens/analysis/protocol/findings.py counts, iclgd_lens/views/findings.py lays out).
`--beside FIRST SECOND TASK` prints every verdict of one task in two sweeps of the same runs side by side; a study
page under docs/findings/ that sets the papers' way beside matched update size quotes it in a
<!-- findings-beside FIRST SECOND TASK --> block, which `--write` regenerates from the block's own arguments (two
models' sweeps of one task side by side: <!-- findings-models FIRST SECOND TASK -->, headed by the models' names);
`--verdicts SWEEP TASK` prints every verdict of one task with its p-value, family and Holm's adjustment (a
<!-- findings-verdicts SWEEP TASK --> block; its label-control rows with the true and shuffled values: a
<!-- findings-control SWEEP TASK --> block); a lenses folder's paired verdicts are a <!-- findings-lenses FOLDER -->
block and one of its measures per layer beside its nulls a <!-- findings-lens-layers FOLDER MEASURE --> block
(`--lenses FOLDER [MEASURE]` prints either); every lenses folder with 5 runs, a label control and another task's
null, read against them, is the README's <!-- findings-lenses-summary --> sentence; a pooled Kendall folder's
(`iclgd-lens kendall`) the same as <!-- findings-kendall FOLDER --> and <!-- findings-kendall-layers FOLDER MEASURE -->
(`--kendall`). ICL as one
weight update (every `lenses --transfer` folder under --results, each beside the function vectors of its model and
task) is the <!-- findings-whole-model --> table of docs/findings.md and the <!-- findings-whole-model-summary -->
sentence of the README.
tests/views/test_findings.py fails when any generated block of a committed page differs from what this prints.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from iclgd_lens.analysis.heads.kendall import kendall_layers, kendall_verdicts
from iclgd_lens.analysis.heads.whole_model import whole_model_readings
from iclgd_lens.analysis.lenses.lens_findings import lens_layers, lens_readings, lens_verdicts
from iclgd_lens.analysis.protocol.findings import beside, load_pairs, sweep_model, task_verdicts
from iclgd_lens.views.findings import (
    beside_table,
    control_table,
    findings_block,
    findings_summary,
    holm_table,
    lens_summary,
    models_table,
    pooled_layer_table,
    pooled_verdict_table,
    whole_model_summary,
    whole_model_table,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
# name -> how many arguments its marker takes: the full block (docs/findings.md) and the paragraph (the README); one
# task's two sweeps side by side (two designs, or two models) and one task's verdicts with their adjustment (study
# pages); ICL as one weight update (the transfer lens and function vectors, analysis/heads/whole_model.py): its table
# (docs/findings.md) and its sentence (the README); a lenses folder's paired verdicts, and one of its measures per
# layer beside its nulls (analysis/lenses/lens_findings.py; study pages), and every 5-run study against its nulls in
# one sentence (the README); a pooled Kendall folder's paired verdicts, and one of its measures per layer
# (analysis/heads/kendall.py; study pages).
BLOCKS = {
    "findings": 0,
    "findings-summary": 0,
    "findings-beside": 3,
    "findings-models": 3,
    "findings-verdicts": 2,
    "findings-control": 2,
    "findings-whole-model": 0,
    "findings-whole-model-summary": 0,
    "findings-lenses": 1,
    "findings-lenses-summary": 0,
    "findings-lens-layers": 2,
    "findings-kendall": 1,
    "findings-kendall-layers": 2,
}
# What a bare `--write` rewrites: the README, the findings index and every study page under docs/findings/.
PAGES = (ROOT / "README.md", ROOT / "docs" / "findings.md", ROOT / "docs" / "findings")
# A generated block: `<!-- NAME ARG ... -->`, the generator's text, `<!-- /NAME -->`.
MARKER = re.compile(r"<!-- (findings(?:-[a-z]+)*)((?: [\w.-]+)*) -->\n.*?<!-- /\1 -->", re.S)


def pattern(name: str) -> re.Pattern:
    """The block `name` (one without arguments) on a page."""
    return re.compile(rf"<!-- {name} -->\n.*?<!-- /{name} -->", re.S)


def block(results: Path = RESULTS, name: str = "findings", args: tuple[str, ...] = ()) -> str:
    """The block `name` as the generator writes it, markers included; `args` are its marker's arguments."""
    if BLOCKS.get(name) != len(args):
        raise ValueError(f"<!-- {' '.join((name, *args))} -->: not a findings block (known: {', '.join(BLOCKS)})")
    if name == "findings-beside":
        first, second, task = args
        body = beside_table(beside(results / first, results / second, task), "papers' way", "matched")
    elif name == "findings-models":
        first, second, task = args
        body = models_table(
            beside(results / first, results / second, task), *map(sweep_model, (results / first, results / second))
        )
    elif name == "findings-verdicts":
        sweep, task = args
        body = holm_table(task_verdicts(results / sweep, task))
    elif name == "findings-control":
        sweep, task = args
        body = control_table(task_verdicts(results / sweep, task))
    elif name == "findings-lenses":
        body = pooled_verdict_table(lens_verdicts(results / args[0]))
    elif name == "findings-lenses-summary":
        body = lens_summary(lens_readings(results))
    elif name == "findings-lens-layers":
        body = pooled_layer_table(lens_layers(results / args[0], args[1]))
    elif name == "findings-kendall":
        body = pooled_verdict_table(kendall_verdicts(results / args[0]))
    elif name == "findings-kendall-layers":
        body = pooled_layer_table(kendall_layers(results / args[0], args[1]))
    elif name.startswith("findings-whole-model"):
        readings = whole_model_readings(results)
        body = whole_model_summary(readings) if name.endswith("summary") else whole_model_table(readings)
    else:
        pairs = load_pairs(results)
        body = findings_block(pairs) if name == "findings" else findings_summary(pairs)
    return f"<!-- {' '.join((name, *args))} -->\n{body}\n<!-- /{name} -->"


def blocks(text: str) -> list[tuple[str, tuple[str, ...], str]]:
    """Every generated block of a page's text: (name, arguments, the block as it stands)."""
    return [(m.group(1), tuple(m.group(2).split()), m.group(0)) for m in MARKER.finditer(text)]


def regenerate(text: str, results: Path = RESULTS) -> str:
    """`text` with each of its generated blocks replaced by the generator's."""
    return MARKER.sub(lambda m: block(results, m.group(1), tuple(m.group(2).split())), text)


def pages(paths: list[Path]) -> list[Path]:
    """The Markdown pages `paths` name: a file itself, a folder every *.md under it."""
    return [page for path in paths for page in (sorted(path.rglob("*.md")) if path.is_dir() else [path])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="the committed sweeps' tables")
    parser.add_argument(
        "--write",
        type=Path,
        nargs="*",
        help="pages (or folders of pages) whose generated blocks to rewrite; none named: README.md, docs/findings.md "
        "and docs/findings/",
    )
    parser.add_argument(
        "--beside",
        nargs=3,
        metavar=("FIRST", "SECOND", "TASK"),
        help="two sweeps under --results (the papers' way, then matched) and a task of both",
    )
    parser.add_argument("--verdicts", nargs=2, metavar=("SWEEP", "TASK"), help="a sweep under --results and its task")
    parser.add_argument(
        "--lenses", nargs="+", metavar="FOLDER [MEASURE]", help="a lenses folder under --results (and one measure)"
    )
    parser.add_argument(
        "--kendall",
        nargs="+",
        metavar="FOLDER [MEASURE]",
        help="a pooled Kendall folder under --results (and one measure)",
    )
    args = parser.parse_args()
    lens_block = "findings-lens-layers" if args.lenses and len(args.lenses) > 1 else "findings-lenses"
    kendall_block = "findings-kendall-layers" if args.kendall and len(args.kendall) > 1 else "findings-kendall"
    for name, given in (
        ("findings-beside", args.beside),
        ("findings-verdicts", args.verdicts),
        (lens_block, args.lenses),
        (kendall_block, args.kendall),
    ):
        if given:
            print(block(args.results, name, tuple(given)).split("\n", 1)[1].rsplit("\n", 1)[0])
            return
    print(block(args.results))
    if args.write is None:
        return
    named = [path for path in args.write if not path.is_dir()]
    for page in pages(args.write or list(PAGES)):
        text = page.read_text()
        if not blocks(text):
            if page in named:
                raise SystemExit(f"{page} has no generated findings block (<!-- findings ... -->)")
            continue
        made = regenerate(text, args.results)
        if made != text:
            page.write_text(made)


if __name__ == "__main__":
    main()
