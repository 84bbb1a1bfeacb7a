"""The same comparison on both backends: the committed tiny checkpoints' results (tests/bridge/reference/<arch>/result,
computed with TransformerLens 3 by `analyses/backend_agreement.py run`) recomputed in this environment, every
record, delta and number within the tolerances the toolkit promises (analyses/backend_agreement.py: TOLERANCES).
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
    for kind, tolerance in agreement.TOLERANCES.items():
        quantity, difference = worst[kind]
        assert difference <= tolerance, f"{kind}: {quantity} differs by {difference:.3g} (tolerance {tolerance:g})"
