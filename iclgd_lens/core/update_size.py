"""Update size as a controlled variable: the learning rate at which a method's update has a given norm.

At one learning rate, subjects with different weight scales take updates of very different sizes (on Gemma 3 270M,
untrained baselines with its trained norms took 50-7,000 times the trained model's ‖ΔW‖), and a similarity between
two updates is then compared across update sizes as much as across subjects. `matched_lr` finds, for one subject
and method, the learning rate whose update's Frobenius norm over every trained tensor equals a target (the trained
model's) within `TOLERANCE`, training on the same demonstrations; docs/science.md, "Update size", says why the
toolkit compares at matched size by default.

The search runs in log-lr on log ‖ΔW‖, which one epoch of SGD makes close to a line of slope 1 at small lr (the
first step's update is exactly proportional to lr) but flatter at the lrs a search starts from (Gemma 3 270M's LCGD
from GD's lr: about 0.65, so that steps of slope 1 crept toward the target in six fits): a secant step from the
starting lr at slope 1, then at the slope of the last two fits while they lie on one side (where it is between
`MIN_SLOPE` and `MAX_LOCAL_SLOPE`), kept inside the bracket once the target is bracketed, and bisection where the
secant would leave it or where two steps in a row landed on one side of the target (a secant alone can creep toward
one end of a curved bracket). A learning rate whose training diverges counts as too large.

Past its stability edge SGD's update is not a continuous function of lr: on Gemma 3 270M with trained norms and
random weights, ‖ΔW‖ over 16 demonstrations is 0.83 at lr 9.6e-6, 0.43 at 9.7e-6 and 0.60 at 9.8e-6. There the
bracket shrinks onto a jump instead of a crossing; once it is narrower than `MIN_BRACKET` (relative lr) the search
stops with an error that shows the jump, and whether the norms it saw fell as lr rose. A fall of ‖ΔW‖ as lr rises
below the bracket's top stops it at once. And a learning rate that lands on the target is accepted only if its update is
a stable one: two more fits at lr / (1 + `STABILITY_STEP`) and lr · (1 + `STABILITY_STEP`) must give norms that
rise with lr at a local slope (d log ‖ΔW‖ / d log lr) between 0 and `MAX_LOCAL_SLOPE`, where stable SGD gives about
1 (Gemma's trained_norms baseline hit its target at lr 9.7e-6 with 0.83 at 9.6e-6 and 0.60 at 9.8e-6: local slopes
of about -60 and +30 there, a lucky draw of a chaotic map, not an update of that size).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from iclgd_lens.core.deltas import Delta

TOLERANCE = 0.02  # |‖ΔW‖ / target − 1| at which a learning rate is accepted
LR_RANGE = (1e-10, 1e4)  # learning rates the search may try
MAX_FITS = 30
MIN_BRACKET = 1e-4  # relative width in lr of a bracket that still straddles the target: a jump, not a crossing
STABILITY_STEP = 0.01  # relative lr step of the two fits that check an accepted lr's update is a stable one
MAX_LOCAL_SLOPE = 10.0  # the steepest d log ‖ΔW‖ / d log lr accepted there (stable SGD: about 1; chaotic: 30 and more)
MIN_SLOPE = 0.1  # the flattest slope of the last two fits an unbracketed step trusts (else it steps at slope 1)
UNSTABLE_ADVICE = (
    "No update of that size is found by a stable lr; compare at the papers' learning rate instead (--baseline-lr "
    "paper, or --lr-lcgd gd for LCGD), or leave this subject out"
)


def matched_lr(
    fit: Callable[[float], Delta],
    n_layers: int,
    target: float,
    start: float,
    subject: str,
    *,
    tolerance: float = TOLERANCE,
    lr_range: tuple[float, float] = LR_RANGE,
    max_fits: int = MAX_FITS,
) -> tuple[float, Delta]:
    """The learning rate (and its delta) at which `fit(lr)`'s update norm is `target` within `tolerance`, searched
    from `start`. `subject` names the subject and method in the error raised when no lr in `lr_range` reaches the
    target, reaches it only past SGD's stability edge, or does not settle in `max_fits` fits."""
    if not (target > 0 and math.isfinite(target)):
        raise ValueError(
            f"{subject}: the target update size is {target:g}; a matched learning rate needs a nonzero "
            "finite target (did the trained model's update vanish?)"
        )
    low, high = lr_range
    below: tuple[float, float] | None = None  # (log lr, log norm − log target) with a norm under the target
    above: tuple[float, float] | None = None
    tried: list[tuple[float, float]] = []
    sides: list[bool] = []  # whether each fit's norm was above the target
    crossing_lr: float | None = None  # the top of the first bracket: the target is crossed below it
    log_lr = math.log(min(max(start, low), high))
    for _ in range(max_fits):
        lr = math.exp(log_lr)
        delta, norm = _fit_norm(fit, lr, n_layers)
        tried.append((lr, norm))
        if math.isfinite(norm) and norm > 0 and abs(norm / target - 1) <= tolerance:
            _check_stable(fit, lr, norm, n_layers, subject)
            return lr, delta
        gap = math.log(norm / target) if norm > 0 else -math.inf  # +inf: diverged
        sides.append(gap > 0)
        bracketed = below is not None and above is not None  # then every new lr lies inside the bracket
        if gap < 0:
            below = (log_lr, gap) if below is None or bracketed or log_lr > below[0] else below
        else:
            above = (log_lr, gap) if above is None or bracketed or log_lr < above[0] else above
        if below is not None and above is not None:
            crossing_lr = crossing_lr or math.exp(max(below[0], above[0]))  # the first bracket's top: brackets shrink
            _check_no_fall(subject, target, tried, crossing_lr)
            if abs(above[0] - below[0]) < math.log1p(MIN_BRACKET):
                raise ValueError(_jump_message(subject, target, tolerance, tried, below, above))
        bisect = len(sides) >= 2 and sides[-1] == sides[-2]
        log_lr = _next_log_lr(log_lr, gap, below, above, math.log(low), math.log(high), bisect, _recent_slope(tried))
        if log_lr is None:
            break
    reached = max((n for _, n in tried if math.isfinite(n)), default=math.nan)
    raise ValueError(
        f"{subject}: no learning rate in [{low:g}, {high:g}] gives an update of the trained model's size (‖ΔW‖ = "
        f"{target:.4g} ± {tolerance:.0%}) in {len(tried)} fits; the largest finite update was {reached:.4g}. "
        "Compare at the papers' learning rate instead (--baseline-lr paper, or --lr-lcgd gd for LCGD)"
    )


