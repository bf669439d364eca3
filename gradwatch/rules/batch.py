"""A rule's decisions on a batch of one series' points, with numpy (``Rule.evaluate_batch``).

Thresholds, nonfinite and growth rules, and ``for`` streaks, decided over a whole batch exactly
as ``Rule.evaluate`` would decide them point by point (tests/test_batch_engine.py and the
property tests compare the two); None sends a batch point by point (anomaly, baseline, absent,
or a growth window whose cap could bind).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gradwatch.rules.growth import growth_group
from gradwatch.rules.modes import ABSOLUTE, BELOW, GROWTH, NONFINITE
from gradwatch.rules.outcome import RuleBatch, fill_segments, ranked

__all__ = ["RuleBatch", "evaluate_batch", "evaluate_group"]

if TYPE_CHECKING:
    from gradwatch.rules import Rule, RuleState


def evaluate_batch(rule: Rule, state: RuleState, steps: np.ndarray, values: np.ndarray) -> RuleBatch | None:
    """``rule.evaluate`` over a batch of points (int64 steps, float64 values) without touching
    ``state``; None when this rule must go point by point (anomaly, baseline, absent, or a
    growth window the batch could push past MAX_GROWTH_WINDOW)."""
    mode = rule._mode
    evidence: np.ndarray | None = None  # the points ``for`` counts (None: all of them)
    if mode <= ABSOLUTE:
        b = _thresholds_batch(rule, state, values)
        evidence = np.isfinite(values)
    elif mode == NONFINITE:
        if state.raw == 0 and _all_within(values, rule._lo, rule._hi):
            return RuleBatch(None)
        b = RuleBatch(np.where(np.isfinite(values), 0, rule._top))
    elif mode == GROWTH:
        (b,) = growth_group(rule, [state], steps, values, np.array([0, len(values)]))  # type: ignore[assignment]
        evidence = np.isfinite(values)
    else:
        return None
    if b is None or rule.for_points <= 1 or b.ranks is None:
        return b  # a quiet batch (raw 0 before and after) leaves every streak at 0
    return _for_batch(rule, b, evidence, state)


def evaluate_group(
    rule: Rule, states: list[RuleState], steps: np.ndarray, values: np.ndarray, bounds: np.ndarray
) -> list[RuleBatch | None]:
    """``evaluate_batch`` of many series' batches laid end to end: batch k is
    ``steps[bounds[k]:bounds[k + 1]]`` (non-empty) from ``states[k]``, none of them touched, two
    batches of one series never in one group. The quiet check of thresholds and nonfinite rules
    and all of growth's work take a few numpy calls for the whole group, not a few per batch."""
    mode = rule._mode
    bounds_ = bounds.tolist()
    if mode <= ABSOLUTE or mode == NONFINITE:
        starts = bounds[:-1]
        # NaN propagates through min and max, so a batch with one is never quiet here
        quiet = (rule._lo <= np.minimum.reduceat(values, starts)) & (
            np.maximum.reduceat(values, starts) <= rule._hi
        )
        return [
            RuleBatch(None)
            if calm and not state.raw
            else evaluate_batch(rule, state, steps[a:b], values[a:b])
            for state, calm, a, b in zip(states, quiet.tolist(), bounds_, bounds_[1:])
        ]
    if mode != GROWTH:
        return [None] * len(states)
    out = growth_group(rule, states, steps, values, bounds)
    if rule.for_points > 1:
        for k, b in enumerate(out):
            if b is not None:
                a, z = bounds_[k], bounds_[k + 1]
                out[k] = _for_batch(rule, b, np.isfinite(values[a:z]), states[k])
    return out


def _for_batch(rule: Rule, b: RuleBatch, evidence: np.ndarray | None, state: RuleState) -> RuleBatch:
    """``for``: per level, the run of consecutive points (of evidence) at or above it, from the
    streak carried in, saturating at ``for``; the rank is the highest level whose run reached it.
    A point that is not evidence holds the rank and the streaks (``_held``)."""
    n = rule.for_points
    raws = b.ranks
    at = np.arange(len(raws)) if evidence is None else np.flatnonzero(evidence)
    raw_at = raws[at]  # type: ignore[index]
    pos = np.arange(len(at))
    best = np.zeros(len(at), dtype=np.int64)
    streaks = list(state.streaks)
    for i, rank in reversed(rule._indexed):  # lowest first: a higher rank overwrites
        last_break = np.maximum.accumulate(np.where(raw_at >= rank, -1, pos)) if len(at) else pos
        count = np.minimum(np.where(last_break >= 0, pos - last_break, pos + 1 + streaks[i]), n)
        best[count >= n] = rank
        if len(at):
            streaks[i] = int(count[-1])
    ranks = np.zeros(len(raws), dtype=np.int64)  # type: ignore[arg-type]
    ranks[at] = best
    if evidence is not None:
        ranks = _held(ranks, evidence, rule._held(state))
    b.raws, b.ranks, b.streaks = raws, ranks, streaks
    return b


def _thresholds_batch(rule: Rule, state: RuleState, values: np.ndarray) -> RuleBatch:
    if state.raw == 0 and _all_within(values, rule._lo, rule._hi):
        return RuleBatch(None)  # the quiet range: two reductions, no per-point work
    mode = rule._mode
    x = np.abs(values) if mode == ABSOLUTE else values
    with np.errstate(invalid="ignore"):
        conditions = [(rank, x < level if mode == BELOW else x > level) for rank, _, level in rule.levels]
    finite = np.isfinite(values)
    return RuleBatch(_held(ranked(conditions, len(values)), finite, state.raw))


def _all_within(values: np.ndarray, lo: float, hi: float) -> bool:
    """Every value in [lo, hi] (NaN is not: min/max propagate it and compare False)."""
    return bool(lo <= values.min() and values.max() <= hi)


_ONE_SEGMENT = np.zeros(1, dtype=np.int64)


def _held(ranks: np.ndarray, evidence: np.ndarray, raw: int) -> np.ndarray:
    """A point that is not evidence (a non-finite one) holds the rank of the last one that is,
    or ``raw``, the rank before the batch."""
    return fill_segments(ranks, evidence, np.array([raw], dtype=ranks.dtype), _ONE_SEGMENT)
