"""`CompareConfig`: every option of one comparison, validated where it is built (without torch), so that the
command line refuses a bad option before a model loads. `compare`, the command line, sweeps and result.json's
config all derive from this one dataclass."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from iclgd_lens.core.methods import available_methods, check_methods
from iclgd_lens.core.presets import (
    BASELINE_LRS,
    BASELINES,
    BIASES,
    CHOICES,
    DAI_LR_GRID,
    DEFAULT_GROUPS,
    LABEL_CONTROLS,
    LCGD_EXITS,
    LCGD_LRS,
    METHODS,
    PARAMETER_GROUP_NAMES,
    PRESETS,
    SUBSETS,
    Choices,
    check_choice,
    check_choices,
    check_groups,
    check_lr,
    check_permutation,
    resolve,
    separator_text,
)

CHOICE_NAMES = ("separator", *CHOICES)  # the preset's choices, each a field that overrides the preset
CHOICE_HELP = {f.name: f.metadata["help"] for f in fields(Choices)}


def option(default: Any, help: str, **cli: Any) -> Any:
    """A config field and what its command-line option needs (`cli.options` generates the option from it): `help`,
    and in `cli` any of `choices` (the names, or a function that lists them), `list` (a list option), `empty` (the
    list may be empty), `flag` (where it is not --field-name), `type`, `group` ("preset": the preset's choices),
    `default_text` (the help's words for the default) and `conditional` (the option defaults to None on the command
    line, so that one given where it does nothing is refused by `CompareConfig.unused`; its help names the default).
    Returns the dataclass field."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class CompareConfig:
    """Every choice of one comparison (docs/reference/cli.md lists each, docs/reference/presets.md explains the
    choices). Each field's help and choices live here once; the command line's options are generated from them.

    The nine choice fields (position, separator, truncation, text, gd_demos, order, precision, arithmetic, init)
    override the preset's where given; `choices` holds the resolved set."""

    k: int = option(32, "demonstrations")
    seed: int = option(0, "demonstration shuffle, baselines' init, random baseline")
    permutation: int = option(0, "order of the demonstrations; 0 keeps the shuffle")
    lr: float = option(1e-3, "SGD learning rate for GD on the trained model")
    lr_lcgd: float | str = option(
        "matched",
        "LCGD's learning rate: 'matched' (the lr at which its update is as large as GD's, within 2 %), 'gd' (GD's "
        "lr, as the papers do) or a number",
        conditional=True,
        type=str,
    )
    baseline_lr: str = option(
        "matched",
        "each untrained baseline's learning rate: 'matched' (per method, the lr at which its update is as large as "
        "the trained model's, within 2 %), 'paper' (the trained model's lr, as the papers do) or 'searched' (its "
        'own search over --lr-grid on held-out train rows; docs/science.md, "Update size")',
        choices=BASELINE_LRS,
        conditional=True,
    )
    lr_grid: tuple[float, ...] = option(
        DAI_LR_GRID,
        "learning rates a search tries (reproduce's --lr search, --lr-lcgd search, --baseline-lr searched)",
        list=True,
        conditional=True,
        default_text="Dai et al.'s 36 values, 1e-4 to 0.9",
    )
    n_heldout: int = option(128, "held-out train rows that score each lr of a search", conditional=True)
    methods: tuple[str, ...] = option(
        METHODS, "update rules (packages add theirs: docs/methods.md)", choices=available_methods, list=True
    )
    baselines: tuple[str, ...] = option(
        BASELINES, "untrained baselines (none: empty)", choices=BASELINES, list=True, empty=True
    )
    subsets: tuple[str, ...] = option(
        (), "also score these query subsets", choices=SUBSETS, list=True, empty=True, flag="--subset"
    )
    n_eval: int | None = option(None, "cap on evaluation queries", default_text="2000")
    batch_size: int = option(8, "queries per forward pass")
    groups: tuple[str, ...] = option(DEFAULT_GROUPS, "trained weights", choices=PARAMETER_GROUP_NAMES, list=True)
    lcgd_exit: str = option(
        "block", "LCGD read-out: after the block or attention", choices=LCGD_EXITS, conditional=True
    )
    biases: str = option(
        "checkpoint",
        "biases GD trains: those the checkpoint has, or all (absent ones from zero, as the papers' fairseq model has "
        "every bias)",
        choices=BIASES,
    )
    label_control: str | None = option(
        None,
        "also run the whole comparison with the demonstrations' labels shuffled (a seeded permutation) or their "
        "label words reversed, saved beside it in control-<kind>/",
        choices=LABEL_CONTROLS,
    )
    preset: str = option("toolkit", "the toolkit's or the reference's", choices=tuple(PRESETS), group="preset")
    position: str | None = option(None, CHOICE_HELP["position"], choices=CHOICES["position"], group="preset")
    separator: str | None = option(
        None,
        CHOICE_HELP["separator"] + " (\\n and \\t are read as newline and tab)",
        type=separator_text,
        group="preset",
    )
    truncation: str | None = option(None, CHOICE_HELP["truncation"], choices=CHOICES["truncation"], group="preset")
    text: str | None = option(None, CHOICE_HELP["text"], choices=CHOICES["text"], group="preset")
    gd_demos: str | None = option(None, CHOICE_HELP["gd_demos"], choices=CHOICES["gd_demos"], group="preset")
    order: str | None = option(None, CHOICE_HELP["order"], choices=CHOICES["order"], group="preset")
    precision: str | None = option(None, CHOICE_HELP["precision"], choices=CHOICES["precision"], group="preset")
    arithmetic: str | None = option(None, CHOICE_HELP["arithmetic"], choices=CHOICES["arithmetic"], group="preset")
    init: str | None = option(None, CHOICE_HELP["init"], choices=CHOICES["init"], group="preset")
    choices: Choices = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("methods", "baselines", "groups", "subsets"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "lr_grid", tuple(float(lr) for lr in self.lr_grid))
        choices = resolve(self.preset, **{name: getattr(self, name) for name in CHOICE_NAMES})
        object.__setattr__(self, "choices", choices)
        check_lr(self.lr)
        object.__setattr__(self, "lr_lcgd", _lcgd_lr(self.lr_lcgd))
        check_choice("baseline learning rate", self.baseline_lr, BASELINE_LRS)
        if self.baseline_lr == "searched":
            if not self.lr_grid:
                raise ValueError("--baseline-lr searched needs learning rates to try; give --lr-grid values")
            for lr in self.lr_grid:
                check_lr(lr)
        if self.n_heldout < 1:
            raise ValueError(f"n_heldout must be >= 1, got {self.n_heldout}")
        check_choice("bias setting", self.biases, BIASES)
        check_choices("method", self.methods, available_methods(), allow_empty=False)
        check_choices("baseline", self.baselines, BASELINES, allow_empty=True)
        check_choices("subset", self.subsets, SUBSETS, allow_empty=True)
        check_groups(self.groups)
        check_choice("LCGD exit", self.lcgd_exit, LCGD_EXITS)
        check_methods(self)
        if self.label_control is not None:
            check_choice("label control", self.label_control, LABEL_CONTROLS)
        check_permutation(self.permutation, choices.order)
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k} (with k=0 ICL is ZS and there is no update to compare)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.n_eval is not None and self.n_eval < 1:
            raise ValueError(f"n_eval must be >= 1, got {self.n_eval}")

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.init)

    @classmethod
    def build(cls, config: CompareConfig | None = None, **options: Any) -> CompareConfig:
        """`config` with `options` replaced (or a new config from `options`); an unknown option name is an error
        that names the closest field, and so is an option given that the comparison would not use (`unused`)."""
        names = cls.option_names()
        for name in options:
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; the options are {list(names)}"
                raise TypeError(f"unknown comparison option {name!r}{hint}")
        built = replace(config, **options) if config is not None else cls(**options)
        unused = built.unused(options)
        if unused:
            raise ValueError(unused[0])
        return built

    def unused(self, given: Iterable[str]) -> list[str]:
        """Why each of the `given` options does nothing in this comparison (empty where every one applies): an
        option that would be recorded as if it had been used."""
        lcgd = [m for m in self.methods if m.startswith("lcgd")]
        searched = self.baseline_lr == "searched"
        reasons = {
            "lr_lcgd": None if "lcgd" in self.methods else "sets LCGD's learning rate, and LCGD is not run",
            "lcgd_exit": None if lcgd else "sets LCGD's read-out, and no LCGD method is run",
            "baseline_lr": None if self.baselines else "sets the baselines' learning rate, and no baseline is run",
            "lr_grid": None if searched else "is what a search tries, and nothing is searched",
            "n_heldout": None if searched else "scores a search's learning rates, and nothing is searched",
        }
        return [
            f"--{name.replace('_', '-')} {reasons[name]} (methods {list(self.methods)}, baselines "
            f"{list(self.baselines)}, --baseline-lr {self.baseline_lr}): leave it out"
            for name in given
            if reasons.get(name)
        ]

    def method_lr(self, method: str) -> float:
        """The learning rate `method` starts from on the trained model: LCGD's own where given as a number, else
        GD's (where LCGD's is matched, the search for it starts there)."""
        return self.lr_lcgd if method == "lcgd" and isinstance(self.lr_lcgd, float) else self.lr

    def matched(self, method: str, subject: str) -> bool:
        """Whether `method`'s lr on `subject` ("model" or a baseline) is searched for a matched update size."""
        if subject != "model":
            return self.baseline_lr == "matched"  # "searched": its own search; "paper": the trained model's lr
        return method == "lcgd" and self.lr_lcgd == "matched"

    def to_json(self) -> dict[str, Any]:
        """The options as result.json's config records them: lists for tuples and the resolved choices in place of
        the overrides (`compare` replaces `lr_lcgd` by the number LCGD trained with and adds `lr_lcgd_rule`)."""
        data = {name: getattr(self, name) for name in self.option_names() if name not in CHOICE_NAMES}
        data = {name: list(value) if isinstance(value, tuple) else value for name, value in data.items()}
        return data | self.choices.to_dict()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CompareConfig:
        """The config a result.json records (its other entries, such as the model's name, are left out): LCGD's lr
        rule where it was matched or GD's, and the papers' baseline lr for results written before `baseline_lr`."""
        names = set(cls.option_names())
        options = {name: tuple(v) if isinstance(v, list) else v for name, v in data.items() if name in names}
        if data.get("lr_lcgd_rule") in LCGD_LRS:
            options["lr_lcgd"] = data["lr_lcgd_rule"]
        elif data.get("lr_lcgd_rule") == "not run":
            del options["lr_lcgd"]  # recorded as None: no LCGD lr was used
        return cls(**{"baseline_lr": "paper"} | options)


def _lcgd_lr(value: float | str | None) -> float | str:
    """LCGD's lr as the config holds it: "matched", "gd" (None too, as older results wrote it) or a checked float."""
    if value is None:
        return "gd"
    if isinstance(value, str) and value in LCGD_LRS:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"--lr-lcgd (lr_lcgd) takes {' or '.join(repr(v) for v in LCGD_LRS)} or a number, got {value!r}"
        ) from None
    if not 0 < number < float("inf"):
        raise ValueError(f"--lr-lcgd (lr_lcgd) must be a positive finite number, got {value!r}")
    return number
