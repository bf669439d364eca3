"""One rule's alert over a whole batch of points, in numpy: what the AlertBook's per-point calls do.

During the daemon's catch-up on history (``AlertBook.suppress``) an alert that fires and resolves
tens of thousands of times (a growth rule on noisy values) cost a Python call per transition, and
made the catch-up 1.3-1.7x slower than ``gradwatch check`` on the same logdir (issue 12). Without
``for`` (no pending state) and without ``keep_firing_for`` in seconds (no clock in the decision),
an alert's life over a batch depends only on the batch's ranks: it is on after point j when j's
rank is non-zero or when at most ``keep_firing_for`` points (j included) have been back to normal
since the last non-zero rank. ``rule_transitions`` computes that, and where the per-point path
reads the clock and how many times, so the AlertBook can read it as often, in the same order (a
transition's times are the readings the per-point path would have taken: tests/test_batch_alerts.py,
tests/test_batch_alert_transitions.py).

Clock readings per call of the per-point path (gradwatch/alerts.py, ``_decide``): firing 2
(starts_at, then the event's time: last_notified); escalation or de-escalation 1 (last_notified);
a point back to normal while firing 1 (``_may_resolve``), plus 1 before it if it is the first such
point (clear_since), plus 2 if it resolves (ends_at, then the event's time); a point at the rank
the alert fires at 0.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

# where a reading lands among a point's readings (see the module docstring)
FIRST = 0
SECOND = 1


class RuleTransitions:
    """One rule's alert over one batch.

    ``read_points``/``read_counts``: the points where the per-point calls read the clock, and how
    many times. The alert after the batch: ``active`` (False: gone), ``rank``, ``clear_points``;
    ``fired``: it started firing in this batch (a new alert: the old one, if any, resolved);
    ``emits``: the notifiable transitions of that alert in the batch (its ``seq`` grows by them);
    ``starts_at``/``notified``/``clear_since``: the (point, reading) whose time it takes, None when
    it keeps what it had (for ``clear_since``: when ``clear_points`` is 0 it is None).
    """

    __slots__ = (
        "active",
        "called",
        "clear_points",
        "clear_since",
        "emits",
        "fired",
        "notified",
        "rank",
        "read_counts",
        "read_points",
        "starts_at",
    )

    def __init__(self) -> None:
        self.called = False
        self.active = False
        self.fired = False
        self.rank = 0
        self.clear_points = 0
        self.emits = 0
        self.starts_at: tuple[int, int] | None = None
        self.notified: tuple[int, int] | None = None
        self.clear_since: tuple[int, int] | None = None
        self.read_points = np.empty(0, dtype=np.int64)
        self.read_counts = np.empty(0, dtype=np.int64)


def rule_transitions(
    ranks: np.ndarray | None, n: int, keep_points: int, active: bool, rank: int, clear_points: int
) -> RuleTransitions:
    """The alert of one rule without ``for`` over a batch of ``n`` points whose ranks are ``ranks``
    (None: all 0), given the alert before it: ``active`` at ``rank`` with ``clear_points`` points
    back to normal so far, or none (``active`` False)."""
    if ranks is None:
        ranks = np.zeros(n, dtype=np.int64)
    if not keep_points and not clear_points:
        return _edges(ranks, rank if active else 0)
    t = RuleTransitions()
    idx = np.arange(n)
    nonzero = ranks != 0
    # the last non-zero point at or before each point (-1: none in this batch)
    last = np.maximum.accumulate(np.where(nonzero, idx, -1))
    since = idx - last  # points back to normal since it, this one included (0 at a non-zero point)
    if active:
        # a run of normal points at the start goes on counting the alert's clear points
        since = np.where(last >= 0, since, clear_points + idx + 1)
        on = nonzero | (since <= keep_points)
    else:
        on = nonzero | ((last >= 0) & (since <= keep_points))
    before = np.empty(n, dtype=bool)
    before[0] = active
    before[1:] = on[:-1]
    t.called = bool(active or nonzero.any())
    if not t.called:
        return t
    # the alert's rank after each point: that of the last non-zero point, or the one it had
    rank_after = np.where(last >= 0, ranks[np.maximum(last, 0)], rank)
    rank_before = np.empty(n, dtype=np.int64)
    rank_before[0] = rank
    rank_before[1:] = rank_after[:-1]
    fire = nonzero & ~before
    change = nonzero & before & (ranks != rank_before)
    clear = ~nonzero & before
    resolve = clear & ~on
    first_clear = clear & (since == 1)
    reads = 2 * fire + change + clear * (1 + first_clear + 2 * resolve)
    t.read_points = np.flatnonzero(reads)
    t.read_counts = reads[t.read_points]
    t.active = bool(on[-1])
    if not t.active:
        return t
    t.rank = int(rank_after[-1])
    t.clear_points = int(since[-1])
    fires = np.flatnonzero(fire)
    start = int(fires[-1]) if len(fires) else -1
    changes = np.flatnonzero(change[start + 1 :]) + start + 1
    t.fired = start >= 0
    t.emits = int(t.fired) + len(changes)
    if t.fired:
        t.starts_at = (start, FIRST)
        t.notified = (start, SECOND)
    if len(changes):
        t.notified = (int(changes[-1]), FIRST)
    if t.clear_points and (last[-1] >= 0 or clear_points == 0):
        t.clear_since = (int(last[-1]) + 1, FIRST)  # the first point of the run back to normal
    return t


def _edges(ranks: np.ndarray, rank: int) -> RuleTransitions:
    """``rule_transitions`` without keep_firing_for (the alert before at ``rank``, 0: none): the
    alert is on exactly at non-zero ranks, so everything happens where the rank changes."""
    t = RuleTransitions()
    before = np.empty(len(ranks), dtype=np.int64)
    before[0] = rank
    before[1:] = ranks[:-1]
    edges = np.flatnonzero(ranks != before)
    t.called = bool(rank or len(edges))
    if not len(edges):
        if rank:
            t.active, t.rank = True, rank  # steady at its rank: points recorded, no transition
        return t
    old, new = before[edges], ranks[edges]
    fired = old == 0
    # fire: starts_at, event; resolve: clear_since, _may_resolve, ends_at, event; change: event
    t.read_points = edges
    t.read_counts = np.where(fired, 2, np.where(new == 0, 4, 1))
    t.rank = int(ranks[-1])
    t.active = t.rank != 0
    if not t.active:
        return t
    starts = np.flatnonzero(fired)
    start = int(starts[-1]) if len(starts) else -1  # an index into edges
    t.fired = start >= 0
    t.emits = len(edges) - max(start, 0)  # the firing (if any) and every change after it
    if t.fired:
        t.starts_at = (int(edges[start]), FIRST)
        t.notified = (int(edges[start]), SECOND)
    if start < len(edges) - 1:
        t.notified = (int(edges[-1]), FIRST)
    return t


def reading_offsets(rules: list[RuleTransitions]) -> tuple[list[np.ndarray], int]:
    """Where each rule's readings start in the batch's sequence of clock readings, and how many
    readings there are: the per-point path reads point by point, at one point rule by rule."""
    counts = [t.read_counts for t in rules]
    total = int(sum(int(c.sum()) for c in counts))
    if sum(1 for c in counts if len(c)) <= 1:
        return [np.cumsum(c) - c for c in counts], total
    keys = np.concatenate([t.read_points * len(rules) + i for i, t in enumerate(rules)])
    flat = np.concatenate(counts)
    order = np.argsort(keys, kind="stable")
    starts = np.empty(len(flat), dtype=np.int64)
    ordered = flat[order]
    starts[order] = np.cumsum(ordered) - ordered
    bounds = np.cumsum([0, *(len(c) for c in counts)])
    return [starts[a:b] for a, b in itertools.pairwise(bounds)], total


def reading(t: RuleTransitions, offsets: np.ndarray, at: tuple[int, int]) -> int:
    """The index, in the batch's readings, of reading ``at`` = (point, which) of rule ``t``."""
    point, which = at
    return int(offsets[np.searchsorted(t.read_points, point)]) + which


def settle(
    alert: Any,
    t: RuleTransitions,
    readings: list[float],
    offsets: np.ndarray,
    last: tuple[int, float, float],
    ratio: float,
) -> None:
    """Leave an alert (gradwatch/alerts.py: Alert) firing after the batch as its calls would: the
    batch's last point (step, wall time, value) and ``ratio`` are the last call's."""
    alert.seq += t.emits
    if t.starts_at is not None:
        alert.starts_at = readings[reading(t, offsets, t.starts_at)]
    if t.notified is not None:
        alert.last_notified = readings[reading(t, offsets, t.notified)]
    if not t.clear_points:
        alert.clear_since = None
    elif t.clear_since is not None:
        alert.clear_since = readings[reading(t, offsets, t.clear_since)]
    alert.rank = t.rank
    alert.clear_points = t.clear_points
    alert.step, alert.wall_time, alert.value = last
    alert.ratio = ratio
