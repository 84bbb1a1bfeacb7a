"""The toolkit's choices and the reference code's, resolved in one place (docs/science.md, "Presets").

Every choice where the reference pipeline (GiilDe/ft-vs-icl, a fork of microsoft/LMOps understand_icl) differs from
the toolkit's default is one field of `Choices`. A preset fills every field; each can be overridden on its own.
This module imports nothing heavy: the command line reads its vocabulary for `--help`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

# The valid values of every option, shared by the API and the command line.
METHODS = ("gd", "lcgd")
BASELINES = ("no_training", "trained_norms", "trained_embeddings")
PARAMETER_GROUP_NAMES = ("q", "k", "v", "o", "mlp")
LCGD_EXITS = ("block", "attn")
BIASES = ("checkpoint", "all")  # the biases GD trains: the checkpoint's own, or every one (absent ones from zero)
SUBSETS = ("f2t",)

CHOICES = {
    "position": ("prediction", "first_option"),
    "truncation": ("fit", "reference"),
    "text": ("normalised", "raw"),
    "gd_demos": ("kept", "all"),
    "order": ("toolkit", "reference"),
    "precision": ("native", "fp16-mixed"),
    "arithmetic": ("exact", "reference"),
    "init": ("transformer_lens", "fairseq"),
}  # `separator` is free text besides "eos"

REFERENCE_PERMUTATIONS = 5  # the reference draws five permutations per process: p = 0 (none) up to 4


@dataclass(frozen=True)
class Choices:
    """Each choice where the toolkit and the reference code differ.

    position:   `prediction` (the last prompt token, which predicts the label) or `first_option` (the first label's
                last token, appended to the prompt: where the reference records).
    separator:  between demonstrations: `eos` (the end-of-sequence token) or any text such as "\\n".
    truncation: `fit` drops each demonstration that would overflow the context and keeps later ones that fit;
                `reference` stops at the first that would overflow, with the reference's budget (a strict
                `< n_ctx` test that counts BOS twice: two tokens fewer).
    text:       `normalised` collapses whitespace in the inputs; `raw` keeps it (SST-2's trailing space) and
                encodes an input with newlines line by line, the lines joined by the end-of-sequence token.
    gd_demos:   GD/LCGD train on `kept` (ICL's demonstrations) or on `all` k, even those ICL dropped.
    order:      permutation p > 0: `toolkit` (numpy Generator seeded with [seed, p], GD in the prompt's order) or
                `reference` (legacy np.random.seed(seed) draws: ICL uses draw p + 1, GD draw 6 + p).
    precision:  `native` (the model's dtype throughout) or `fp16-mixed` (fairseq's FP16Optimizer: fp16
                forward/backward with loss scaling, fp32 master delta, evaluated as round16(W + ΔW)).
    arithmetic: `exact` (scale-invariant cosine, NaN for a zero vector, NaN skipped in the means) or `reference`
                (dot / (|a||b| + 1e-20), zeros averaged in).
    init:       baselines' re-initialisation: `transformer_lens` or `fairseq` (the reference's).
    """

    position: str
    separator: str
    truncation: str
    text: str
    gd_demos: str
    order: str
    precision: str
    arithmetic: str
    init: str

    def __post_init__(self) -> None:
        for name, valid in CHOICES.items():
            value = getattr(self, name)
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; use one of {list(valid)}")
        if not self.separator:
            raise ValueError("separator must be 'eos' or a non-empty text such as '\\n'")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Choices":
        return cls(**{f.name: data[f.name] for f in fields(cls)})


PRESETS = {
    "toolkit": Choices(
        position="prediction",
        separator="eos",
        truncation="fit",
        text="normalised",
        gd_demos="kept",
        order="toolkit",
        precision="native",
        arithmetic="exact",
        init="transformer_lens",
    ),
    "reference": Choices(
        position="first_option",
        separator="eos",
        truncation="reference",
        text="raw",
        gd_demos="all",
        order="reference",
        precision="fp16-mixed",
        arithmetic="reference",
        init="fairseq",
    ),
}


def resolve(preset: str = "toolkit", **overrides: str | None) -> Choices:
    """The preset's choices with every override that is not None, e.g. resolve("reference", position="prediction")."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; use one of {list(PRESETS)}")
    unknown = set(overrides) - {f.name for f in fields(Choices)}
    if unknown:
        raise ValueError(f"unknown choices {sorted(unknown)}; valid: {[f.name for f in fields(Choices)]}")
    return replace(PRESETS[preset], **{name: value for name, value in overrides.items() if value is not None})
