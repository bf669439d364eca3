"""A growth rule's decisions on the batches of many series at once, with numpy.

``growth_group`` decides, for each series' batch, what ``Rule.evaluate`` would decide point by
point: per finite point, the ratio of its value to the minimum of the positive values before it
within ``within_steps`` since the last step restart (the carried window first), and the window
the per-point deque (``_remember``) would keep after the batch. The batches are laid end to end:
every numpy call covers them all, so many short series cost a few dozen calls, not a few dozen
each (check's 200 runs of 4 matched tags: 800 series of 1,000 points).

Each batch is cut into segments (its first point, and every point whose step goes back, starts
one); a segment's positive points, after its carried window, are its part of one window array
``W``. A key per W entry (the segment's offset plus the step's distance from the segment's first
step) rises through all of W, so one ``searchsorted`` finds every point's oldest window entry, and
one sparse table answers every range minimum. A batch gets None (point by point) when the cap
on the window (MAX_GROWTH_WINDOW) could bind, on more than ``_MAX_RESTARTS`` restarts, or on a
carried window ``_remember`` could not have made.
"""

from __future__ import annotations

import itertools
import operator
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from gradwatch.rules.growth_windows import Windows, windows_of
from gradwatch.rules.modes import MAX_GROWTH_WINDOW
from gradwatch.rules.outcome import RuleBatch, fill_segments, ranked

if TYPE_CHECKING:
    from gradwatch.rules import Rule, RuleState

# a batch whose finite steps go back more often than this goes point by point
_MAX_RESTARTS = 16
# the keys of a group's segments, end to end, stay below this (no int64 overflow anywhere)
_KEY_ROOM = 2.0**61
_LOWEST_STEP = -(2**63)


def growth_group(
    rule: Rule, states: list[RuleState], steps: np.ndarray, values: np.ndarray, bounds: np.ndarray
) -> list[RuleBatch | None]:
    """The RuleBatch (or None: point by point) of each series' batch: batch k is
    ``steps[bounds[k]:bounds[k + 1]]`` (non-empty, int64) and its values (float64), from
    ``states[k]``, which is not touched. Two batches of one series must not share a group."""
    finite = np.isfinite(values)
    all_finite = bool(finite.all())
    if all_finite:
        at, fsteps, fvalues, fbounds = None, steps, values, bounds
    else:
        at = np.flatnonzero(finite)
        fsteps, fvalues, fbounds = steps[at], values[at], np.searchsorted(at, bounds)
    plan = _plan(states, fsteps, fbounds)
    if isinstance(plan, list):  # some batch cannot go with the others: the rest without it
        return _without(rule, states, steps, values, bounds, plan)
    nf = len(fvalues)
    w = windows_of(plan, fsteps, fvalues, rule.within_steps)
    first, before = w.first, w.before
    count = before - first  # the positive points within the window before each point
    has_window = count > 0
    capped = _capped(count, plan.seg_starts, plan.seg_item, len(states))
    # the points whose ratio is needed (a capped batch's points are dropped: it goes point by point)
    ok = has_window & (count < MAX_GROWTH_WINDOW)
    # each batch's last finite point (a capped batch's window is not needed)
    kept = plan.nonempty & ~capped
    last = fbounds[1:][kept] - 1
    tails = _Tails(first[last], before[last] + w.positive[last])
    table = _SparseTable(w.values, max(min(_longest(count), MAX_GROWTH_WINDOW - 1), tails.longest))
    ratios = np.full(nf, np.nan)
    with np.errstate(over="ignore"):
        full = count == w.trailing if 0 < w.trailing < MAX_GROWTH_WINDOW else None
        if full is not None and full.any():
            # one point per step: a full window is the last ``within`` entries, a slice of one row
            np.divide(fvalues, table.trailing(w.trailing), out=ratios, where=full)
            ok &= ~full
        ratios[ok] = fvalues[ok] / table.min(first[ok], before[ok])
    alerting = has_window & (fvalues > rule.min_value)
    with np.errstate(invalid="ignore"):  # NaN ratios (no window) are not alerting anyway
        raw = ranked([(rank, alerting & (ratios >= f)) for rank, _, f in rule.levels], nf)
    ranks, measures = _every_point(states, bounds, at, finite, raw, ratios, has_window)
    windows = tails.final_windows(w, table)
    last_steps = fsteps[last].tolist()
    out: list[RuleBatch | None] = []
    j = 0  # the next kept batch's index in ``last`` and ``windows``
    bounds_ = bounds.tolist()
    for k, (nonempty, is_capped) in enumerate(zip(plan.nonempty.tolist(), capped.tolist())):
        a, b = bounds_[k], bounds_[k + 1]
        if is_capped:
            out.append(None)
        elif not nonempty:  # no evidence: every rank and the ratio hold, the window and last step too
            out.append(RuleBatch(ranks[a:b], measures[a:b]))
        else:
            out.append(RuleBatch(ranks[a:b], measures[a:b], windows[j], last_steps[j]))
            j += 1
    return out


