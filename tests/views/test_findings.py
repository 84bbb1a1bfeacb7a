"""The findings generator: its counts equal hand counts on a committed sweep, and every generated block of the
README, the findings index (docs/findings.md) and the study pages under docs/findings/ is exactly what it prints (so
editing a number there fails this test). And every relative link of the README and of docs/ reaches its page and
heading, so that a page moved or a heading renamed leaves no link behind."""

import math
import re
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest

from iclgd_lens.analysis.lenses.lens_findings import lens_readings
from iclgd_lens.analysis.protocol.findings import load_pairs, totals
from iclgd_lens.views.findings import lens_summary

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]  # every page a generated block or a link may be on


def test_counts_equal_hand_counts_on_the_smollm2_sweep():
    """Counted by hand from docs/results/smollm2-paper5/verdicts.csv (GD rows: SimAOU_norm, SimAOU, SimAM∆ against
    three baselines; α: LCGD's against three) and summary.csv (trained-model accuracies, GD's update norms)."""
    pairs = {p.task: p for p in load_pairs(RESULTS, ["smollm2-paper5"])}
    assert list(pairs) == ["synth-sst2", "synth-mr", "synth-subj", "rt-snippets"]
    rt = pairs["rt-snippets"]
    assert rt.gd == {"above": 7, "no difference shown": 2} and rt.alpha == {"below": 3}
    assert pairs["synth-subj"].gd == {"below": 3, "no difference shown": 6}
    assert pairs["synth-sst2"].alpha == {"above": 2, "no difference shown": 1}
    assert (rt.zs, rt.runs, rt.baseline_lr, rt.primary) == (pytest.approx(0.640625), 5, "paper", {})
    assert rt.bootstrap == "nested"  # tables written before the crossed scheme have no `bootstrap` column
    assert rt.gd_norm_ratio == pytest.approx(6.21, abs=0.01)
    t = totals(list(pairs.values()))
    assert (t["gd_verdicts"], t["gd_above"], t["gd_below"], t["alpha_below_all"]) == (36, 8, 3, 3)


def test_label_control_and_mlp_input_sweeps_are_not_main_pairs():
    pairs = load_pairs(RESULTS)
    names = {p.sweep for p in pairs}
    keys = [(p.model, p.task, p.lr, p.baseline_lr) for p in pairs]
    assert len(keys) == len(set(keys))  # a pair measured the same way counts once
    assert "smollm2-rt-mlpin-shuffled-paper5" not in names and "gemma3-subj-mlpin-shuffled-paper5" not in names
    assert all(not math.isnan(p.gd_norm_ratio) for p in load_pairs(RESULTS))


def _edited(text: str) -> str:
    """`text` with the first digit after its first line changed: one number of a block edited by hand."""
    head, body = text.split("\n", 1)
    at = re.search(r"\d", body).start()
    return f"{head}\n{body[:at]}{(int(body[at]) + 1) % 10}{body[at + 1 :]}"


@pytest.mark.parametrize("page, name", [("README.md", "findings-summary"), ("docs/findings.md", "findings")])
def test_the_pages_quote_the_generator_exactly(script, page, name):
    """The README's findings paragraph and the findings index's summary are the generator's output: an edited number
    fails."""
    findings = script("findings")
    made = findings.block(name=name)
    text = (ROOT / page).read_text()
    found = findings.pattern(name).search(text)
    assert found, f"{page} has no <!-- {name} --> block"
    assert found.group(0) == made, f"{page}'s {name} block differs from `python scripts/findings.py`: rerun it"
    assert findings.pattern(name).search(text.replace(made, _edited(made))).group(0) != made  # the check can fail


