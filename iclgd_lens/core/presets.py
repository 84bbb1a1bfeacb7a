"""The vocabulary of every option, its checks, and the toolkit's and the reference code's choices
(docs/reference/presets.md).

Every choice where the reference pipeline (GiilDe/ft-vs-icl, a fork of microsoft/LMOps understand_icl) differs from
the toolkit's default is one field of `Choices`. A preset fills every field; each can be overridden on its own.
This module imports nothing heavy: the command line reads its vocabulary for `--help`, and every option is checked
here before a model loads.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields, replace

# The valid values of every option, shared by the API and the command line.
METHODS = ("gd", "lcgd")
BASELINES = ("no_training", "trained_norms", "trained_embeddings")
PARAMETER_GROUP_NAMES = ("q", "k", "v", "o", "mlp", "mlp_in")  # core.deltas.PARAMETER_GROUPS holds their parameters
DEFAULT_GROUPS = ("k", "v")
LCGD_EXITS = ("block", "attn")
BIASES = ("checkpoint", "all")  # the biases GD trains: the checkpoint's own, or every one (absent ones from zero)
SUBSETS = ("f2t",)
# The demonstrations' labels under a label control: a seeded permutation of them, or each class named by the word of
# class n − 1 − c (core.episodes.shown_labels).
LABEL_CONTROLS = ("shuffled", "reversed")
# How each untrained baseline's lr is chosen (docs/science.md, "Update size"): its update as large as the trained
# model's, the trained model's lr as the papers do, or its own held-out search over `lr_grid`.
BASELINE_LRS = ("matched", "paper", "searched")
# LCGD's lr, besides a number: its update as large as GD's, or GD's lr as the papers do.
LCGD_LRS = ("matched", "gd")
VERIFY_TOP = 10  # attribution: heads per method (and for ICL patching) that atp+verify runs exactly
# Dai et al.'s learning-rate grid: {1..9} x {1e-1, 1e-2, 1e-3, 1e-4}
DAI_LR_GRID: tuple[float, ...] = tuple(
    float(f"{digit}e-{exponent}") for exponent in (1, 2, 3, 4) for digit in range(1, 10)
)

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


def check_choice(kind: str, value: str, valid: tuple[str, ...]) -> str:
    """`value` if it is one of `valid`, else an error naming both."""
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; use one of {list(valid)}")
    return value


def check_choices(kind: str, values: tuple[str, ...], valid: tuple[str, ...], allow_empty: bool) -> tuple[str, ...]:
    """`values` as a tuple if each is one of `valid`, without repeats (and not empty unless allowed)."""
    values = tuple(values)
    unknown = [v for v in values if v not in valid]
    if unknown or (not values and not allow_empty) or len(set(values)) != len(values):
        raise ValueError(f"invalid {kind}s {list(values)}; choose (without repeats) from {list(valid)}")
    return values


def check_groups(groups: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [g for g in groups if g not in PARAMETER_GROUP_NAMES]
    if unknown or not groups:
        raise ValueError(
            f"unknown parameter groups {unknown or list(groups)}; choose from {list(PARAMETER_GROUP_NAMES)}"
        )
    return tuple(groups)


def check_lr(lr: float) -> float:
    if not lr > 0 or lr != lr or lr == float("inf"):
        raise ValueError(f"learning rate must be a positive finite number, got lr={lr}")
    return lr


def check_permutation(permutation: int, order: str) -> None:
    if permutation < 0:
        raise ValueError(f"permutation must be >= 0 (0 keeps the shuffled order), got {permutation}")
    if order == "reference" and permutation >= REFERENCE_PERMUTATIONS:
        raise ValueError(
            f"permutation {permutation} does not exist in the reference code, which draws {REFERENCE_PERMUTATIONS}"
            f" (use 0 to {REFERENCE_PERMUTATIONS - 1}, or order='toolkit')"
        )


@dataclass(frozen=True)
class Choices:
    """Each choice where the toolkit and the reference code differ (each field's help says what it chooses)."""

    position: str = field(
        metadata={
            "help": "`prediction` (the last prompt token, which predicts the label) or `first_option` (the first "
            "label's last token, appended to the prompt: where the reference records)."
        }
    )
    separator: str = field(
        metadata={"help": 'between demonstrations: `eos` (the end-of-sequence token) or any text such as "\\n".'}
    )
    truncation: str = field(
        metadata={
            "help": "`fit` drops each demonstration that would overflow the context and keeps later ones that fit; "
            "`reference` stops at the first that would overflow, with the reference's budget (a strict `< n_ctx` "
            "test that counts BOS twice: two tokens fewer)."
        }
    )
    text: str = field(
        metadata={
            "help": "`normalised` collapses whitespace in the inputs; `raw` keeps it (SST-2's trailing space) and "
            "encodes an input with newlines line by line, the lines joined by the end-of-sequence token."
        }
    )
    gd_demos: str = field(
        metadata={"help": "GD/LCGD train on `kept` (ICL's demonstrations) or on `all` k, even those ICL dropped."}
    )
    order: str = field(
        metadata={
            "help": "permutation p > 0: `toolkit` (numpy Generator seeded with [seed, p], GD in the prompt's "
            "order) or `reference` (legacy np.random.seed(seed) draws: ICL uses draw p + 1, GD draw 6 + p)."
        }
    )
    precision: str = field(
        metadata={
            "help": "`native` (the model's dtype throughout) or `fp16-mixed` (fairseq's FP16Optimizer: fp16 "
            "forward/backward with loss scaling, fp32 master delta, evaluated as round16(W + ΔW))."
        }
    )
    arithmetic: str = field(
        metadata={
            "help": "`exact` (scale-invariant cosine, NaN for a zero vector, NaN skipped in the means) or "
            "`reference` (dot / (|a||b| + 1e-20), zeros averaged in)."
        }
    )
    init: str = field(
        metadata={"help": "baselines' re-initialisation: `transformer_lens` or `fairseq` (the reference's)."}
    )

    def __post_init__(self) -> None:
        for name, valid in CHOICES.items():
            check_choice(name, getattr(self, name), valid)
        if not self.separator:
            raise ValueError("separator must be 'eos' or a non-empty text such as '\\n'")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Choices:
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


def separator_text(value: str) -> str:
    """Returns `value` with its escapes read: `--separator '\\n'` reaches us as backslash + n, and the separator
    meant is a newline (\\t a tab, \\\\ a backslash)."""
    escapes = {"n": "\n", "t": "\t", "\\": "\\"}
    return re.sub(r"\\([nt\\])", lambda match: escapes[match.group(1)], value)
