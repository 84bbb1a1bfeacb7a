"""The findings generator: its counts equal hand counts on a committed sweep, and the README's and
docs/findings.md's findings blocks are exactly what it prints (so editing a number there fails this test)."""

import importlib.util
import math
from pathlib import Path

import pytest

from iclgd_lens.analysis.protocol.findings import load_pairs, totals

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"


def _script():
    spec = importlib.util.spec_from_file_location("findings_script", ROOT / "scripts" / "findings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


@pytest.mark.parametrize("page, name", [("README.md", "findings-summary"), ("docs/findings.md", "findings")])
def test_the_pages_quote_the_generator_exactly(page, name):
    """The README's findings paragraph and docs/findings.md's summary are the generator's output: an edited number
    fails."""
    script = _script()
    made = script.block(name=name)
    text = (ROOT / page).read_text()
    found = script.pattern(name).search(text)
    assert found, f"{page} has no <!-- {name} --> block"
    assert found.group(0) == made, f"{page}'s {name} block differs from `python scripts/findings.py`: rerun it"
    edited = text.replace(found.group(0), found.group(0).replace(" of ", " of 1", 1))
    assert script.pattern(name).search(edited).group(0) != made  # the check can fail


def test_a_longer_sweep_of_the_same_pair_supersedes_a_shorter_one():
    from dataclasses import replace

    from iclgd_lens.analysis.protocol.findings import _most_runs

    [rt] = [p for p in load_pairs(RESULTS, ["smollm2-paper5"]) if p.task == "rt-snippets"]
    longer, other_design = replace(rt, sweep="ten", runs=10), replace(rt, sweep="matched", baseline_lr="matched")
    assert _most_runs([rt, longer, other_design]) == [longer, other_design]


# The side-by-side tables of docs/findings.md: (papers' way, matched, task), each quoted whole on the page.
# The last number: GD's trained_embeddings ratio the papers' way, the findings table's largest baseline ratio of the
# same (sweep, task), read by hand from that table.
BESIDE = [
    ("smollm2-paper5", "smollm2-rt-matched-paper5", "rt-snippets", 6.21),
    ("smollm2-paper5", "smollm2-subj-matched-paper5", "synth-subj", 5.21),
    ("smollm2-paper5", "smollm2-mr-matched-paper5", "synth-mr", 4.51),
    ("smollm2-paper5", "smollm2-sst2-matched-paper5", "synth-sst2", 3.55),
    ("smollm2-sst5-paper5", "smollm2-sst5-matched-paper5", "synth-sst5", 3.87),
]


@pytest.mark.parametrize("first, second, task, embeddings_ratio", BESIDE)
def test_the_side_by_side_tables_are_the_generators(first, second, task, embeddings_ratio):
    """Each papers'-way-beside-matched table on docs/findings.md is `scripts/findings.py --beside`'s output; its
    ratios come from the two summary.csv files (hand-checked against the findings table's largest baseline ratio)."""
    from iclgd_lens.analysis.protocol.findings import beside
    from iclgd_lens.views.findings import beside_table

    frame = beside(RESULTS / first, RESULTS / second, task)
    row = frame[(frame.method == "gd") & (frame.metric == "simaou_norm") & (frame.baseline == "trained_embeddings")]
    assert row["first_ratio"].item() == pytest.approx(embeddings_ratio, abs=0.005)
    assert beside_table(frame, "papers' way", "matched") in (ROOT / "docs" / "findings.md").read_text()
