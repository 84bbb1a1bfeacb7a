"""The same comparison on both backends: the committed results of the tiny checkpoints and of the bundled
tiny-icl-neox (tests/bridge/reference/<checkpoint>/result, computed with TransformerLens 3 by
`scripts/backend_agreement.py run`) recomputed in this environment, every
record, delta and number within the tolerances the toolkit promises (scripts/backend_agreement.py: TOLERANCES), and
Kendall's inputs (kendall-scores.npz), the per-head attribution (attribution.csv) and the lenses (lenses.npz).
Under TransformerLens 3 this checks that the reference still is what HookedTransformer computes; under 4 (`make
test-tl4`), that TransformerBridge computes the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from iclgd_lens.sources.bundled import BUNDLED_DIR

REFERENCE = Path(__file__).parent / "reference"
ARCHITECTURES = ("gpt2", "llama-gqa", "neox")  # tiny random checkpoints: REFERENCE/<architecture>/model
BUNDLED = "tiny-icl-neox"  # the trained bundled model both backends load, on synth-sst2
CHECKPOINTS = (*ARCHITECTURES, BUNDLED)
READINGS = ("kendall", "function_vectors", "attribution", "lenses")  # scripts/backend_agreement.py READINGS


def model_folder(checkpoint: str) -> Path:
    """The Hugging Face folder of a checkpoint of CHECKPOINTS."""
    return BUNDLED_DIR / BUNDLED if checkpoint == BUNDLED else REFERENCE / checkpoint / "model"


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_same_numbers_as_the_hooked_transformer_reference(checkpoint, tmp_path, script):
    agreement = script("backend_agreement")
    assert agreement.ARCHITECTURES == ARCHITECTURES and set(agreement.BUNDLED_TASKS) == {BUNDLED}
    agreement.run(model_folder(checkpoint), tmp_path / "result", agreement.BUNDLED_TASKS.get(checkpoint))
    worst = agreement.largest(REFERENCE / checkpoint / "result", tmp_path / "result")
    for kind in ("records", "deltas", "metrics"):
        tolerance, (quantity, difference) = agreement.TOLERANCES[kind], worst[kind]
        assert difference <= tolerance, f"{kind}: {quantity} differs by {difference:.3g} (tolerance {tolerance:g})"


@pytest.mark.parametrize("reading", READINGS)
@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_same_readings_as_the_hooked_transformer_reference(reading, checkpoint, tmp_path, script):
    """An analysis of the committed result, recomputed here against its TransformerLens 3 reading committed beside it:
    Kendall's two sides (GD's refit, checked against the saved delta, and no finetuning), the per-head attribution
    (3.x's ICL patching runs the prediction position alone against cached keys and values; the bridge runs whole
    prompts) and every lens measure."""
    agreement = script("backend_agreement")
    assert tuple(agreement.READINGS) == READINGS
    write, difference, kind, reference = agreement.READINGS[reading]
    folder = REFERENCE / checkpoint
    write(model_folder(checkpoint), folder / "result", tmp_path / reference)
    name, diff = difference(folder / reference, tmp_path / reference)
    tolerance = agreement.TOLERANCES[kind]
    assert diff <= tolerance, f"{name} differs by {diff:.3g} (tolerance {tolerance:g})"
