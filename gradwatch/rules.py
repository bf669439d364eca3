"""Rule model, series matching and per-point evaluation.

A rule has one condition kind:

* ``thresholds``: severity levels on the value (above, below for metrics
  that collapse, or absolute for values that diverge either way); finite
  values only — NaN/±Inf is the ``nonfinite`` kind's job, and a non-finite
  point leaves a thresholds rule where it was;
* ``nonfinite``: NaN or ±Inf;
* ``growth``: the value grew by a factor within a window of steps (levels are
  factors), the exponential blow-up that precedes any threshold;
* ``absent``: the series stopped logging for a duration (evaluated on a timer
  by the daemon, as gaps in wall time by one-shot commands);
* ``anomaly``: a point far from the series' own recent points, in standard
  deviations (gradwatch/anomaly.py);
* ``baseline``: a point more than a factor away from a reference run's value
  at the same step (gradwatch/baseline.py; the engine keeps the references).

``for: N`` needs N consecutive points at a severity before it counts.
Evaluation is per point and per (rule, series) state object; the no-alert
path allocates no container and touches no dict. ``Rule.evaluate_batch``
decides a batch of one series' points with numpy (thresholds, nonfinite,
growth, ``for`` streaks), exactly as ``evaluate`` would point by point.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradwatch.anomaly import AnomalyState, Detector
from gradwatch.baseline import Baseline, History, Verdict
from gradwatch.match import Match
from gradwatch.severity import Severity
from gradwatch.templates import (
    NOT_APPLICABLE,
    Factor,
    Num,
    Template,
)

KINDS = ("thresholds", "nonfinite", "growth", "absent", "anomaly", "baseline")
DIRECTIONS = ("above", "below", "absolute")

_isfinite = math.isfinite


# evaluation modes, decided once per rule so ``evaluate`` branches on an int
_ABOVE, _BELOW, _ABSOLUTE, _NONFINITE, _GROWTH, _ABSENT, _ANOMALY, _BASELINE = range(8)


# Most points a growth rule remembers per series. The window normally holds only the rising points
# within ``within_steps``; a series that keeps rising at one step, or over a huge window, would grow
# it without end (1M points at a constant step saved 14.9 MB of state). Past this the oldest go.
MAX_GROWTH_WINDOW = 1024


def _remember(window: deque, step: int, value: float) -> None:
    """Add a positive point to a growth window kept increasing in step and value, bounded in length."""
    while window and window[-1][1] >= value:
        window.pop()  # a larger earlier value can never again be the minimum
    if window and window[-1][0] == step:
        return  # a smaller value at this same step is as old and lower: this one can never be the head
    while len(window) >= MAX_GROWTH_WINDOW:
        window.popleft()
    window.append((step, value))


class RuleState:
    """What one rule remembers about one series.

    ``raw`` is the severity rank of the last finite point before ``for``;
    ``streaks[i]`` counts consecutive points at or above ``levels[i]``
    (saturating at ``for``); ``window`` holds (step, value) pairs of a growth
    rule, increasing in both; ``ratio`` is the last growth ratio computed.
    """

    __slots__ = ("extra", "last_step", "last_wall", "ratio", "raw", "streaks", "window")

    def __init__(self, levels: int) -> None:
        # anomaly: the detector's AnomalyState; baseline: the series' Verdict
        self.extra: AnomalyState | Verdict | None = None
        self.streaks = [0] * levels
        self.window: deque | None = None
        self.last_wall: float | None = None
        self.last_step: int | None = None
        self.raw = 0
        self.ratio = 0.0


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


@dataclass
class Rule:
    name: str
    kind: str
    match: Match
    # (rank, severity, level) sorted by rank, highest first
    levels: list[tuple[int, str, float]]
    below: bool = False
    for_points: int = 1
    within_steps: int = 0
    absent_for: float = 0.0
    keep_firing_for_points: int = 0
    keep_firing_for_seconds: float = 0.0
    repeat_interval: float | None = None
    # a severity, "never", or None (the daemon's default stop severity)
    stop: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, Template] = field(default_factory=dict)
    description: str = ""
    source: str = ""
    # thresholds: compare |value| with the levels
    absolute: bool = False
    # growth: only values above this can alert (tiny values at start-up grow by large factors)
    min_value: float = 0.0
    # anomaly: the z-score settings; baseline: the reference run(s) and factors
    detector: Detector | None = None
    baseline: Baseline | None = None

    def __post_init__(self) -> None:
        self.levels = sorted(self.levels, reverse=True)
        if self.kind == "thresholds":
            self._mode = _ABSOLUTE if self.absolute else _BELOW if self.below else _ABOVE
        else:
            self._mode = {
                "nonfinite": _NONFINITE,
                "growth": _GROWTH,
                "absent": _ABSENT,
                "anomaly": _ANOMALY,
                "baseline": _BASELINE,
            }[self.kind]
        self._ranks = tuple(r for r, _, _ in self.levels)
        self._indexed = tuple(enumerate(self._ranks))
        self._top = self._ranks[0] if self._ranks else 0
        # finite values in [_lo, _hi] put the series at rank 0; an empty range disables the shortcut
        big = sys.float_info.max
        lo, hi = math.inf, -math.inf
        values = [level for _, _, level in self.levels]
        if self._mode == _ABOVE and values:
            lo, hi = -big, min(values)
        elif self._mode == _BELOW and values:
            lo, hi = max(values), big
        elif self._mode == _ABSOLUTE and values:
            lo, hi = -min(values), min(values)
        elif self._mode == _NONFINITE:
            lo, hi = -big, big
        self._lo, self._hi = lo, hi

    @property
    def direction(self) -> str:
        if self.detector is not None:
            return self.detector.direction
        return "absolute" if self.absolute else "below" if self.below else "above"

    def new_state(self) -> RuleState:
        state = RuleState(len(self.levels))
        if self.kind == "growth":
            state.window = deque()
        elif self.detector is not None:
            state.extra = self.detector.new_state()
        elif self.baseline is not None:
            state.extra = Verdict()  # the engine binds it to its references and the series
        return state

    def level_of(self, rank: int) -> float | None:
        for r, _, level in self.levels:
            if r == rank:
                return level
        return None

    # measured hot path (every point of every watched series): one flat function, no helper calls
    def evaluate(self, state: RuleState, step: int, wall_time: float, value: float) -> int:  # noqa: C901, PLR0915
        """Severity rank this point puts the series at, after ``for``."""
        if self._lo <= value <= self._hi and not state.raw:
            # the common case: a finite value in the quiet range after a quiet point
            # (raw 0 means every streak is already 0)
            return 0
        mode = self._mode
        # the same shortcut for the kinds whose quiet range is per series (inline: a call costs)
        if mode == _ANOMALY and not state.raw:
            extra = state.extra
            if extra.lo < value < extra.hi:  # type: ignore[union-attr]
                pending = extra.pending  # type: ignore[union-attr]
                pending.append(value)  # the detector's window still records the point
                if len(pending) >= extra.due:  # type: ignore[union-attr]
                    self.detector._refresh(extra)  # type: ignore[union-attr, arg-type]
                return 0
        elif mode == _BASELINE and not state.raw and self._quiet(state.extra, step, value):  # type: ignore[arg-type]
            return 0
        raw = 0
        if mode <= _ABSOLUTE:
            if not _isfinite(value):
                # not evidence either way: the nonfinite kind alerts on it, this rule holds
                return self._held(state)
            if mode == _ABOVE:
                for rank, _, level in self.levels:
                    if value > level:
                        raw = rank
                        break
            elif mode == _BELOW:
                for rank, _, level in self.levels:
                    if value < level:
                        raw = rank
                        break
            else:
                magnitude = -value if value < 0 else value
                for rank, _, level in self.levels:
                    if magnitude > level:
                        raw = rank
                        break
        elif mode == _NONFINITE:
            if not _isfinite(value):
                raw = self._top
        elif mode == _ANOMALY:
            raw = self.detector.observe(state.extra, value)  # type: ignore[union-attr, arg-type]
            if raw < 0:  # NaN/±Inf: not evidence
                return self._held(state)
        elif mode == _BASELINE:
            v = state.extra
            raw = self.baseline.judge(v, v.refs, v.run, v.tag, step, value)  # type: ignore[union-attr]
            if raw < 0:  # not compared (the baseline has not reached this step, ...): not evidence
                return self._held(state)
        elif mode == _GROWTH:
            if not _isfinite(value):
                return self._held(state)
            window = state.window
            if window is None:
                window = state.window = deque()
            last = state.last_step
            if last is not None and step < last:
                window.clear()  # steps went back: a restarted run, not growth
            state.last_step = step
            horizon = step - self.within_steps
            while window and window[0][0] < horizon:
                window.popleft()
            if window:
                # the window is kept increasing in value: its head is the minimum
                ratio = value / window[0][1]
                state.ratio = ratio
                if value > self.min_value:
                    for rank, _, factor in self.levels:
                        if ratio >= factor:
                            raw = rank
                            break
            if value > 0:
                _remember(window, step, value)
        else:  # absent: a gap in wall time between consecutive points
            last = state.last_wall
            if last is not None and wall_time - last > self.absent_for:
                raw = self._top
            state.last_wall = wall_time
        state.raw = raw
        n = self.for_points
        if n <= 1:
            return raw
        # ``for``: each level needs n consecutive points at or above it; the
        # counters saturate at n so they stay small ints (no allocation).
        best = 0
        streaks = state.streaks
        for i, rank in self._indexed:
            if raw >= rank:
                c = streaks[i]
                if c < n:
                    c += 1
                    streaks[i] = c
                if not best and c >= n:
                    best = rank
            else:
                streaks[i] = 0
        return best

    def evaluate_batch(self, state: RuleState, steps: np.ndarray, values: np.ndarray) -> RuleBatch | None:
        """``evaluate`` over a batch of points (int64 steps, float64 values) without touching
        ``state``; None when this rule must go point by point (anomaly, baseline, absent, or a
        growth window the batch could push past MAX_GROWTH_WINDOW)."""
        mode = self._mode
        evidence: np.ndarray | None = None  # the points ``for`` counts (None: all of them)
        if mode <= _ABSOLUTE:
            b = self._thresholds_batch(state, values)
            evidence = np.isfinite(values)
        elif mode == _NONFINITE:
            if state.raw == 0 and _all_within(values, self._lo, self._hi):
                return RuleBatch(None)
            b = RuleBatch(np.where(np.isfinite(values), 0, self._top))
        elif mode == _GROWTH:
            b = _growth_batch(self, state, steps, values)  # type: ignore[assignment]
            evidence = np.isfinite(values)
        else:
            return None
        if b is None or self.for_points <= 1 or b.ranks is None:
            return b  # a quiet batch (raw 0 before and after) leaves every streak at 0
        return self._for_batch(b, evidence, state)

    def _for_batch(self, b: RuleBatch, evidence: np.ndarray | None, state: RuleState) -> RuleBatch:
        """``for``: per level, the run of consecutive points (of evidence) at or above it, from the
        streak carried in, saturating at ``for``; the rank is the highest level whose run reached it.
        A point that is not evidence holds the rank and the streaks (``_held``)."""
        n = self.for_points
        raws = b.ranks
        at = np.arange(len(raws)) if evidence is None else np.flatnonzero(evidence)
        raw_at = raws[at]  # type: ignore[index]
        pos = np.arange(len(at))
        best = np.zeros(len(at), dtype=np.int64)
        streaks = list(state.streaks)
        for i, rank in reversed(self._indexed):  # lowest first: a higher rank overwrites
            last_break = np.maximum.accumulate(np.where(raw_at >= rank, -1, pos)) if len(at) else pos
            count = np.minimum(np.where(last_break >= 0, pos - last_break, pos + 1 + streaks[i]), n)
            best[count >= n] = rank
            if len(at):
                streaks[i] = int(count[-1])
        ranks = np.zeros(len(raws), dtype=np.int64)  # type: ignore[arg-type]
        ranks[at] = best
        if evidence is not None:
            ranks = _forward_fill(ranks, evidence, self._held(state))
        b.raws, b.ranks, b.streaks = raws, ranks, streaks
        return b

    def _thresholds_batch(self, state: RuleState, values: np.ndarray) -> RuleBatch:
        if state.raw == 0 and _all_within(values, self._lo, self._hi):
            return RuleBatch(None)  # the quiet range: two reductions, no per-point work
        mode = self._mode
        x = np.abs(values) if mode == _ABSOLUTE else values
        with np.errstate(invalid="ignore"):
            conditions = [
                (rank, x < level if mode == _BELOW else x > level) for rank, _, level in self.levels
            ]
        finite = np.isfinite(values)
        return RuleBatch(_held(_ranked(conditions, len(values)), finite, state.raw))

    @staticmethod
    def _quiet(v: Verdict, step: int, value: float) -> bool:
        """Inside the quiet band of a baseline rule's last comparison (gradwatch/baseline.py)."""
        return v.since <= step <= v.until and v.lo < value < v.hi and v.version == v.refs.version  # type: ignore[union-attr]

    def _held(self, state: RuleState) -> int:
        """The rank after the last finite point (from ``raw`` and the streaks)."""
        n = self.for_points
        if n <= 1:
            return state.raw
        streaks = state.streaks
        for i, rank in self._indexed:
            if streaks[i] >= n:
                return rank
        return 0

    def fields(
        self, run: str, tag: str, step: int, value: float, rank: int, state: RuleState | None = None
    ) -> dict[str, Any]:
        """Template fields for one alert; see docs/rules.md for what each holds."""
        level = self.level_of(rank)
        threshold: Any = NOT_APPLICABLE
        if self.kind == "thresholds" and level is not None:
            threshold = Num(level)
        elif self.kind in ("growth", "baseline") and level is not None:
            threshold = Factor(level)
        elif self.kind == "anomaly" and level is not None:
            threshold = Num(level)
        elif self.kind == "absent":
            threshold = Num(self.absent_for)
        return {
            "rule": self.name,
            "run": run,
            "tag": tag,
            "step": step,
            "value": Num(value),
            "threshold": threshold,
            "severity": Severity.of_rank(rank),
            "labels": self.labels,
            "ratio": self._ratio(state),
            "for": self.for_points,
            "direction": self.direction,
            "within": self.within_steps,
            **self._kind_fields(state),
        }

    def _ratio(self, state: RuleState | None) -> Any:
        if state is None:
            return NOT_APPLICABLE
        if self.kind == "growth":
            return Num(state.ratio)
        if self.kind == "baseline" and isinstance(state.extra, Verdict):
            return Num(state.extra.ratio)
        return NOT_APPLICABLE

    def _kind_fields(self, state: RuleState | None) -> dict[str, Any]:
        """{zscore} (anomaly), {baseline} and {baseline_step} (baseline); n/a for other kinds."""
        extra = state.extra if state is not None else None
        return {
            "zscore": Num(extra.z) if isinstance(extra, AnomalyState) else NOT_APPLICABLE,
            "baseline": Num(extra.base) if isinstance(extra, Verdict) else NOT_APPLICABLE,
            "baseline_step": extra.base_step if isinstance(extra, Verdict) else NOT_APPLICABLE,
        }

    def render(self, fields: dict[str, Any]) -> dict[str, str]:
        out = {name: t.render(fields) for name, t in self.annotations.items()}
        if isinstance(fields.get("threshold"), Factor):
            # notifiers show this text instead of the bare level: "threshold x10", not "threshold 10"
            out.setdefault("threshold", str(fields["threshold"]))
        return out