def _jump_message(subject: str, target: float, tolerance: float, tried, below, above) -> str:
    """The error for a bracket that closed on a jump: the two sides, and a fall in ‖ΔW‖ as lr rose if one was seen
    (the mark of training past its stability edge)."""
    norm_at = dict(tried)
    low_lr, high_lr = math.exp(below[0]), math.exp(above[0])
    falls = _falls(tried)
    fall = (
        f"; ‖ΔW‖ also fell as lr rose (lr {falls[0][0][0]:.6g} gave {falls[0][0][1]:.4g}, lr "
        f"{falls[0][1][0]:.6g} gave {falls[0][1][1]:.4g}), so training is past its stability edge here"
        if falls
        else ""
    )
    return (
        f"{subject}: ‖ΔW‖ jumps over the trained model's update size ({target:.4g} ± {tolerance:.0%}) instead of "
        f"crossing it: lr {low_lr:.6g} gives {norm_at[low_lr]:.4g} and lr {high_lr:.6g} gives {norm_at[high_lr]:.4g} "
        f"({len(tried)} fits){fall}. {UNSTABLE_ADVICE}"
    )


def _check_no_fall(subject: str, target: float, tried: list[tuple[float, float]], crossing_lr: float) -> None:
    """Stop the search where ‖ΔW‖ fell as lr rose anywhere up to `crossing_lr`, the top of the first bracket: stable
    SGD's update grows with lr and instability only grows with lr, so a fall below the crossing means the target lies
    past the stability edge, and any lr found there would be a draw of a chaotic map. Falls above it (or a
    diverging fit) say nothing about the crossing."""
    falls = _falls(tried, crossing_lr)
    if falls:
        (lr_a, norm_a), (lr_b, norm_b) = falls[0]
        raise ValueError(
            f"{subject}: ‖ΔW‖ falls as lr rises below where it reaches the trained model's update size "
            f"({target:.4g}): lr {lr_a:.6g} gives {norm_a:.4g} and lr {lr_b:.6g} gives {norm_b:.4g} ({len(tried)} "
            f"fits), so training is past its stability edge there. {UNSTABLE_ADVICE}"
        )


