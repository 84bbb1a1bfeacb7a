"""Update rules as plug-ins: a method is a function from (model, episode, context) to a `Delta`.

`register_method(name, fn, options=...)` makes `name` a setting like GD and LCGD everywhere a method goes: compare,
reproduce, the tables, attribution, the lenses and the views; result.json records each method's options
(`config.method_options`). Packages register theirs under the entry-point group `iclgd_lens.methods` (the entry
point's name is the method's, its object the function), found without importing anything until the method runs.

Built in: `gd` and `lcgd` (the papers' plain SGD, one epoch, batch size 1) and two variants the Revisited paper's
discussion asks about, written through the same interface: `lcgd-normalised` (LCGD with a per-layer step size, each
layer's step lr · g_l / ‖g_l‖, so that no layer's update vanishes at a shared lr) and `gd-adam` (GD with Adam over
several epochs). This module imports nothing heavy: the command line lists the methods for `--help`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from iclgd_lens.core.presets import CHOICES, LCGD_EXITS, check_choice, check_lr

if TYPE_CHECKING:
    from iclgd_lens.backend import LensModel
    from iclgd_lens.core.deltas import Delta
    from iclgd_lens.core.episodes import Episode

ENTRY_POINT_GROUP = "iclgd_lens.methods"


@dataclass(frozen=True)
class MethodContext:
    """What a method is given besides the model and the episode (whose `train_demos` and `bos` it trains on)."""

    lr: float  # the comparison's learning rate for this method (an "lr" option replaces it)
    # Per-block parameter names to train ('attn.W_K', ...): the delta must hold these (None: the model's default,
    # `deltas.trained_parameters`).
    parameters: tuple[str, ...] | None = None
    lcgd_exit: str = "block"
    precision: str = "native"
    progress: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # the method's registered options

    def __post_init__(self) -> None:
        check_lr(self.lr)
        check_choice("LCGD exit", self.lcgd_exit, LCGD_EXITS)
        check_choice("precision", self.precision, CHOICES["precision"])
        if self.parameters is not None:
            object.__setattr__(self, "parameters", tuple(self.parameters))


Method = Callable[["LensModel", "Episode", MethodContext], "Delta"]
# What a method checks of a comparison (a `CompareConfig`: untyped here, as config imports this module) before
# anything loads, with its registered options; it raises ValueError for what it cannot train.
MethodCheck = Callable[[Any, dict[str, Any]], None]


@dataclass(frozen=True)
class Registered:
    fn: Method
    options: dict[str, Any]
    description: str
    check: MethodCheck | None = None


_REGISTRY: dict[str, Registered] = {}


def register_method(
    name: str,
    fn: Method,
    options: dict[str, Any] | None = None,
    description: str = "",
    check: MethodCheck | None = None,
) -> None:
    """Make `fn` the method `name` (replacing an earlier registration of that name). `options` (JSON values) are
    passed to it as `context.options` and recorded in result.json; an "lr" option replaces the comparison's lr.
    `check(config, options)`, if given, refuses (ValueError) the comparisons the method cannot run, when their
    `CompareConfig` is built: before any model loads. Returns nothing; the method is usable at once."""
    if not name or "/" in name or " " in name or name in ("zs", "icl"):
        raise ValueError(f"a method's name must be a word without '/' or spaces, other than zs and icl; got {name!r}")
    if not callable(fn):
        raise ValueError(f"method {name!r}: expected a function (model, episode, context) -> Delta, got {fn!r}")
    options = dict(options or {})
    check_options(name, options)
    _REGISTRY[name] = Registered(fn, options, description, check)


def check_options(name: str, options: dict[str, Any]) -> None:
    """A method's options must be what result.json can record (JSON: strings, finite numbers, booleans, None, lists
    and objects of them), and an "lr" option a positive finite number."""
    for option, value in options.items():
        if not isinstance(option, str):
            raise ValueError(f"method {name!r}: option names must be strings, got {option!r}")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(
                f"method {name!r}: option {option!r} = {value!r} is not a JSON value (a string, a finite "
                "number, a boolean, None, or a list or dict of them), so result.json could not record "
                "it"
            ) from None
    lr = options.get("lr")
    if lr is not None and not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and 0 < lr < math.inf):
        raise ValueError(f"method {name!r}: option 'lr' must be a positive finite number, got {lr!r}")


def check_methods(config: Any) -> None:
    """Each method's own check of the comparison (`register_method`'s `check`), its error prefixed with its name."""
    for name in config.methods:
        method = registered(name)
        if method.check is not None:
            try:
                method.check(config, method.options)
            except ValueError as error:
                message = str(error)
                raise ValueError(message if message.startswith(f"method {name!r}") else f"method {name!r}: {message}")


def unregister_method(name: str) -> None:
    """Remove a method registered in this process (the built-ins included)."""
    _REGISTRY.pop(name, None)


def available_methods() -> tuple[str, ...]:
    """Returns every method name: those registered in this process, then those packages declare as entry points."""
    declared = [point.name for point in entry_points(group=ENTRY_POINT_GROUP) if point.name not in _REGISTRY]
    return (*_REGISTRY, *declared)


def method_options(name: str) -> dict[str, Any]:
    return dict(registered(name).options)


def registered(name: str) -> Registered:
    """The method `name`, loading its entry point on first use; an unknown name is an error that lists the rest."""
    if name not in _REGISTRY:
        points = [point for point in entry_points(group=ENTRY_POINT_GROUP) if point.name == name]
        if not points:
            raise ValueError(
                f"unknown method {name!r}; choose from {list(available_methods())} or register one "
                "(iclgd_lens.register_method, docs/methods.md)"
            )
        register_method(name, points[0].load(), description=f"entry point {points[0].value}")
    return _REGISTRY[name]


def run_method(name: str, model: LensModel, episode: Episode, context: MethodContext) -> Delta:
    """The method's delta, checked: it must change exactly the parameters it was asked to train, each with its
    parameter's shape, with finite values."""
    method = registered(name)
    lr = float(method.options.get("lr", context.lr))
    context = replace(context, lr=lr, options=dict(method.options))
    delta = method.fn(model, episode, context)
    check_delta(name, model, delta, context.parameters)
    return delta


