"""Spikes against a series' own recent history: a streaming z-score per series.

A point is compared with the last ``window`` points of its series (before it):
``z = (x - center) / scale``, where center and scale are the mean and the
sample standard deviation, or, ``robust``, the median and the MAD scaled to a
standard deviation (1.4826 x MAD, exact for normal noise). With ``log`` the
points are compared on a log scale, so a norm that grows x1.4 per point is
the same distance away at 5,000 as at 5,000,000.

Cost. The statistics are not recomputed at every point: new points wait in
``pending`` until there are a quarter of the window's length of them (at least
one, at most ``window // 4``), then join the window and the statistics are
recomputed once, O(window). Between refreshes a point is judged against a
*quiet band* in value space, ``[lo, hi]``, computed at the last refresh: a
point inside it (a healthy one) costs two comparisons and a list append; only
a point outside it, or a refresh, does any arithmetic. The reference is
therefore the window as it was up to a quarter of a window ago, which only
matters for a series that changes regime within a few points (and keeps the
first points of an explosion out of the statistics they are judged against).

A point that reaches a level is kept out of the statistics (``held``), so a
spike does not inflate the spread it is judged against and an explosion does
not become its own reference; ``min_points`` alerting points in a row are a
new level, not a spike, and join the window (the alert can then end).

State is bounded: at most ``window`` numbers plus at most ``window // 4``
pending ones (``min_points`` during warm-up) and fewer than ``min_points``
held ones per series, whatever the number of points read.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from operator import mul
from typing import Any

# MAD x 1.4826 estimates the standard deviation of normal noise
MAD_TO_SIGMA = 1.482602218505602
DIRECTIONS = ("both", "above", "below")
# what observe() returns for NaN/±Inf: not evidence, the caller keeps its severity
HOLD = -1
# the window's sums are recomputed exactly after this many windows of points moved in and out
EXACT_EVERY = 4
# exp() of more than this overflows a float
_LOG_MAX = math.log(1.7976931348623157e308)
DEFAULTS: dict[str, Any] = {
    "window": 100,
    "min_points": 10,
    # the MAD of a few points is often tiny (several close values): the robust variant warms up longer
    "min_points_robust": 30,
    "warning": 6.0,
    "critical": 10.0,
    "direction": "both",
    "log": False,
    "robust": False,
}


class AnomalyState:
    """What one anomaly rule remembers about one series.

    ``window`` holds transformed values (logs with ``log``), oldest first;
    ``pending`` the raw values seen since the last refresh; ``lo``/``hi`` the
    quiet band in value space (empty during warm-up); ``z`` the z-score of the
    last point judged outside the band.
    """

    __slots__ = (
        "band",
        "center",
        "due",
        "held",
        "hi",
        "lo",
        "pending",
        "scale",
        "since_exact",
        "sums",
        "window",
        "z",
    )

    def __init__(self, window: int) -> None:
        self.window: deque[float] = deque(maxlen=window)
        self.pending: list[float] = []
        self.lo = math.inf
        self.hi = -math.inf
        self.center = math.nan
        self.scale = math.nan
        self.z = math.nan
        # the number of pending points that triggers a refresh
        self.due = 1
        # consecutive alerting points, kept out of the window; the band they closed
        self.held: list[float] = []
        self.band = (self.lo, self.hi)
        # (sum, sum of squares) of the window, kept up to date between exact recomputations
        self.sums: tuple[float, float] | None = None
        self.since_exact = 0

    def dump(self) -> dict[str, Any]:
        """JSON-ready; the statistics are recomputed from the points on load (Detector.load)."""
        return {"window": list(self.window), "pending": list(self.pending), "held": list(self.held)}


def _mean_std(xs: deque[float], total: float, squares: float) -> tuple[float, float]:
    """Mean and sample standard deviation from the sums of the values and of their squares."""
    n = len(xs)
    mean = total / n
    var = (squares - total * mean) / (n - 1)
    if var <= 1e-8 * mean * mean:
        # where the one-pass formula loses digits (spread tiny against the level): two passes
        var = math.fsum((x - mean) * (x - mean) for x in xs) / (n - 1)
    return mean, math.sqrt(var)


def _median(xs: list[float]) -> float:
    n = len(xs)
    mid = n // 2
    return xs[mid] if n % 2 else (xs[mid - 1] + xs[mid]) / 2


def _median_mad(xs: deque[float]) -> tuple[float, float]:
    ordered = sorted(xs)
    med = _median(ordered)
    return med, MAD_TO_SIGMA * _median(sorted(abs(x - med) for x in ordered))


class Detector:
    """The settings of one anomaly rule; the per-series memory is an :class:`AnomalyState`.

    ``levels`` are (rank, severity, sigmas) tuples, any order; a point whose
    |z| (in ``direction``) is strictly above a level reaches it.
    """

    def __init__(
        self,
        levels: list[tuple[int, str, float]],
        window: int = DEFAULTS["window"],
        min_points: int | None = None,
        direction: str = DEFAULTS["direction"],
        log: bool = DEFAULTS["log"],
        robust: bool = DEFAULTS["robust"],
    ) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if min_points is None:
            min_points = min(window, DEFAULTS["min_points_robust" if robust else "min_points"])
        if not levels:
            raise ValueError("at least one level is needed")
        if window < 2 or not 2 <= min_points <= window:
            raise ValueError("need window >= 2 and 2 <= min_points <= window")
        self.levels = sorted(levels, reverse=True)
        self.window = window
        self.min_points = min_points
        self.direction = direction
        self.log = log
        self.robust = robust
        self.refresh = max(1, window // 4)
        # the band is where no level is reached: inside the lowest level
        self._quiet = min(sigmas for _, _, sigmas in levels)

    def new_state(self) -> AnomalyState:
        return AnomalyState(self.window)

    def observe(self, st: AnomalyState, value: float) -> int:
        """The severity rank this point reaches (0 for none), or HOLD for NaN/±Inf."""
        if st.lo < value < st.hi:
            # healthy: inside the band of the last refresh
            pending = st.pending
            pending.append(value)
            if len(pending) >= st.due:
                self._refresh(st)
            return 0
        return self._judge(st, value)

    def _judge(self, st: AnomalyState, value: float) -> int:
        if value != value or value in (math.inf, -math.inf):
            return HOLD
        warm = len(st.window) + len(st.pending) >= self.min_points
        if self.log and value <= 0:
            # no logarithm: infinitely far below once warm; never enters the window (log scale)
            if not warm:
                return 0
            st.z = -math.inf
            return self._rank(-math.inf)
        if not warm:  # warm-up: not judged yet
            st.pending.append(value)
            if len(st.window) + len(st.pending) >= self.min_points:
                self._refresh(st)
            return 0
        x = math.log(value) if self.log else value
        z = st.z = (x - st.center) / st.scale
        rank = self._rank(z)
        if rank:
            self._hold_out(st, value)
            return rank
        if st.held:
            st.held.clear()  # back to normal: the outliers never join the statistics
            st.lo, st.hi = st.band
        st.pending.append(value)
        if len(st.pending) >= st.due:
            self._refresh(st)
        return 0

    def _hold_out(self, st: AnomalyState, value: float) -> None:
        """Keep an alerting point out of the statistics it is judged against, so an explosion does
        not become its own reference; ``min_points`` of them in a row are a new level, and join."""
        held = st.held
        if not held:
            st.band = (st.lo, st.hi)
            st.lo, st.hi = math.inf, -math.inf  # every point to _judge while holding
        held.append(value)
        if len(held) >= self.min_points:
            st.pending.extend(held)
            held.clear()
            self._refresh(st)

    def _rank(self, z: float) -> int:
        d = self.direction
        distance = abs(z) if d == "both" else z if d == "above" else -z
        for rank, _, sigmas in self.levels:
            if distance > sigmas:
                return rank
        return 0

    def _refresh(self, st: AnomalyState) -> None:
        """Move the pending points into the window and recompute the statistics."""
        new = list(map(math.log, st.pending)) if self.log else st.pending
        st.pending = []
        window = st.window
        drop = len(window) + len(new) - self.window
        if self.robust or drop >= len(window) or st.since_exact + len(new) >= EXACT_EVERY * self.window:
            window.extend(new)
            st.sums = None  # recomputed exactly now and then: float sums drift
        elif st.sums is not None:
            # the sums move by what joins minus what leaves: O(points moved), not O(window)
            gone = list(itertools.islice(window, drop)) if drop > 0 else []
            window.extend(new)
            s1, s2 = st.sums
            st.sums = (
                s1 + sum(new) - sum(gone),
                s2 + sum(map(mul, new, new)) - sum(map(mul, gone, gone)),
            )
            st.since_exact += len(new)
        else:
            window.extend(new)
        st.due = min(self.refresh, max(1, len(window) // 4))
        self._recompute(st)

    def _recompute(self, st: AnomalyState) -> None:
        """Center, scale and the quiet band from the window (none before min_points)."""
        window = st.window
        if len(window) < self.min_points:
            return
        if self.robust:
            center, scale = _median_mad(window)
        else:
            if st.sums is None:
                st.sums = (sum(window), sum(map(mul, window, window)))
                st.since_exact = 0
            center, scale = _mean_std(window, *st.sums)
        # a constant window has no spread: any change is infinitely unusual, say so with a tiny scale
        scale = max(scale, abs(center) * 1e-12, 1e-300)
        st.center, st.scale = center, scale
        lo = center - self._quiet * scale if self.direction != "above" else -math.inf
        hi = center + self._quiet * scale if self.direction != "below" else math.inf
        if self.log:
            # the band in value space; values <= 0 always go to _judge (lo >= 0)
            lo = math.exp(lo) if lo > -math.inf else 0.0
            hi = math.exp(hi) if hi < _LOG_MAX else math.inf
        st.lo, st.hi = lo, hi

    # -- persistence -----------------------------------------------------------
    def signature(self) -> tuple:
        """What a saved state depends on: a state saved under other settings is not loaded."""
        return (self.window, self.min_points, self.direction, self.log, self.robust)

    def dump(self, st: AnomalyState) -> dict[str, Any]:
        return st.dump()

    def load(self, d: dict[str, Any]) -> AnomalyState:
        """A state from :meth:`dump`; bad or foreign data gives a fresh state (warm-up again)."""
        st = self.new_state()
        try:
            window = [float(x) for x in d.get("window", [])]
            pending = [float(x) for x in d.get("pending", [])]
            held = [float(x) for x in d.get("held", [])]
        except (TypeError, ValueError, AttributeError):
            return st
        if not all(map(math.isfinite, window + pending + held)):
            return st
        st.window.extend(window[-self.window :])
        st.pending.extend(pending[-self.window :])
        st.due = min(self.refresh, max(1, len(st.window) // 4))
        self._recompute(st)
        for value in held[-(self.min_points - 1) :]:
            self._hold_out(st, value)
        return st
