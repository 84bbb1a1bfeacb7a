"""The read-out: a model's final norm and unembedding, as its own forward applies them.

GD's loss, LCGD's per-layer losses, the recorded label log-probabilities and attribution all read logits through
`Readout`, so that every path computes the same function with the same kernel.
"""

from __future__ import annotations

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from iclgd_lens.backend import LensModel


class Readout:
    """`model.ln_final` (absent in norm-free models) then the unembedding, with W_U's transposed copy made once.

    TransformerLens 3.9's Unembed computes F.linear(x, W_U.T.contiguous(), b_U) (for bf16 parity with HF) and so
    copies W_U on every call, which for a 50k vocabulary cost a quarter of a GD step. The same kernel on a copy
    made once gives logits bit-identical to `model(tokens)`."""

    def __init__(self, model: LensModel) -> None:
        self.final_norm = getattr(model, "ln_final", None)
        self.W_U_T = model.unembed.W_U.detach().T.contiguous()
        self.b_U = model.unembed.b_U

    def __call__(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        return F.linear(self.final_norm(resid) if self.final_norm is not None else resid, self.W_U_T, self.b_U)