def _falls(tried: list[tuple[float, float]], up_to: float = math.inf) -> list[tuple[tuple[float, float], ...]]:
    """The neighbouring fits, in rising lr up to `up_to` (finite norms only), whose ‖ΔW‖ fell as lr rose."""
    ordered = sorted((lr, n) for lr, n in tried if lr <= up_to and math.isfinite(n))
    return [(a, b) for a, b in zip(ordered, ordered[1:]) if b[1] < a[1]]


def _check_stable(fit: Callable[[float], Delta], lr: float, norm: float, n_layers: int, subject: str) -> None:
    """Refuse an accepted lr whose update is not a stable one: at lr / (1 + step) and lr · (1 + step), ‖ΔW‖ must
    rise with lr at a local slope in (0, `MAX_LOCAL_SLOPE`]."""
    side_lrs = [lr / (1 + STABILITY_STEP), lr * (1 + STABILITY_STEP)]
    sides = [(side_lr, _fit_norm(fit, side_lr, n_layers)[1]) for side_lr in side_lrs]
    slopes = [_log_slope((lr, norm), side) for side in sides]
    if all(0 < slope <= MAX_LOCAL_SLOPE for slope in slopes):
        return
    shown = " and ".join(f"lr {side_lr:.6g} gives {n:.4g}" for side_lr, n in sides)
    raise ValueError(
        f"{subject}: lr {lr:.6g} gives an update of the trained model's size ({norm:.4g}) but not a stable one: "
        f"{shown} (local slope of log ‖ΔW‖ in log lr {slopes[0]:.3g} below and {slopes[1]:.3g} above; stable SGD "
        f"gives about 1, accepted up to {MAX_LOCAL_SLOPE:g}), so training is past its stability edge there. "
        f"{UNSTABLE_ADVICE}"
    )


def _fit_norm(fit: Callable[[float], Delta], lr: float, n_layers: int) -> tuple[Delta | None, float]:
    try:
        delta = fit(lr)
    except FloatingPointError:  # diverged: too large
        return None, math.inf
    norm = delta.norms(n_layers)["total"]
    return delta, norm if math.isfinite(norm) else math.inf


def _recent_slope(tried: list[tuple[float, float]]) -> float:
    """d log ‖ΔW‖ / d log lr between the last two fits, where both are finite and nonzero and it lies in
    [`MIN_SLOPE`, `MAX_LOCAL_SLOPE`]; else 1 (a falling, flat, diverging or chaotic pair says nothing usable)."""
    if len(tried) < 2:
        return 1.0
    (lr_a, norm_a), (lr_b, norm_b) = tried[-2:]
    if lr_a == lr_b or not all(math.isfinite(n) and n > 0 for n in (norm_a, norm_b)):
        return 1.0
    slope = _log_slope(tried[-2], tried[-1])
    return slope if MIN_SLOPE <= slope <= MAX_LOCAL_SLOPE else 1.0


def _log_slope(a: tuple[float, float], b: tuple[float, float]) -> float:
    """d log ‖ΔW‖ / d log lr from fit `a` to fit `b` (lr, norm; `a`'s norm positive); -inf where `b` has no update."""
    return math.log(b[1] / a[1]) / math.log(b[0] / a[0]) if b[1] > 0 else -math.inf


def _next_log_lr(
    log_lr: float, gap: float, below, above, log_low: float, log_high: float, bisect: bool, recent_slope: float
) -> float | None:
    """The next log-lr: secant (slope from the bracket, else `recent_slope`, the last two fits') clipped into the
    bracket, bisection where that fails or `bisect` asks for it; None when the range is exhausted on the side the
    target lies."""
    if below is not None and above is not None:
        middle = (below[0] + above[0]) / 2
        if bisect or not (math.isfinite(above[1]) and math.isfinite(below[1]) and above[1] != below[1]):
            return middle
        slope = (above[1] - below[1]) / (above[0] - below[0])
        guess = log_lr - gap / slope if slope > 0 else math.nan
        inner = (below[0] + 0.05 * (above[0] - below[0]), above[0] - 0.05 * (above[0] - below[0]))
        return guess if inner[0] <= guess <= inner[1] else middle
    if gap == math.inf:  # diverged with nothing below yet: a decade down
        step = log_lr - math.log(10.0)
    elif gap == -math.inf:  # no update at all: a decade up
        step = log_lr + math.log(10.0)
    else:  # the secant at the last two fits' slope in log-log, at most four decades at once
        step = log_lr - max(-4 * math.log(10.0), min(4 * math.log(10.0), gap / recent_slope))
    if step > log_high or step < log_low:
        edge = log_high if step > log_high else log_low
        return None if edge == log_lr else edge
    return step
