"""A rule's decisions on a batch of one series' points, with numpy (``Rule.evaluate_batch``).

Thresholds, nonfinite and growth rules, and ``for`` streaks, decided over a whole batch exactly
as ``Rule.evaluate`` would decide them point by point (tests/test_batch_engine.py and the
property tests compare the two); None sends a batch point by point (anomaly, baseline, absent,
or a growth window whose cap could bind).
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from gradwatch.rules.modes import ABSOLUTE, BELOW, GROWTH, MAX_GROWTH_WINDOW, NONFINITE

if TYPE_CHECKING:
    from gradwatch.rules import Rule, RuleState


class RuleBatch:
    """One rule's decisions on a batch of one series' points, before they touch its state.

    ``ranks[j]`` is the rank point j puts the series at, after ``for`` (None: every point 0);
    ``raws[j]`` the rank before ``for`` (``raw`` after the point; None: the same as ranks).
    ``measures[j]`` is a growth rule's ``ratio`` after point j (None for other kinds).
    ``at(state, j)`` gives ``state`` what a sink reads of it after point j; ``commit(state)``
    the state after the whole batch.
    """

    __slots__ = ("last_step", "measures", "ranks", "raws", "streaks", "window")

    def __init__(
        self,
        ranks: np.ndarray | None,
        measures: np.ndarray | None = None,
        window: deque | None = None,
        last_step: int | None = None,
    ) -> None:
        self.ranks = ranks
        self.raws: np.ndarray | None = None
        self.streaks: list[int] | None = None  # ``for``: the streaks after the batch
        self.measures = measures
        self.window = window  # growth: the window after the batch (None: unchanged)
        self.last_step = last_step

    def at(self, state: RuleState, j: int) -> None:
        raws = self.raws if self.raws is not None else self.ranks
        state.raw = int(raws[j]) if raws is not None else 0
        if self.measures is not None:
            state.ratio = float(self.measures[j])

    def calls(self) -> list[int]:
        """The points the engine calls the sink at whatever the rank before: rank or raw non-zero."""
        if self.ranks is None:
            return []
        nonzero = self.ranks != 0
        if self.raws is not None:
            nonzero |= self.raws != 0
        return np.flatnonzero(nonzero).tolist()

    def commit(self, state: RuleState) -> None:
        self.at(state, -1)
        if self.streaks is not None:
            state.streaks[:] = self.streaks
        if self.window is not None:
            state.window = self.window
            state.last_step = self.last_step


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
        b = _growth_batch(rule, state, steps, values)  # type: ignore[assignment]
        evidence = np.isfinite(values)
    else:
        return None
    if b is None or rule.for_points <= 1 or b.ranks is None:
        return b  # a quiet batch (raw 0 before and after) leaves every streak at 0
    return _for_batch(rule, b, evidence, state)


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
        ranks = _forward_fill(ranks, evidence, rule._held(state))
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
    return RuleBatch(_held(_ranked(conditions, len(values)), finite, state.raw))


# a growth batch whose finite steps go back more often than this goes point by point
_MAX_RESTARTS = 16
_INT64_MIN = np.iinfo(np.int64).min


def _all_within(values: np.ndarray, lo: float, hi: float) -> bool:
    """Every value in [lo, hi] (NaN is not: min/max propagate it and compare False)."""
    return bool(lo <= values.min() and values.max() <= hi)


def _ranked(conditions: list[tuple[int, np.ndarray]], n: int) -> np.ndarray:
    """Per point, the highest rank whose condition holds (0 if none), as ``evaluate``'s loop
    over the levels (highest first, first hit wins)."""
    ranks = np.zeros(n, dtype=np.int64)
    for rank, holds in sorted(conditions, key=lambda c: c[0]):  # lowest first: a higher rank overwrites
        ranks[holds] = rank
    return ranks


def _forward_fill(values: np.ndarray, defined: np.ndarray, initial: float | int) -> np.ndarray:
    """values[j] where defined[j], else the last defined value before j, else ``initial``."""
    if defined.all():
        return values
    last = np.where(defined, np.arange(len(values)), -1)
    np.maximum.accumulate(last, out=last)
    return np.where(last >= 0, values[last], initial)


def _held(ranks: np.ndarray, finite: np.ndarray, raw: int) -> np.ndarray:
    """A non-finite point is not evidence: it holds the rank of the last finite point."""
    return _forward_fill(ranks, finite, raw)


def _range_min(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """min(values[lo[k]:hi[k]]) for every k (each range non-empty), with a sparse table: row e
    holds min(values[i:i + 2**e]), and two overlapping rows of 2**e cover any range."""
    exponent = np.frexp(hi - lo)[1] - 1  # floor(log2(length)), exact for ints
    m = len(values)
    table = np.empty((int(exponent.max()) + 1, m))
    table[0] = values
    for e in range(1, len(table)):
        width, half = m - (1 << e) + 1, 1 << (e - 1)  # the starts whose 2**e values all exist
        table[e, :width] = np.minimum(table[e - 1, :width], table[e - 1, half : half + width])
    return np.minimum(table[exponent, lo], table[exponent, hi - np.left_shift(1, exponent)])


def _final_window(steps: np.ndarray, values: np.ndarray) -> deque:
    """The deque ``_remember`` leaves after pushing these (step, value) points in order (steps
    non-decreasing, values positive, at most MAX_GROWTH_WINDOW): a point stays while every later
    value is larger, and of those at one step only the first was ever added."""
    later_min = np.empty_like(values)
    later_min[-1:] = np.inf
    later_min[:-1] = np.minimum.accumulate(values[:0:-1])[::-1]
    stays = values < later_min
    steps, values = steps[stays], values[stays]
    first_at_step = np.ones(len(steps), dtype=bool)
    first_at_step[1:] = steps[1:] != steps[:-1]
    return deque(zip(steps[first_at_step].tolist(), values[first_at_step].tolist()))


def _growth_batch(rule: Rule, state: RuleState, steps: np.ndarray, values: np.ndarray) -> RuleBatch | None:
    """Growth over a batch: per finite point, the ratio of its value to the minimum of the positive
    values before it since the last step restart within ``within_steps``; None when the cap on the
    window (MAX_GROWTH_WINDOW) could bind, so the per-point deque decides instead."""
    finite = np.isfinite(values)
    n = len(values)
    # the common batch has only finite points: it indexes nothing and fills nothing in
    all_finite = bool(finite.all())
    if all_finite:
        at, fsteps, fvalues = None, steps, values
    else:
        at = np.flatnonzero(finite)
        if not len(at):  # no evidence: every rank and the ratio hold, the window and last step too
            return RuleBatch(np.full(n, state.raw, dtype=np.int64), np.full(n, state.ratio))
        fsteps, fvalues = steps[at], values[at]
    within = rule.within_steps
    if int(fsteps.min()) < _INT64_MIN + within:
        return None  # step - within would wrap around in int64
    starts = (np.flatnonzero(fsteps[1:] < fsteps[:-1]) + 1).tolist()
    if len(starts) > _MAX_RESTARTS:
        return None
    carried = state.window or ()
    if state.last_step is not None and fsteps[0] < state.last_step:
        carried = ()  # steps went back at the first point: a restarted run
    if not starts:
        seg = _segment(fsteps, fvalues, carried, within)
        if seg is None:
            return None
        ratios, has_window, wsteps, wvalues = seg
    else:
        ratios = np.full(len(fvalues), np.nan)
        has_window = np.zeros(len(fvalues), dtype=bool)
        bounds = [0, *starts, len(fvalues)]
        for a, b in itertools.pairwise(bounds):
            seg = _segment(fsteps[a:b], fvalues[a:b], carried if a == 0 else (), within)
            if seg is None:
                return None
            ratios[a:b], has_window[a:b], wsteps, wvalues = seg
    alerting = has_window & (fvalues > rule.min_value)
    with np.errstate(invalid="ignore"):  # NaN ratios (no window) are not alerting anyway
        raw = _ranked([(rank, alerting & (ratios >= f)) for rank, _, f in rule.levels], len(fvalues))
    if all_finite:
        # ratios is NaN exactly where no window was: the points whose measure holds the last one
        ranks, measures = raw, _forward_fill(ratios, has_window, state.ratio)
    else:
        ranks = np.zeros(n, dtype=np.int64)
        ranks[at] = raw
        ratio_at = np.full(n, np.nan)
        ratio_at[at[has_window]] = ratios[has_window]
        defined = np.zeros(n, dtype=bool)
        defined[at[has_window]] = True
        ranks, measures = _held(ranks, finite, state.raw), _forward_fill(ratio_at, defined, state.ratio)
    horizon = int(fsteps[-1]) - within
    keep = np.searchsorted(wsteps, horizon, "left")
    return RuleBatch(ranks, measures, _final_window(wsteps[keep:], wvalues[keep:]), int(fsteps[-1]))


def _increasing(steps: np.ndarray, values: np.ndarray, next_step: int) -> bool:
    """A carried window as ``_remember`` keeps it: steps and positive values strictly increasing,
    none after the batch's first step. Only then is its head the minimum of its values."""
    rising = bool((steps[1:] > steps[:-1]).all() and (values[1:] > values[:-1]).all())
    return rising and bool(values[0] > 0) and int(steps[-1]) <= next_step