def test_the_summary_says_when_every_baseline_is_fewer_baselines():
    """ "below every untrained baseline" over a pair compared with one baseline (Gemma's matched synth-subj and
    synth-sst2) is said to be over fewer; over pairs with three each it is not."""
    from iclgd_lens.views.findings import summary_sentence

    matched = [p for p in load_pairs(RESULTS) if p.baseline_lr == "matched"]
    assert sorted(p.alpha_total for p in matched) == [1, 1, 3, 3, 3, 3, 3]
    assert "pairs (2 of them against fewer baselines)," in summary_sentence(matched)
    assert "fewer" not in summary_sentence([p for p in matched if p.alpha_total == 3])


def test_a_longer_sweep_of_the_same_pair_supersedes_a_shorter_one():
    from dataclasses import replace

    from iclgd_lens.analysis.protocol.findings import _most_runs

    [rt] = [p for p in load_pairs(RESULTS, ["smollm2-paper5"]) if p.task == "rt-snippets"]
    longer, other_design = replace(rt, sweep="ten", runs=10), replace(rt, sweep="matched", baseline_lr="matched")
    assert _most_runs([rt, longer, other_design]) == [longer, other_design]


# The side-by-side tables of the matched study pages: (papers' way, matched, task, the page that quotes it whole in
# its <!-- findings-beside FIRST SECOND TASK --> block). The number: GD's ratio the papers' way against the last
# baseline both sweeps compared (SmolLM2's: trained_embeddings, the findings table's largest baseline ratio of the
# same (sweep, task), read by hand from that table; Gemma's matched sweep has no_training only: 0.296348 / 0.445495
# in gemma3-subj-paper5/summary.csv).
BESIDE = [
    ("smollm2-paper5", "smollm2-rt-matched-paper5", "rt-snippets", "smollm2-rt-snippets-matched.md", 6.21),
    ("smollm2-paper5", "smollm2-subj-matched-paper5", "synth-subj", "smollm2-synth-subj-matched.md", 5.21),
    ("smollm2-paper5", "smollm2-mr-matched-paper5", "synth-mr", "smollm2-synth-mr-matched.md", 4.51),
    ("smollm2-paper5", "smollm2-sst2-matched-paper5", "synth-sst2", "smollm2-synth-sst2-matched.md", 3.55),
    ("smollm2-sst5-paper5", "smollm2-sst5-matched-paper5", "synth-sst5", "smollm2-synth-sst5-matched.md", 3.87),
    ("gemma3-subj-paper5", "gemma3-subj-matched-paper5", "synth-subj", "gemma3-synth-subj-matched.md", 0.665),
    ("gemma3-sst2-paper5", "gemma3-sst2-matched-paper5", "synth-sst2", "gemma3-synth-sst2-matched.md", 0.605),
]


# The study pages that quote a sweep's verdicts with Holm's adjustment whole (<!-- findings-verdicts SWEEP TASK -->).
# Two models' papers'-way sweeps of one task side by side (the tables these pages typed by hand before).
MODELS = [
    ("smollm2-paper5", "gemma3-rt-snippets-paper5", "rt-snippets", "smollm2-gemma3-rt-snippets.md"),
    ("smollm2-paper5", "gemma3-sst2-paper5", "synth-sst2", "smollm2-gemma3-synth-sst2.md"),
    ("smollm2-paper5", "gemma3-subj-paper5", "synth-subj", "smollm2-gemma3-synth-subj.md"),
]
# The older label-control pages' true-against-shuffled tables (<!-- findings-control SWEEP TASK -->).
CONTROL_TABLES = [
    ("gemma3-synth-subj-label-control.md", ("gemma3-subj-mlpin-shuffled-paper5", "synth-subj")),
    ("smollm2-rt-snippets-label-control.md", ("smollm2-rt-mlpin-shuffled-paper5", "rt-snippets")),
]
VERDICT_TABLES = [
    ("smollm2-rt-snippets-matched.md", ("smollm2-rt-matched-paper10", "rt-snippets")),
    ("smollm2-synth-mr-label-control-matched.md", ("smollm2-mr-mlpin-shuffled-matched-paper5", "synth-mr")),
    ("smollm2-synth-mr-label-control-matched.md", ("smollm2-mr-kv-shuffled-matched-paper5", "synth-mr")),
    ("gemma3-synth-subj-label-control-matched.md", ("gemma3-subj-kv-shuffled-matched-paper5", "synth-subj")),
    ("gemma3-synth-subj-label-control-matched.md", ("gemma3-subj-mlpin-shuffled-matched-paper5", "synth-subj")),
]


