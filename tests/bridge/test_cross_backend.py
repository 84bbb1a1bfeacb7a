"""The same comparison on both backends: the committed tiny checkpoints' results (tests/bridge/reference/<arch>/result,
computed with TransformerLens 3 by `analyses/backend_agreement.py run`) recomputed in this environment, every
record, delta and number within the tolerances the toolkit promises (analyses/backend_agreement.py: TOLERANCES), and
Kendall's inputs (kendall-scores.npz), the per-head attribution (attribution.csv) and the lenses (lenses.npz).
Under TransformerLens 3 this checks that the reference still is what HookedTransformer computes; under 4 (`make
test-tl4`), that TransformerBridge computes the same."""

from __future__ import annotations

from pathlib import Path

import pytest

REFERENCE = Path(__file__).parent / "reference"
ARCHITECTURES = ("gpt2", "llama-gqa", "neox")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_same_numbers_as_the_hooked_transformer_reference(architecture, tmp_path, analyses_script):
    agreement = analyses_script("backend_agreement")
    assert agreement.ARCHITECTURES == ARCHITECTURES
    agreement.run(REFERENCE / architecture / "model", tmp_path / "result")
    worst = agreement.largest(REFERENCE / architecture / "result", tmp_path / "result")
    for kind in ("records", "deltas", "metrics"):
        tolerance, (quantity, difference) = agreement.TOLERANCES[kind], worst[kind]
        assert difference <= tolerance, f"{kind}: {quantity} differs by {difference:.3g} (tolerance {tolerance:g})"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_same_kendall_inputs_as_the_hooked_transformer_reference(architecture, tmp_path, analyses_script):
    """Kendall's two sides on the committed result (kendall-scores.npz, TransformerLens 3), recomputed here: GD's
    refit (checked against the saved delta) and no finetuning."""
    agreement = analyses_script("backend_agreement")
    folder = REFERENCE / architecture
    agreement.kendall(folder / "model", folder / "result", tmp_path / "kendall.npz")
    name, difference = agreement.kendall_difference(folder / "kendall-scores.npz", tmp_path / "kendall.npz")
    tolerance = agreement.TOLERANCES["kendall scores"]
    assert difference <= tolerance, f"{name} differs by {difference:.3g} (tolerance {tolerance:g})"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_same_attribution_as_the_hooked_transformer_reference(architecture, tmp_path, analyses_script):
    """The per-head attribution of the committed result (attribution.csv, TransformerLens 3: its ICL patching runs the
    prediction position alone against cached keys and values; the bridge runs whole prompts), recomputed here."""
    agreement = analyses_script("backend_agreement")
    folder = REFERENCE / architecture
    agreement.attribution(folder / "model", folder / "result", tmp_path / "attribution.csv")
    name, difference = agreement.attribution_difference(folder / "attribution.csv", tmp_path / "attribution.csv")
    tolerance = agreement.TOLERANCES["attribution"]
    assert difference <= tolerance, f"{name} differs by {difference:.3g} (tolerance {tolerance:g})"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_same_lenses_as_the_hooked_transformer_reference(architecture, tmp_path, analyses_script):
    """Every lens measure of the committed result (lenses.npz, TransformerLens 3), recomputed here."""
    agreement = analyses_script("backend_agreement")
    folder = REFERENCE / architecture
    agreement.lenses(folder / "model", folder / "result", tmp_path / "lenses.npz")
    name, difference = agreement.lens_difference(folder / "lenses.npz", tmp_path / "lenses.npz")
    tolerance = agreement.TOLERANCES["lenses"]
    assert difference <= tolerance, f"{name} differs by {difference:.3g} (tolerance {tolerance:g})"