def _every_point(
    states: list[RuleState],
    bounds: np.ndarray,
    at: np.ndarray | None,
    finite: np.ndarray,
    raw: np.ndarray,
    ratios: np.ndarray,
    has_window: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The ranks and measures of every point from those of the finite points (``at``; None: all):
    a non-finite point, or one without a window, holds the last (the state's before the batch)."""
    starts = bounds[:-1]
    initial_ratio = np.array([s.ratio for s in states], dtype=np.float64)
    if at is None:
        # ratios is NaN exactly where no window was: the points whose measure holds the last one
        return raw, fill_segments(ratios, has_window, initial_ratio, starts)
    n = len(finite)
    ranks = np.zeros(n, dtype=np.int64)
    ranks[at] = raw
    ranks = fill_segments(ranks, finite, np.array([s.raw for s in states], dtype=np.int64), starts)
    windowed = at[has_window]
    ratio_at = np.full(n, np.nan)
    ratio_at[windowed] = ratios[has_window]
    defined = np.zeros(n, dtype=bool)
    defined[windowed] = True
    return ranks, fill_segments(ratio_at, defined, initial_ratio, starts)


class _Plan:
    """The segments of a group's finite points and the carried windows that start them."""

    __slots__ = ("carried_steps", "carried_values", "nonempty", "seg_base", "seg_carried", "seg_item")
    __slots__ += ("seg_lens", "seg_offset", "seg_starts")


def _plan(states: list[RuleState], fsteps: np.ndarray, fbounds: np.ndarray) -> _Plan | list[int]:
    """The segments, or the batches that cannot go with the others (their indices)."""
    k_count, nf = len(states), len(fsteps)
    if k_count == 1 and nf:
        return _plan_one(states[0], fsteps)
    item_starts = fbounds[:-1]
    nonempty = fbounds[1:] > item_starts
    back = np.flatnonzero(fsteps[1:] < fsteps[:-1]) + 1
    restarts = [0] * k_count
    if len(back):  # a step going back at a batch's first point starts the batch, not a restart
        item_of = np.searchsorted(fbounds, back, "right") - 1
        inside = fbounds[item_of] != back
        back, restarts = back[inside], np.bincount(item_of[inside], minlength=k_count).tolist()
    firsts = fsteps[item_starts[nonempty]].tolist()
    unfit, carried_steps, carried_values, carried_counts = [], [], [], []
    for k, first_step in zip(np.flatnonzero(nonempty).tolist(), firsts):
        carried = _carried(states[k], first_step) if restarts[k] <= _MAX_RESTARTS else None
        if carried is None:
            unfit.append(k)
        else:
            carried_steps += carried[0]
            carried_values += carried[1]
            carried_counts.append(len(carried[0]))
    if unfit:
        return unfit
    plan = _Plan()
    plan.nonempty = nonempty
    seg_starts = np.sort(np.concatenate([item_starts[nonempty], back]))
    plan.seg_starts = seg_starts
    plan.seg_lens = np.diff(np.append(seg_starts, nf)) if len(seg_starts) else seg_starts
    plan.seg_item = np.searchsorted(fbounds, seg_starts, "right") - 1
    seg_carried = np.zeros(len(seg_starts), dtype=np.int64)
    opening = np.flatnonzero(seg_starts == fbounds[plan.seg_item])  # each batch's first segment
    seg_carried[opening] = carried_counts
    plan.seg_carried = seg_carried
    plan.carried_steps = np.array(carried_steps, dtype=np.int64)
    plan.carried_values = np.array(carried_values, dtype=np.float64)
    # a segment's keys run from its first step (its carried window's, if any) to its last
    base = fsteps[seg_starts]
    with_carried = opening[np.asarray(carried_counts, dtype=bool)]
    if len(with_carried):
        base[with_carried] = plan.carried_steps[
            np.cumsum(seg_carried)[with_carried] - seg_carried[with_carried]
        ]
    return _with_keys(plan, fsteps, base, k_count)


def _plan_one(state: RuleState, fsteps: np.ndarray) -> _Plan | list[int]:
    """``_plan`` of one batch with finite points (the engine's ``observe_batch``, the daemon's
    catch-up): the same plan, its few segments reckoned in Python ints instead of numpy calls."""
    restarts = (np.flatnonzero(fsteps[1:] < fsteps[:-1]) + 1).tolist()
    if len(restarts) > _MAX_RESTARTS:
        return [0]
    carried = _carried(state, int(fsteps[0]))
    if carried is None:
        return [0]
    starts = [0, *restarts]
    ends = [*restarts, len(fsteps)]
    edges = fsteps[[*starts, *(e - 1 for e in ends)]].tolist()  # each segment's first and last step
    base, top = edges[: len(starts)], edges[len(starts) :]
    if carried[0]:
        base[0] = carried[0][0]
    spans = [t - b + 1 for b, t in zip(base, top)]
    if sum(spans) >= _KEY_ROOM:
        return [0]
    plan = _Plan()
    plan.nonempty = _ONE
    plan.seg_starts = np.array(starts, dtype=np.int64)
    plan.seg_lens = np.array([e - a for a, e in zip(starts, ends)], dtype=np.int64)
    plan.seg_item = np.zeros(len(starts), dtype=np.int64)
    plan.seg_carried = np.array([len(carried[0])] + [0] * len(restarts), dtype=np.int64)
    plan.carried_steps = np.array(carried[0], dtype=np.int64)
    plan.carried_values = np.array(carried[1], dtype=np.float64)
    plan.seg_base = np.array(base, dtype=np.int64)
    plan.seg_offset = np.array([0, *itertools.accumulate(spans[:-1])], dtype=np.int64)
    return plan


_ONE = np.ones(1, dtype=bool)


def _with_keys(plan: _Plan, fsteps: np.ndarray, base: np.ndarray, k_count: int) -> _Plan | list[int]:
    """The plan with each segment's first step and key offset: its keys run from its first step
    (``base``) to its last, the segments end to end; or every batch (unfit) when they do not fit."""
    top = fsteps[plan.seg_starts + plan.seg_lens - 1]
    spans = top.astype(np.float64) - base.astype(np.float64) + 1
    if len(spans) and float(spans.sum()) >= _KEY_ROOM:
        # steps too far apart to lay the segments end to end: each batch alone, or point by point
        return list(range(k_count)) if k_count > 1 else [0]
    span = top - base + 1
    plan.seg_base = base
    plan.seg_offset = np.cumsum(span) - span
    return plan


def _carried(state: RuleState, first_step: int) -> tuple[tuple, tuple] | None:
    """The window a batch starting at ``first_step`` carries in, as steps and values (empty after a
    restart at its first point); None when ``_remember`` could not have made it (a state restored
    from a damaged row): then the batch goes point by point."""
    window = state.window
    if not window or (state.last_step is not None and first_step < state.last_step):
        return (), ()
    steps, values = zip(*window)
    return (steps, values) if _increasing(steps, values, first_step) else None


def _without(
    rule: Rule,
    states: list[RuleState],
    steps: np.ndarray,
    values: np.ndarray,
    bounds: np.ndarray,
    unfit: list[int],
) -> list[RuleBatch | None]:
    """The group without the ``unfit`` batches (each alone when all of several are unfit: steps too
    far apart to share keys), which go point by point."""
    out: list[RuleBatch | None] = [None] * len(states)
    if len(unfit) == len(states) > 1:
        for k in unfit:
            a, b = int(bounds[k]), int(bounds[k + 1])
            (out[k],) = growth_group(rule, [states[k]], steps[a:b], values[a:b], np.array([0, b - a]))
        return out
    keep = sorted(set(range(len(states))) - set(unfit))
    if not keep:
        return out
    pieces = [(int(bounds[k]), int(bounds[k + 1])) for k in keep]
    sub_bounds = np.cumsum([0, *(b - a for a, b in pieces)])
    sub_steps = np.concatenate([steps[a:b] for a, b in pieces])
    sub_values = np.concatenate([values[a:b] for a, b in pieces])
    for k, b in zip(keep, growth_group(rule, [states[k] for k in keep], sub_steps, sub_values, sub_bounds)):
        out[k] = b
    return out


def _capped(count: np.ndarray, seg_starts: np.ndarray, seg_item: np.ndarray, k_count: int) -> np.ndarray:
    """Per batch: some point finds MAX_GROWTH_WINDOW or more in its window, so the deque would drop
    its oldest entry (the cap), not the minimum's rule: that batch goes point by point."""
    capped = np.zeros(k_count, dtype=bool)
    if len(count) and int(count.max()) >= MAX_GROWTH_WINDOW:
        capped[seg_item[np.maximum.reduceat(count, seg_starts) >= MAX_GROWTH_WINDOW]] = True
    return capped


def _longest(lengths: np.ndarray) -> int:
    return int(lengths.max()) if len(lengths) else 0


# floor(log2(length)) of every range length a window can have (a lookup: frexp is slower)
_FLOOR_LOG2 = np.array([0, *(length.bit_length() - 1 for length in range(1, MAX_GROWTH_WINDOW + 1))])


class _SparseTable:
    """Range minimums of one array: row e holds min(values[i:i + 2**e]), and two overlapping rows
    of 2**e cover any range of up to ``longest`` values."""

    def __init__(self, values: np.ndarray, longest: int) -> None:
        m = len(values)
        rows = max(longest, 1).bit_length()
        table = np.empty((rows, m))
        table[0] = values
        for e in range(1, rows):
            width, half = m - (1 << e) + 1, 1 << (e - 1)  # the starts whose 2**e values all exist
            if width > 0:
                np.minimum(table[e - 1, :width], table[e - 1, half : half + width], out=table[e, :width])
        self.table = table

    def trailing(self, width: int) -> np.ndarray:
        """min(values[j - width:j]) at every j >= width (the rest is not set): two slices of one
        row, no gather (needs ``longest`` >= width)."""
        m = self.table.shape[1]
        out = np.empty(m)
        if m > width:
            row, half = self.table[width.bit_length() - 1], 1 << (width.bit_length() - 1)
            np.minimum(row[: m - width], row[width - half : m - half], out=out[width:])
        return out

    def min(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """min(values[lo[k]:hi[k]]) for every k (each range non-empty)."""
        exponent = _FLOOR_LOG2[hi - lo]
        row = exponent * self.table.shape[1]  # 1-D takes from the flat table: faster than [row, column]
        flat = self.table.ravel()
        return np.minimum(flat.take(row + lo), flat.take(row + (hi - np.left_shift(1, exponent))))


class _Tails:
    """Each batch's window after its last point: W[lo:hi] of its last segment, within the window."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray) -> None:
        self.lengths = hi - lo
        if len(lo) == 1:  # one batch: final_windows reads W[lo:hi] itself
            self.lo, self.hi = int(lo[0]), int(hi[0])
            self.longest = 0
            return
        self.index = np.repeat(lo - (np.cumsum(self.lengths) - self.lengths), self.lengths) + np.arange(
            int(self.lengths.sum())
        )
        self.end = np.repeat(hi, self.lengths)
        self.longest = _longest(self.lengths)

    def final_windows(self, w: Windows, table: _SparseTable) -> list[deque]:
        """The deques ``_remember`` leaves: an entry stays while every later one is larger, and of
        those at one step only the first was ever added."""
        if len(self.lengths) == 1:  # one batch (``observe_batch``): a suffix minimum, fewer calls
            return [_final_window(w.steps[self.lo : self.hi], w.values[self.lo : self.hi])]
        index, end = self.index, self.end
        later_min = np.full(len(index), np.inf)
        inner = index + 1 < end
        later_min[inner] = table.min(index[inner] + 1, end[inner])
        stays = w.values[index] < later_min
        kept = index[stays]
        owner = np.repeat(np.arange(len(self.lengths)), self.lengths)[stays]
        kept_steps = w.steps[kept]
        first_at_step = np.ones(len(kept), dtype=bool)
        first_at_step[1:] = (kept_steps[1:] != kept_steps[:-1]) | (owner[1:] != owner[:-1])
        kept, owner = kept[first_at_step], owner[first_at_step]
        steps, values = w.steps[kept].tolist(), w.values[kept].tolist()
        ends = np.cumsum(np.bincount(owner, minlength=len(self.lengths))).tolist()
        out, a = [], 0
        for b in ends:
            out.append(deque(zip(steps[a:b], values[a:b])))
            a = b
        return out


def _final_window(steps: np.ndarray, values: np.ndarray) -> deque:
    """``_Tails.final_windows`` of one tail: an entry stays while every later one is larger (a
    reversed running minimum), and of those at one step only the first."""
    later_min = np.empty_like(values)
    later_min[-1:] = np.inf
    later_min[:-1] = np.minimum.accumulate(values[:0:-1])[::-1]
    stays = values < later_min
    steps, values = steps[stays], values[stays]
    first_at_step = np.ones(len(steps), dtype=bool)
    first_at_step[1:] = steps[1:] != steps[:-1]
    return deque(zip(steps[first_at_step].tolist(), values[first_at_step].tolist()))


def _increasing(steps: tuple, values: tuple, next_step: int) -> bool:
    """A carried window as ``_remember`` keeps it: steps and positive values strictly increasing,
    none after the batch's first step. Only then is its head the minimum of its values. Its steps
    must be int64s too, as every step read is (a restored row may hold any JSON int)."""
    lt = operator.lt
    return (
        all(map(lt, steps, steps[1:]))
        and all(map(lt, values, values[1:]))
        and values[0] > 0
        and steps[0] >= _LOWEST_STEP
        and steps[-1] <= next_step
    )