@pytest.mark.parametrize("first, second, task, page, ratio", BESIDE)
def test_the_side_by_side_tables_are_the_generators(script, first, second, task, page, ratio):
    """Each papers'-way-beside-matched table is `scripts/findings.py --beside`'s output, in a findings-beside block
    of its study page; its ratios come from the two summary.csv files (hand-checked against the findings table's
    largest baseline ratio)."""
    from iclgd_lens.analysis.protocol.findings import beside
    from iclgd_lens.views.findings import beside_table

    frame = beside(RESULTS / first, RESULTS / second, task)
    baseline = [b for b in ("no_training", "trained_norms", "trained_embeddings") if b in set(frame.baseline)][-1]
    row = frame[(frame.method == "gd") & (frame.metric == "simaou_norm") & (frame.baseline == baseline)]
    assert row["first_ratio"].item() == pytest.approx(ratio, abs=0.005)
    blocks = [
        b
        for b in script("findings").blocks((ROOT / "docs" / "findings" / page).read_text())
        if b[0] == "findings-beside"
    ]
    assert [(name, args) for name, args, _ in blocks] == [("findings-beside", (first, second, task))]
    assert beside_table(frame, "papers' way", "matched") in blocks[0][2]


def test_the_holm_table_is_the_sweeps_verdicts(script):
    """`--verdicts SWEEP TASK`: every verdict of the task in verdicts.csv's order, each primary contrast with Holm's
    adjustment; the first row read by hand from smollm2-rt-matched-paper10/verdicts.csv (difference 0.0655566,
    interval 0.0241672 to 0.107695, p 0.00919853, adjusted 0.0210026); an unknown task is refused."""
    from iclgd_lens.analysis.protocol.findings import task_verdicts
    from iclgd_lens.views.findings import holm_table

    lines = holm_table(task_verdicts(RESULTS / "smollm2-rt-matched-paper10", "rt-snippets")).split("\n")
    assert len(lines) == 2 + 24  # the header, 3 baselines x (3 GD + 4 LCGD metrics), LCGD against GD on 3 metrics
    assert (
        lines[2]
        == "| GD | SimAOU_norm | no_training | +0.066 [+0.024, +0.108]: above | 0.0092 | primary | 0.021: above |"
    )
    assert lines[3].endswith("| 0.369 | exploratory |  |")
    with pytest.raises(ValueError, match="no verdict of task 'trec'"):
        task_verdicts(RESULTS / "smollm2-rt-matched-paper10", "trec")


# The study pages that quote a lenses folder (<!-- findings-lenses FOLDER --> and <!-- findings-lens-layers ... -->).
LENS_PAGE, LENSES = "smollm2-synth-mr-label-control-matched.md", "smollm2-mr-lenses-matched-paper5"
GEMMA_LENS_PAGE, GEMMA_LENSES = "gemma3-synth-subj-label-control-matched.md", "gemma3-subj-lenses-matched-paper5"
LENS_BLOCKS = [
    (LENS_PAGE, "findings-lenses", (LENSES,)),
    (LENS_PAGE, "findings-lens-layers", (LENSES, "implicit_abs_cos_gd")),
    (GEMMA_LENS_PAGE, "findings-lenses", (GEMMA_LENSES,)),
    (GEMMA_LENS_PAGE, "findings-lens-layers", (GEMMA_LENSES, "implicit_abs_cos_gd")),
    (GEMMA_LENS_PAGE, "findings-lens-layers", (GEMMA_LENSES, "tv_correct")),
    (GEMMA_LENS_PAGE, "findings-lens-layers", (GEMMA_LENSES, "own_stream_correct")),
]


