"""Write a bundled-format tiny model (what scripts/train_tiny_icl.py writes) as a Hugging Face GPT-NeoX folder that
both TransformerLens backends load, with a model card that says how it was made.

    python scripts/export_neox.py runs/tiny-icl-rotary iclgd_lens/bundled/tiny-icl-neox
    python scripts/evaluate_icl.py --model iclgd_lens/bundled/tiny-icl-neox --write-card   # its accuracy table

The model must have GPT-NeoX's form (rotary positions, LayerNorm, GELU, no unembedding bias: train it with
`--pos rotary --no-unembed-bias`); the export is checked against transformers' own logits before it is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import AutoModelForCausalLM  # noqa: E402

from iclgd_lens.sources import export_neox, load_bundled  # noqa: E402

HEADER = """# {name}

The bundled tiny ICL model in GPT-NeoX's Hugging Face layout (`GPTNeoXForCausalLM`: rotary positions over each
whole head, LayerNorm, GELU, attention then MLP, no unembedding bias), so that TransformerLens 3 (through its
GPT-NeoX converter) and TransformerLens 4 (as a TransformerBridge) load the same weights: `load_model("{name}")`
on either backend. Trained by the project's recipe (`scripts/train_tiny_icl.py`, the commands below) in
TransformerLens' layout, then written here by `python scripts/export_neox.py {source} {out}`, which checks that
transformers' GPT-NeoX computes the trained model's logits (largest difference on a 12-token prompt:
{difference:.1e}).

The rest of this card is the trained checkpoint's own card (its architecture, data, training and accuracy).

"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a bundled-format folder (scripts/train_tiny_icl.py --out)")
    parser.add_argument("out", help="the Hugging Face folder to write")
    args = parser.parse_args(argv)
    model = load_bundled(args.source, device="cpu")
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; give a new folder (nothing is overwritten)")
    source_card = (Path(args.source) / "MODEL_CARD.md").read_text()
    staging = out.with_name(out.name + ".export")  # checked before it takes the folder's name
    export_neox(model, model.tokenizer, staging, "")
    tokens = torch.tensor([[0, *range(5, 16)]])
    with torch.no_grad():
        exported = AutoModelForCausalLM.from_pretrained(staging, local_files_only=True)(tokens).logits
        difference = (exported - model(tokens)).abs().max().item()
    if difference > 1e-4:
        raise SystemExit(f"transformers' GPT-NeoX differs from the trained model by {difference:.2g}; see {staging}")
    _, _, body = source_card.partition("\n")
    header = HEADER.format(name=out.name, source=args.source, out=args.out, difference=difference)
    (staging / "MODEL_CARD.md").write_text(header + "## The trained checkpoint" + body)
    staging.rename(out)
    print(f"wrote {out} (largest logit difference against the trained model: {difference:.1e})")


if __name__ == "__main__":
    main()
