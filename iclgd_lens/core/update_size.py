"""Update size as a controlled variable: the learning rate at which a method's update has a given norm.

At one learning rate, subjects with different weight scales take updates of very different sizes (on Gemma 3 270M,
untrained baselines with its trained norms took 50-7,000 times the trained model's ‖ΔW‖), and a similarity between
two updates is then compared across update sizes as much as across subjects. `matched_lr` finds, for one subject
and method, the learning rate whose update's Frobenius norm over every trained tensor equals a target (the trained
model's) within `TOLERANCE`, training on the same demonstrations; docs/science.md, "Update size", says why the
toolkit compares at matched size by default.

The search runs in log-lr on log ‖ΔW‖, which one epoch of SGD makes close to a line of slope 1 (the first step's
update is exactly proportional to lr): a secant step from the starting lr, kept inside the bracket once the target
is bracketed, and bisection where the secant would leave it. A learning rate whose training diverges counts as too
large.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from iclgd_lens.core.deltas import Delta

TOLERANCE = 0.02  # |‖ΔW‖ / target − 1| at which a learning rate is accepted
LR_RANGE = (1e-10, 1e4)  # learning rates the search may try
MAX_FITS = 30


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
    target (or the search does not settle in `max_fits` fits)."""
    if not (target > 0 and math.isfinite(target)):
        raise ValueError(f"{subject}: the target update size is {target:g}; a matched learning rate needs a nonzero "
                         "finite target (did the trained model's update vanish?)")  # fmt: skip
    low, high = lr_range
    below: tuple[float, float] | None = None  # (log lr, log norm − log target) with a norm under the target
    above: tuple[float, float] | None = None
    tried: list[tuple[float, float]] = []
    log_lr = math.log(min(max(start, low), high))
    for _ in range(max_fits):
        lr = math.exp(log_lr)
        delta, norm = _fit_norm(fit, lr, n_layers)
        tried.append((lr, norm))
        if math.isfinite(norm) and norm > 0 and abs(norm / target - 1) <= tolerance:
            return lr, delta
        gap = math.log(norm / target) if norm > 0 else -math.inf  # +inf: diverged
        if gap < 0:
            below = (log_lr, gap) if below is None or log_lr > below[0] else below
        else:
            above = (log_lr, gap) if above is None or log_lr < above[0] else above
        log_lr = _next_log_lr(log_lr, gap, below, above, math.log(low), math.log(high))
        if log_lr is None:
            break
    reached = max((n for _, n in tried if math.isfinite(n)), default=math.nan)
    raise ValueError(
        f"{subject}: no learning rate in [{low:g}, {high:g}] gives an update of the trained model's size (‖ΔW‖ = "
        f"{target:.4g} ± {tolerance:.0%}) in {len(tried)} fits; the largest finite update was {reached:.4g}. "
        "Compare at the papers' learning rate instead (--baseline-lr paper, or --lr-lcgd gd for LCGD)"
    )


def _fit_norm(fit: Callable[[float], Delta], lr: float, n_layers: int) -> tuple[Delta | None, float]:
    try:
        delta = fit(lr)
    except FloatingPointError:  # diverged: too large
        return None, math.inf
    norm = delta.norms(n_layers)["total"]
    return delta, norm if math.isfinite(norm) else math.inf


def _next_log_lr(log_lr: float, gap: float, below, above, log_low: float, log_high: float) -> float | None:
    """The next log-lr: secant (slope from the bracket, else 1) clipped into the bracket, bisection where that
    fails; None when the range is exhausted on the side the target lies."""
    if below is not None and above is not None:
        if math.isfinite(above[1]) and math.isfinite(below[1]) and above[1] != below[1]:
            slope = (above[1] - below[1]) / (above[0] - below[0])
            guess = log_lr - gap / slope if slope > 0 else math.nan
        else:
            guess = math.nan
        inner = (below[0] + 0.05 * (above[0] - below[0]), above[0] - 0.05 * (above[0] - below[0]))
        return guess if inner[0] <= guess <= inner[1] else (below[0] + above[0]) / 2
    if gap == math.inf:  # diverged with nothing below yet: a decade down
        step = log_lr - math.log(10.0)
    elif gap == -math.inf:  # no update at all: a decade up
        step = log_lr + math.log(10.0)
    else:  # slope 1 in log-log, at most four decades at once
        step = log_lr - max(-4 * math.log(10.0), min(4 * math.log(10.0), gap))
    if step > log_high or step < log_low:
        edge = log_high if step > log_high else log_low
        return None if edge == log_lr else edge
    return step