# The study pages that quote a pooled Kendall folder (<!-- findings-kendall FOLDER --> and its per-layer block).
KENDALL_BLOCKS = [
    ("heads-attribution.md", "findings-kendall", ("smollm2-mr-kendall-paper5",)),
    ("heads-attribution.md", "findings-kendall-layers", ("smollm2-mr-kendall-paper5", "tau_demonstration")),
    ("heads-attribution.md", "findings-kendall-layers", ("smollm2-mr-kendall-paper5", "order_icl")),
    ("heads-attribution.md", "findings-kendall", ("gemma3-subj-kendall-paper5",)),
    ("heads-attribution.md", "findings-kendall-layers", ("gemma3-subj-kendall-paper5", "tau_demonstration")),
    ("heads-attribution.md", "findings-kendall-layers", ("gemma3-subj-kendall-paper5", "order_icl")),
]


def _lenses_folder(folder: Path) -> Path:
    """A lenses folder written by hand: two layers of implicit_abs_cos_gd for the model and the structured null, the
    random-direction scale, a signed lens with a negative layer, and two paired verdicts."""
    folder.mkdir()
    header = "measure,subject,layer,mean,low,high,covers,runs\n"
    rows = [
        "implicit_abs_cos_gd,model,0,0.0123,0.0101,0.0150,runs and queries,5",
        "implicit_abs_cos_gd,model,1,0.0080,0.0070,0.0090,runs and queries,5",
        "implicit_abs_cos_gd,model [FT on synth-subj],0,0.0110,0.0090,0.0130,runs and queries,5",
        "implicit_abs_cos_gd,model [FT on synth-subj],1,0.0079,0.0069,0.0089,runs and queries,5",
        "random_abs_cos_implicit,model,0,0.000509,0.000509,0.000509,runs and queries,5",
        "random_abs_cos_implicit,model,1,0.000509,0.000509,0.000509,runs and queries,5",
        "implicit_cos_gd,model,0,-0.0169,-0.0194,-0.0121,runs and queries,5",
        "implicit_cos_gd,model,1,0.0020,0.0010,0.0030,runs and queries,5",
    ]
    (folder / "per_layer.csv").write_text(header + "\n".join(rows) + "\n")
    (folder / "paired.csv").write_text(
        "measure,baseline,model,baseline_value,difference,low,high,covers,verdict,runs\n"
        "implicit_abs_cos_gd,model [FT on synth-subj],0.01015,0.00945,0.0007,0.0002,0.0012,runs and queries,above,5\n"
        "tv_correct,no_training,0.75,0.5,0.25,-0.01,0.4,runs and queries,no difference shown,5\n"
    )
    return folder


def test_an_accuracy_where_the_patched_run_answers_one_class_is_marked(tmp_path):
    """Where the task-vector patch gives nearly every query the same answer (tv_majority 0.95 at point 1; 0.6 at
    point 0), its accuracy is marked in the findings block, in lenses.md's table and in its notes; a folder without
    the share (written before it was kept) marks nothing."""
    from iclgd_lens.analysis.lenses.lens_findings import lens_layers
    from iclgd_lens.views.findings import pooled_layer_table
    from iclgd_lens.views.lenses import lenses_markdown, notes

    folder = tmp_path / "lenses"
    folder.mkdir()
    rows = [
        "tv_correct,model,0,0.640,0.470,0.800,runs and queries,5",
        "tv_correct,model,1,0.469,0.281,0.644,runs and queries,5",
        "tv_majority,model,0,0.600,0.500,0.700,runs and queries,5",
        "tv_majority,model,1,0.950,0.900,1.000,runs and queries,5",
    ]
    per_layer_csv = "measure,subject,layer,mean,low,high,covers,runs\n" + "\n".join(rows) + "\n"
    (folder / "per_layer.csv").write_text(per_layer_csv)
    lines = pooled_layer_table(lens_layers(folder, "tv_correct")).split("\n")
    assert lines[2:] == ["| 0 | 0.64 [0.47, 0.8] |", "| 1 | 0.469 [0.281, 0.644] (one class: 0.95 of queries) |"]
    per_layer = pd.read_csv(folder / "per_layer.csv")
    said = notes(per_layer, pd.DataFrame())
    assert any("answers one class at stream points [1]" in note for note in said)
    about = {"model": "m", "task": "t", "runs": 5, "notes": said}
    table = lenses_markdown(per_layer, pd.DataFrame(columns=["measure"]), about)
    assert "| 1 | 0.469 [0.281, 0.644] (one class: 0.95 of queries) |" in table and "| 0 | 0.64 [0.47, 0.8] |" in table
    (folder / "per_layer.csv").write_text("\n".join(per_layer_csv.split("\n")[:3]) + "\n")
    assert "one class" not in pooled_layer_table(lens_layers(folder, "tv_correct"))


