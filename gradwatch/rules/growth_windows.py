"""Where each point's growth window starts in a group's window array W (gradwatch/rules/growth.py).

W holds, segment after segment, a segment's carried window and then its positive points; a point's
window is W[first:before]: the entries before it whose step is within ``within_steps`` of its own.
The common groups take shortcuts that give the same ``first``: with one point per step and every
value positive, the window is the last ``within`` points, plus the carried entries still in reach
for a segment's first ``within`` points; otherwise one ``searchsorted`` over W's keys (a segment's
offset plus the step's distance from its first step: they rise through W).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Segments(Protocol):
    """What ``windows_of`` reads of a group's plan (growth.py's _Plan)."""

    seg_starts: np.ndarray  # each segment's first point
    seg_lens: np.ndarray
    seg_carried: np.ndarray  # carried entries before each segment's points
    seg_base: np.ndarray  # each segment's first step (its carried window's, if any)
    seg_offset: np.ndarray  # its keys' offset
    carried_steps: np.ndarray  # the carried windows end to end, in segment order
    carried_values: np.ndarray


class Windows:
    """The window array W of a group and where each finite point stands in it."""

    __slots__ = ("before", "first", "positive", "steps", "trailing", "values")

    def __init__(self) -> None:
        self.trailing = (
            0  # > 0: W is the points, and a point with that many entries before it has the last ones
        )


def windows_of(plan: Segments, fsteps: np.ndarray, fvalues: np.ndarray, within: int) -> Windows:
    if len(plan.seg_starts) == 1:
        return _one_segment(plan, fsteps, fvalues, within)
    w = Windows()
    seg_id = np.repeat(np.arange(len(plan.seg_starts)), plan.seg_lens)
    positive = fvalues > 0
    w.positive = positive
    within = min(within, 1 << 62)  # wider than any segment's span (< 2**61): the same window
    distance = fsteps - plan.seg_base[seg_id]  # from the segment's first step (its carried window's)
    carried = len(plan.carried_steps) > 0
    every = positive.all()
    if every:
        consecutive = np.diff(fsteps) == 1
        consecutive[plan.seg_starts[1:] - 1] = True  # a segment's first step follows nothing
        if consecutive.all():  # one point per step: the window is the last ``within`` points
            if carried:
                _lay_out(w, plan, seg_id, None, None, fsteps, fvalues)
            else:  # W is the points themselves, each point's entry its own index
                w.before, w.steps, w.values = np.arange(len(fvalues)), fsteps, fvalues
                w.trailing = within
            local = fsteps - fsteps[plan.seg_starts][seg_id]  # the point's place in its segment
            w.first = w.before - np.minimum(local, within)
            if carried:
                _reach_carried(w, plan, seg_id, local, distance, within)
            return w
    if every and not carried:
        w.before, w.steps, w.values = np.arange(len(fvalues)), fsteps, fvalues
        keys = distance + plan.seg_offset[seg_id]
    else:
        keys = _lay_out(w, plan, seg_id, None if every else positive, distance, fsteps, fvalues)
    # the oldest entry within the window: the first key at or after step - within, never before
    # the segment's own first key
    w.first = np.searchsorted(keys, np.maximum(distance - within, 0) + plan.seg_offset[seg_id], "left")
    return w


def _one_segment(plan: Segments, fsteps: np.ndarray, fvalues: np.ndarray, within: int) -> Windows:
    """``windows_of`` of one segment (most of ``observe_batch``'s calls): W is its carried window and
    its positive points, searched by step, in a few numpy calls."""
    w = Windows()
    positive = fvalues > 0
    w.positive = positive
    carried = len(plan.carried_steps)
    if positive.all():
        w.before = np.arange(carried, carried + len(fsteps))
        steps, values = fsteps, fvalues
    else:
        w.before = np.cumsum(positive, dtype=np.int64) - positive + carried
        steps, values = fsteps[positive], fvalues[positive]
    w.steps = np.concatenate((plan.carried_steps, steps)) if carried else steps
    w.values = np.concatenate((plan.carried_values, values)) if carried else values
    # step - within, never below the segment's first step (no int64 wrap-around either way)
    base = int(plan.seg_base[0])
    since = np.maximum(fsteps - base - min(within, 1 << 62), 0) + base
    w.first = np.searchsorted(w.steps, since, "left")
    return w


def _reach_carried(
    w: Windows, plan: Segments, seg_id: np.ndarray, local: np.ndarray, distance: np.ndarray, within: int
) -> None:
    """One point per step: a segment's points at its first step s up to s + within (both ends of a
    window count) reach back past its first point, into its carried entries whose step is within
    reach (a search of the carried keys alone): at s + within, a carried entry at s still counts."""
    near = np.flatnonzero((local <= within) & (plan.seg_carried[seg_id] > 0))
    if not len(near):
        return
    counts = plan.seg_carried[plan.seg_carried > 0]
    opening = np.flatnonzero(plan.seg_carried)
    carried_keys = (plan.carried_steps - np.repeat(plan.seg_base[opening], counts)) + np.repeat(
        plan.seg_offset[opening], counts
    )
    g = seg_id[near]
    since = np.maximum(distance[near] - within, 0) + plan.seg_offset[g]
    # carried entries before the first one in reach (all of the earlier segments'), plus the points
    # of the earlier segments: its W index (or the segment's first point's, when none is in reach)
    w.first[near] = np.searchsorted(carried_keys, since, "left") + plan.seg_starts[g]


def _lay_out(
    w: Windows,
    plan: Segments,
    seg_id: np.ndarray,
    positive: np.ndarray | None,
    distance: np.ndarray | None,
    fsteps: np.ndarray,
    fvalues: np.ndarray,
) -> np.ndarray | None:
    """W from the positive points (None: all are) and the carried windows before their segments;
    its keys, unless ``distance`` is None (no search will need them)."""
    carried_upto = np.cumsum(plan.seg_carried)
    # W index of each point's first entry at or after it: the positive points and the carried
    # entries (its segment's included) before it
    if positive is None:
        before = np.arange(len(fsteps)) + carried_upto[seg_id]
        size = len(fsteps) + int(carried_upto[-1])
    else:
        before = np.cumsum(positive, dtype=np.int64) - positive + carried_upto[seg_id]
        size = int(before[-1] + positive[-1]) if len(before) else 0
    w.before = before
    keys = np.empty(size, dtype=np.int64) if distance is not None else None
    w.steps = np.empty(size, dtype=np.int64)
    w.values = np.empty(size, dtype=np.float64)
    if positive is None:
        put, put_steps, put_values = before, fsteps, fvalues
    else:
        put, put_steps, put_values = before[positive], fsteps[positive], fvalues[positive]
    if keys is not None:
        where = seg_id if positive is None else seg_id[positive]
        keys[put] = (distance if positive is None else distance[positive]) + plan.seg_offset[where]
    w.steps[put] = put_steps
    w.values[put] = put_values
    n_carried = len(plan.carried_steps)
    if n_carried:
        opening = np.flatnonzero(plan.seg_carried)
        counts = plan.seg_carried[opening]
        # a segment's carried entries sit just before its first positive point's place
        at_start = before[plan.seg_starts[opening]] - counts
        put = np.repeat(at_start - (np.cumsum(counts) - counts), counts) + np.arange(n_carried)
        if keys is not None:
            keys[put] = (plan.carried_steps - np.repeat(plan.seg_base[opening], counts)) + np.repeat(
                plan.seg_offset[opening], counts
            )
        w.steps[put] = plan.carried_steps
        w.values[put] = plan.carried_values
    return keys