_NO_STEPS = np.empty(0, dtype=np.int64)
_NO_VALUES = np.empty(0, dtype=np.float64)


def _segment(steps: np.ndarray, values: np.ndarray, carried, within: int):
    """One run of finite points whose steps never go back: (ratio, has a window) per point and the
    positive points (carried window first) as steps and values; None when the cap could bind."""
    positive = values > 0
    if carried:
        carried_steps, carried_values = zip(*carried)
        csteps = np.array(carried_steps, dtype=np.int64)
        cvalues = np.array(carried_values, dtype=np.float64)
        if not _increasing(csteps, cvalues, int(steps[0])):
            return None  # not a window ``_remember`` made (a state restored from a damaged row)
    else:
        csteps, cvalues = _NO_STEPS, _NO_VALUES
    if positive.all():  # the common case: no point to leave out, each point has all before it
        wsteps = np.concatenate([csteps, steps])
        wvalues = np.concatenate([cvalues, values])
        before = np.arange(len(carried), len(carried) + len(values))
    else:
        wsteps = np.concatenate([csteps, steps[positive]])
        wvalues = np.concatenate([cvalues, values[positive]])
        before = np.cumsum(positive) - positive + len(carried)  # positive points before each point
    first = np.searchsorted(wsteps, steps - within, "left")  # the oldest of them within the window
    count = before - first
    if len(count) and int(count.max()) >= MAX_GROWTH_WINDOW:
        return None  # the deque could reach its cap: its oldest point would go, not the minimum's rule
    has_window = count > 0
    if has_window.all():
        with np.errstate(over="ignore"):
            return values / _range_min(wvalues, first, before), has_window, wsteps, wvalues
    ratios = np.full(len(values), np.nan)
    if has_window.any():
        with np.errstate(over="ignore"):
            ratios[has_window] = values[has_window] / _range_min(
                wvalues, first[has_window], before[has_window]
            )
    return ratios, has_window, wsteps, wvalues