def test_a_lens_is_read_per_layer_beside_its_nulls(tmp_path):
    """`findings-lens-layers`: the model first, then the structured null, then the random-direction scale (an
    absolute cosine's only); a signed lens keeps its signs and gets no random column; an unknown measure names the
    ones the folder has. `findings-lenses`: every paired verdict, as paired.csv holds it."""
    from iclgd_lens.analysis.lenses.lens_findings import lens_layers, lens_verdicts
    from iclgd_lens.views.findings import pooled_layer_table, pooled_verdict_table

    folder = _lenses_folder(tmp_path / "lenses")
    lines = pooled_layer_table(lens_layers(folder, "implicit_abs_cos_gd")).split("\n")
    assert lines[0] == "| layer | model | model [FT on synth-subj] | random directions |"
    assert lines[2] == "| 0 | 0.0123 [0.0101, 0.015] | 0.011 [0.009, 0.013] | 0.000509 |"
    signed = pooled_layer_table(lens_layers(folder, "implicit_cos_gd")).split("\n")
    assert signed[0] == "| layer | model |" and signed[2] == "| 0 | -0.0169 [-0.0194, -0.0121] |"
    assert signed[3] == "| 1 | +0.002 [+0.001, +0.003] |"
    with pytest.raises(ValueError, match="no measure 'shift_cos_gd'; it has: implicit_abs_cos_gd, implicit_cos_gd"):
        lens_layers(folder, "shift_cos_gd")
    verdicts = pooled_verdict_table(lens_verdicts(folder)).split("\n")
    assert len(verdicts) == 4
    assert verdicts[2] == (
        "| `implicit_abs_cos_gd` | model [FT on synth-subj] | 0.0101 | 0.00945 | +0.0007 [+0.0002, +0.0012]: above |"
    )
    with pytest.raises(ValueError, match="not a folder written by `iclgd-lens lenses`"):
        lens_verdicts(tmp_path)