# -- batches (Rule.evaluate_batch) ------------------------------------------------

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
    at = np.flatnonzero(finite)
    n = len(values)
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
    ratios = np.full(len(at), np.nan)
    has_window = np.zeros(len(at), dtype=bool)
    bounds = [0, *starts, len(at)]
    for a, b in itertools.pairwise(bounds):
        seg = _segment(fsteps[a:b], fvalues[a:b], carried if a == 0 else (), within)
        if seg is None:
            return None
        ratios[a:b], has_window[a:b], wsteps, wvalues = seg
    raw = np.zeros(len(at), dtype=np.int64)
    alerting = has_window & (fvalues > rule.min_value)
    raw[alerting] = _ranked(
        [(rank, ratios[alerting] >= f) for rank, _, f in rule.levels], int(alerting.sum())
    )
    ranks = np.zeros(n, dtype=np.int64)
    ranks[at] = raw
    ratio_at = np.full(n, np.nan)
    ratio_at[at[has_window]] = ratios[has_window]
    defined = np.zeros(n, dtype=bool)
    defined[at[has_window]] = True
    horizon = int(fsteps[-1]) - within
    keep = np.searchsorted(wsteps, horizon, "left")
    return RuleBatch(
        _held(ranks, finite, state.raw),
        _forward_fill(ratio_at, defined, state.ratio),
        _final_window(wsteps[keep:], wvalues[keep:]),
        int(fsteps[-1]),
    )


