"""The same comparison on both backends: the committed tiny checkpoints' results (tests/bridge/reference/<arch>/result,
computed with TransformerLens 3 by `scripts/backend_agreement.py run`) recomputed in this environment, every
record, delta and number within the tolerances the toolkit promises (scripts/backend_agreement.py: TOLERANCES), and
Kendall's inputs (kendall-scores.npz), the per-head attribution (attribution.csv) and the lenses (lenses.npz).
Under TransformerLens 3 this checks that the reference still is what HookedTransformer computes; under 4 (`make
test-tl4`), that TransformerBridge computes the same."""

from __future__ import annotations

from pathlib import Path

import pytest

REFERENCE = Path(__file__).parent / "reference"
ARCHITECTURES = ("gpt2", "llama-gqa", "neox")
READINGS = ("kendall", "function_vectors", "attribution", "lenses")  # scripts/backend_agreement.py READINGS


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_same_numbers_as_the_hooked_transformer_reference(architecture, tmp_path, script):
    agreement = script("backend_agreement")
    assert agreement.ARCHITECTURES == ARCHITECTURES
    agreement.run(REFERENCE / architecture / "model", tmp_path / "result")
    worst = agreement.largest(REFERENCE / architecture / "result", tmp_path / "result")
    for kind in ("records", "deltas", "metrics"):
        tolerance, (quantity, difference) = agreement.TOLERANCES[kind], worst[kind]
        assert difference <= tolerance, f"{kind}: {quantity} differs by {difference:.3g} (tolerance {tolerance:g})"


@pytest.mark.parametrize("reading", READINGS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_same_readings_as_the_hooked_transformer_reference(reading, architecture, tmp_path, script):
    """An analysis of the committed result, recomputed here against its TransformerLens 3 reading committed beside it:
    Kendall's two sides (GD's refit, checked against the saved delta, and no finetuning), the per-head attribution
    (3.x's ICL patching runs the prediction position alone against cached keys and values; the bridge runs whole
    prompts) and every lens measure."""
    agreement = script("backend_agreement")
    assert tuple(agreement.READINGS) == READINGS
    write, difference, kind, reference = agreement.READINGS[reading]
    folder = REFERENCE / architecture
    write(folder / "model", folder / "result", tmp_path / reference)
    name, diff = difference(folder / reference, tmp_path / reference)
    tolerance = agreement.TOLERANCES[kind]
    assert diff <= tolerance, f"{name} differs by {diff:.3g} (tolerance {tolerance:g})"