def test_a_pooled_kendall_folder_is_read_per_layer_and_paired(tmp_path):
    """`findings-kendall` and `findings-kendall-layers` read what `iclgd-lens kendall` writes (pooled_tables' two
    tables through write_kendall_pool): every layer's mean and interval as pooled, the model first; the paired
    verdict as pooled, shown with its sign; a folder without them is named."""
    import numpy as np

    from iclgd_lens.analysis.heads.kendall import kendall_layers, kendall_verdicts, pooled_tables
    from iclgd_lens.views.attribution import write_kendall_pool
    from iclgd_lens.views.findings import pooled_layer_table, pooled_verdict_table

    rng = np.random.default_rng(0)
    means = {"zero_delta": 0.05, "model": 0.30}  # the model second in the runs: the reader puts it first
    runs = [
        {
            s: {m: rng.normal(mean, 0.05, (8, 3)) for m in ("tau_token", "tau_demonstration")}
            for s, mean in means.items()
        }
        for _ in range(5)
    ]
    per_layer, paired = pooled_tables(runs)
    about = {"model": "m", "task": "t", "kendall_method": "gd", "kendall_queries": 8, "runs": 5}
    write_kendall_pool(tmp_path / "pooled", per_layer, paired, about)

    layers = kendall_layers(tmp_path / "pooled", "tau_token")
    assert list(dict.fromkeys(layers.subject)) == ["model", "zero_delta"] and len(layers) == 6
    pooled = per_layer[(per_layer.measure == "tau_token") & (per_layer.subject == "model")]
    for column in ("mean", "low", "high"):
        assert layers[layers.subject == "model"][column].to_numpy() == pytest.approx(pooled[column], rel=1e-5)
    lines = pooled_layer_table(layers).split("\n")
    row = pooled.iloc[0]
    assert lines[0] == "| layer | model | zero_delta |"
    assert lines[2].startswith(f"| 0 | {row['mean']:.3g} [{row['low']:.3g}, {row['high']:.3g}] | ")
    verdicts = kendall_verdicts(tmp_path / "pooled")
    token = verdicts[verdicts.measure == "tau_token"].iloc[0]
    assert (token.baseline, token.verdict) == ("zero_delta", "above")
    assert token.difference == pytest.approx(paired[paired.measure == "tau_token"].difference.iloc[0], rel=1e-5)
    shown = pooled_verdict_table(verdicts).split("\n")
    assert shown[2].startswith(f"| `tau_token` | zero_delta | {token.model:.3g} | {token.baseline_value:.3g} | +")
    assert shown[2].endswith(": above |")
    with pytest.raises(ValueError, match="not a folder written by `iclgd-lens kendall`"):
        kendall_verdicts(tmp_path)
    with pytest.raises(ValueError, match="no measure 'tau_head'; it has: tau_demonstration, tau_token"):
        kendall_layers(tmp_path / "pooled", "tau_head")


def test_every_generated_block_of_every_page_is_the_generators(script):
    """Wherever a generated block stands (the README, the index, a study page, or a page it moves to later), it is
    what the generator writes from its marker's arguments; an edited number in any of them fails; each block is
    found where the pages expect it, once."""
    findings = script("findings")
    where = []
    for page in PAGES:
        text = page.read_text()
        for i, (name, args, found) in enumerate(findings.blocks(text)):
            where.append((page.relative_to(ROOT).as_posix(), name, args))
            made = findings.block(name=name, args=args)
            assert found == made, f"{page}: <!-- {name} --> block differs from `python scripts/findings.py`: rerun it"
            edited = text.replace(found, _edited(found))
            assert findings.blocks(edited)[i][2] != made  # the check can fail
            assert findings.regenerate(edited) == text  # and --write restores the edit
    expected = [("README.md", "findings-summary", ()), ("docs/findings.md", "findings", ())]
    expected += [("README.md", "findings-whole-model-summary", ()), ("docs/findings.md", "findings-whole-model", ())]
    expected += [("README.md", "findings-lenses-summary", ()), ("docs/findings.md", "findings-lenses-summary", ())]
    expected += [(f"docs/findings/{page}", "findings-beside", (a, b, t)) for a, b, t, page, _ in BESIDE]
    expected += [(f"docs/findings/{page}", "findings-models", (a, b, t)) for a, b, t, page in MODELS]
    expected += [(f"docs/findings/{page}", "findings-verdicts", args) for page, args in VERDICT_TABLES]
    expected += [(f"docs/findings/{page}", "findings-control", args) for page, args in CONTROL_TABLES]
    expected += [(f"docs/findings/{page}", name, args) for page, name, args in LENS_BLOCKS]
    expected += [(f"docs/findings/{page}", name, args) for page, name, args in KENDALL_BLOCKS]
    assert sorted(where) == sorted(expected)