def _increasing(steps: np.ndarray, values: np.ndarray, next_step: int) -> bool:
    """A carried window as ``_remember`` keeps it: steps and positive values strictly increasing,
    none after the batch's first step. Only then is its head the minimum of its values."""
    rising = bool((np.diff(steps) > 0).all() and (np.diff(values) > 0).all())
    return rising and bool(values[0] > 0) and int(steps[-1]) <= next_step


def _segment(steps: np.ndarray, values: np.ndarray, carried, within: int):
    """One run of finite points whose steps never go back: (ratio, has a window) per point and the
    positive points (carried window first) as steps and values; None when the cap could bind."""
    positive = values > 0
    csteps = np.array([p[0] for p in carried], dtype=np.int64)
    cvalues = np.array([p[1] for p in carried], dtype=np.float64)
    if len(carried) and not _increasing(csteps, cvalues, int(steps[0])):
        return None  # not a window ``_remember`` made (a state restored from a damaged row)
    wsteps = np.concatenate([csteps, steps[positive]])
    wvalues = np.concatenate([cvalues, values[positive]])
    before = np.cumsum(positive) - positive + len(carried)  # positive points before each point
    first = np.searchsorted(wsteps, steps - within, "left")  # the oldest of them within the window
    count = before - first
    if len(count) and int(count.max()) >= MAX_GROWTH_WINDOW:
        return None  # the deque could reach its cap: its oldest point would go, not the minimum's rule
    has_window = count > 0
    ratios = np.full(len(values), np.nan)
    if has_window.any():
        with np.errstate(over="ignore"):
            ratios[has_window] = values[has_window] / _range_min(
                wvalues, first[has_window], before[has_window]
            )
    return ratios, has_window, wsteps, wvalues


class Series:
    """One (run, tag) and the rules that match it, with their states."""

    __slots__ = ("history", "ranks", "rules", "run", "states", "step", "tag", "value", "wall_time")

    def __init__(self, run: str, tag: str, rules: list[Rule]) -> None:
        self.run = run
        self.tag = tag
        self.rules = rules
        self.states = [r.new_state() for r in rules]
        # effective severity rank per rule after the last point
        self.ranks = [0] * len(rules)
        # the last point, read by the metrics exporter at scrape time
        self.step = 0
        self.wall_time = 0.0
        self.value = math.nan
        # a baseline rule's reference series: its points are kept here (gradwatch/baseline.py)
        self.history: History | None = None


def series_rules(rules: list[Rule], run: str, tag: str) -> list[Rule]:
    return [r for r in rules if r.match.matches(run, tag)]