def check_delta(name: str, model: LensModel, delta: Delta, parameters: Sequence[str]) -> None:
    from iclgd_lens.core.deltas import Delta as DeltaType

    if not isinstance(delta, DeltaType):
        raise ValueError(f"method {name!r} returned {type(delta).__name__}, not a Delta")
    expected = DeltaType.zeros(model, parameters).tensors
    missing, unknown = sorted(set(expected) - set(delta.tensors)), sorted(set(delta.tensors) - set(expected))
    if missing or unknown:
        raise ValueError(
            f"method {name!r} returned a Delta of other parameters than it was asked to train: "
            f"missing {missing[:3]}, unexpected {unknown[:3]} (train {list(parameters)})"
        )
    wrong = [
        (n, tuple(t.shape), tuple(expected[n].shape)) for n, t in delta.tensors.items() if t.shape != expected[n].shape
    ]
    if wrong:
        parameter, got, want = wrong[0]
        raise ValueError(
            f"method {name!r} returned a Delta of the wrong shape: {parameter} is {got}, the parameter is {want}"
        )
    if not delta.is_finite():
        raise FloatingPointError(f"method {name!r} returned a non-finite delta; lower its learning rate")


FIT_OPTIONS = {"sgd": ("lr",), "layer-normalised": ("lr",), "adam": ("lr", "epochs", "betas")}


def _fit_check(method: str, step: str) -> MethodCheck:
    """What the built-in fits cannot do, refused before anything loads."""

    def check(config: Any, options: dict[str, Any]) -> None:
        unknown = sorted(set(options) - set(FIT_OPTIONS[step]))
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r} (this method takes {list(FIT_OPTIONS[step])})")
        epochs = options.get("epochs", 1)
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise ValueError(f"option 'epochs' must be an integer >= 1, got {epochs!r}")
        betas = options.get("betas", (0.9, 0.999))
        if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(0 <= b < 1 for b in betas)):
            raise ValueError(f"option 'betas' must be two numbers in [0, 1), got {betas!r}")
        if config.choices.precision == "fp16-mixed" and step != "sgd":
            raise ValueError(
                f"precision fp16-mixed reproduces the reference's SGD only; the {step} step needs "
                "--precision native (or leave this method out)"
            )
        untrainable = sorted({"mlp", "mlp_in"} & set(config.groups))
        if method == "lcgd" and config.lcgd_exit == "attn" and untrainable:
            raise ValueError(
                f"with --lcgd-exit attn each layer is read out after its attention, so the MLP weights "
                f"(--groups {' '.join(untrainable)}) get no gradient: use --lcgd-exit block or train "
                "attention weights only"
            )

    return check


def _fit(method: str, step: str = "sgd") -> Method:
    def fn(model: LensModel, episode: Episode, context: MethodContext) -> Delta:
        from iclgd_lens.core.finetuning import fit

        return fit(model, episode.train_demos, episode.bos, context, method, step)

    return fn


register_method(
    "gd", _fit("gd"), description="SGD on the causal-LM loss, one epoch, batch size 1", check=_fit_check("gd", "sgd")
)
register_method(
    "lcgd",
    _fit("lcgd"),
    description="layer-causal GD: each layer trained on its own read-out",
    check=_fit_check("lcgd", "sgd"),
)
register_method(
    "lcgd-normalised",
    _fit("lcgd", "layer-normalised"),
    description="LCGD, each layer's step lr · g_l / ‖g_l‖ (a per-layer step size)",
    check=_fit_check("lcgd", "layer-normalised"),
)
register_method(
    "gd-adam",
    _fit("gd", "adam"),
    options={"epochs": 3, "betas": [0.9, 0.999]},
    description="GD with Adam (no weight decay), batch size 1, three epochs",
    check=_fit_check("gd", "adam"),
)