def test_write_rewrites_an_edited_block_and_refuses_a_page_without_one(script, tmp_path, monkeypatch):
    """`--write PAGE` restores a block edited by hand on a page and leaves the rest of the page as it was; a folder
    rewrites its pages that hold a block; a page named that holds none is refused; an unknown block is refused."""
    findings = script("findings")
    original = (ROOT / "docs" / "findings" / "smollm2-synth-mr-matched.md").read_text()
    [(_, _, found)] = findings.blocks(original)
    (tmp_path / "study.md").write_text(original.replace(found, _edited(found)))
    (tmp_path / "plain.md").write_text("no block here\n")
    monkeypatch.setattr("sys.argv", ["findings.py", "--write", str(tmp_path)])
    findings.main()
    assert (tmp_path / "study.md").read_text() == original
    assert (tmp_path / "plain.md").read_text() == "no block here\n"
    monkeypatch.setattr("sys.argv", ["findings.py", "--write", str(tmp_path / "plain.md")])
    with pytest.raises(SystemExit, match="no generated findings block"):
        findings.main()
    with pytest.raises(ValueError, match="not a findings block"):
        findings.regenerate("<!-- findings-beside smollm2-paper5 -->\n| x |\n<!-- /findings-beside -->\n")


# Links: GitHub's rules for a heading's anchor (lowercase; every character but letters, digits, '_', '-' and spaces
# dropped; spaces to '-'; a repeated anchor gets -1, -2, ...), applied to the README and every page under docs/.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
HEADING = re.compile(r"^#{1,6}[ \t]+(.*?)[ \t#]*$", re.M)


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        name = slug(heading)
        found.add(f"{name}-{seen[name]}" if seen.get(name) else name)
        seen[name] = seen.get(name, 0) + 1
    return found | set(re.findall(r'<a\s+(?:name|id)="([^"]+)"', page.read_text()))


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` (outside fenced code) that reach no file, or a Markdown page without the
    heading their #anchor names."""
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not checked here
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / unquote(file)).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no such heading in {dest.name}")
    return broken


@pytest.mark.parametrize(
    "heading, anchor",
    [
        (
            "The same at 10 runs: the primary contrasts after Holm's adjustment",
            "the-same-at-10-runs-the-primary-contrasts-after-holms-adjustment",
        ),
        (
            "Published numbers (1.3B model: SST2, SST5, MR, Subj, AGNews, CB)",
            "published-numbers-13b-model-sst2-sst5-mr-subj-agnews-cb",
        ),
        ("The tables (`tables.md`, `summary.csv`, `verdicts.csv`)", "the-tables-tablesmd-summarycsv-verdictscsv"),
        (
            "Function vectors (Todd et al., ICLR 2024): `attribute --function-vectors`",
            "function-vectors-todd-et-al-iclr-2024-attribute---function-vectors",
        ),
    ],
)
def test_slug_follows_githubs_rules(heading, anchor):
    assert slug(heading) == anchor


def test_the_link_check_finds_a_missing_page_and_a_missing_heading(tmp_path):
    (tmp_path / "a.md").write_text("# A page\n\n## Two words\n\n## Two words\n")
    (tmp_path / "b.md").write_text(
        "[ok](a.md#two-words) [again](a.md#two-words-1) [self](#b) [web](https://x.org/#y)\n\n# B\n\n"
        "```\n[in code](nowhere.md)\n```\n[gone](c.md) [no heading](a.md#three-words)\n"
    )
    assert broken_links(tmp_path / "b.md") == ["c.md: no such file", "a.md#three-words: no such heading in a.md"]


def test_every_relative_link_reaches_its_page_and_heading():
    """The README and every page under docs/ (the findings index, its study pages under docs/findings/, the sweeps'
    tables): each relative link reaches a file, and its #anchor a heading of that page."""
    broken = {page.relative_to(ROOT).as_posix(): found for page in PAGES if (found := broken_links(page))}
    assert broken == {}


def test_the_findings_index_links_every_study_page():
    """Each page under docs/findings/ is a row (or the cross-model overview) of the index, and each row a page."""
    index = (ROOT / "docs" / "findings.md").read_text()
    linked = {Path(t.partition("#")[0]).name for t in LINK.findall(index) if t.startswith("findings/")}
    assert linked == {p.name for p in (ROOT / "docs" / "findings").glob("*.md")}


def test_the_lens_summary_reads_each_study_against_its_nulls():
    """Of the committed lenses folders only those with 5 runs, a label control and another task's null are read
    (the older ones lack the null or the runs); SmolLM2's numbers are those of its paired.csv and per_layer.csv, read by
    hand: implicit_abs_cos_gd 0.00843937 against synth-subj's 0.008153 (no difference shown), Hendel's θ best at
    layer 20 with 0.965625 [0.8625, 1.0], 0.928125 from shuffled demonstrations, ZS 0.640625; Gemma's against
    synth-mr's update 0.00755263 against 0.00490042 (above), θ best at layer 9 with 0.696875 [0.508798, 0.847452],
    0.68125 shuffled."""
    readings = {r.folder: r for r in lens_readings(RESULTS)}
    assert not {"smollm2-rt-lenses", "gemma3-subj-lenses", "smollm2-mr-transfer-s5"} & set(readings)  # no null; 1 run
    reading = readings["smollm2-mr-lenses-matched-paper5"]
    assert (reading.null_task, reading.runs) == ("synth-subj", 5)
    null = reading.implicit["model [FT on synth-subj]"]
    assert (null["model"], null["baseline_value"], null["verdict"]) == (0.00843937, 0.008153, "no difference shown")
    assert reading.shift["model [shuffled]"]["verdict"] == "no difference shown"
    assert (reading.tv_layer, reading.tv, reading.tv_shuffled) == (20, (0.965625, 0.8625, 1.0), 0.928125)
    assert reading.zs == pytest.approx(0.640625)
    sentence = lens_summary([reading])
    assert "synth-mr: implicit update 0.0084 vs 0.0082 (no difference shown), 0.0082 (above), random 0.0006" in sentence
    assert "task vector (layer 20) 0.97 [0.86, 1.00], ZS 0.64, shuffled 0.93" in sentence
    gemma = readings["gemma3-subj-lenses-matched-paper5"]
    null = gemma.implicit["model [FT on synth-mr]"]
    assert (null["model"], null["baseline_value"], null["verdict"]) == (0.00755263, 0.00490042, "above")
    assert (gemma.tv_layer, gemma.tv, gemma.tv_shuffled) == (9, (0.696875, 0.508798, 0.847452), 0.68125)
    both = lens_summary([gemma, reading])
    assert "synth-mr (Gemma 3 270M), synth-subj (SmolLM2-135M)" in both
    assert "synth-subj: implicit update 0.0076 vs 0.0049 (above), 0.0073 (no difference shown)" in both
    assert "no lenses folder" in lens_summary([])


def test_two_models_side_by_side_are_headed_by_their_names(script):
    """The findings-models block sets SmolLM2's and Gemma's verdicts of one task in one row each, under the models'
    names; Gemma's GD against no_training on synth-sst2 as its verdicts.csv has it: -0.091 [-0.159, -0.035] below."""
    made = script("findings").block(name="findings-models", args=MODELS[1][:3])
    assert "| SmolLM2-135M: difference [interval]" in made and "| Gemma 3 270M: difference [interval]" in made
    row = "| GD | SimAOU_norm | no_training | +0.029 [-0.048, +0.120]: no difference shown (×1.3) | "
    assert row + "-0.091 [-0.159, -0.035]: below (×0.605) |" in made


def test_the_control_table_sets_true_labels_against_shuffled(script):
    """The findings-control block: only the rows against the label control, each with both values; Gemma's GD
    SimAOU_norm as verdicts.csv has it (0.326 true, 0.354 shuffled, -0.028 [-0.082, +0.017])."""
    made = script("findings").block(name="findings-control", args=CONTROL_TABLES[0][1])
    assert "| GD | SimAOU_norm | 0.326 | 0.354 | -0.028 [-0.082, +0.017] | no difference shown |" in made
    assert made.count("\n| ") == 1 + 7  # the header and 7 rows (GD's three metrics, LCGD's three and α)
