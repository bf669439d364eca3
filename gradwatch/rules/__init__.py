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
growth, ``for`` streaks), exactly as ``evaluate`` would point by point
(gradwatch/rules/batch.py).
"""

from __future__ import annotations

import math
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradwatch.anomaly import AnomalyState, Detector
from gradwatch.baseline import Baseline, History, Verdict
from gradwatch.match import Match
from gradwatch.rules.batch import RuleBatch, evaluate_batch, evaluate_group
from gradwatch.rules.modes import (
    ABOVE,
    ABSENT,
    ABSOLUTE,
    ANOMALY,
    BASELINE,
    BELOW,
    GROWTH,
    MAX_GROWTH_WINDOW,
    NONFINITE,
)
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
            self._mode = ABSOLUTE if self.absolute else BELOW if self.below else ABOVE
        else:
            self._mode = {
                "nonfinite": NONFINITE,
                "growth": GROWTH,
                "absent": ABSENT,
                "anomaly": ANOMALY,
                "baseline": BASELINE,
            }[self.kind]
        self._ranks = tuple(r for r, _, _ in self.levels)
        self._indexed = tuple(enumerate(self._ranks))
        self._top = self._ranks[0] if self._ranks else 0
        # finite values in [_lo, _hi] put the series at rank 0; an empty range disables the shortcut
        big = sys.float_info.max
        lo, hi = math.inf, -math.inf
        values = [level for _, _, level in self.levels]
        if self._mode == ABOVE and values:
            lo, hi = -big, min(values)
        elif self._mode == BELOW and values:
            lo, hi = max(values), big
        elif self._mode == ABSOLUTE and values:
            lo, hi = -min(values), min(values)
        elif self._mode == NONFINITE:
            lo, hi = -big, big
        self._lo, self._hi = lo, hi

    def evaluate_batch(self, state: RuleState, steps: np.ndarray, values: np.ndarray) -> RuleBatch | None:
        """``evaluate`` over a batch of points without touching ``state`` (gradwatch/rules/batch.py)."""
        return evaluate_batch(self, state, steps, values)

    def evaluate_group(
        self, states: list[RuleState], steps: np.ndarray, values: np.ndarray, bounds: np.ndarray
    ) -> list[RuleBatch | None]:
        """``evaluate_batch`` of many series' batches laid end to end (gradwatch/rules/batch.py)."""
        return evaluate_group(self, states, steps, values, bounds)

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
        if mode == ANOMALY and not state.raw:
            extra = state.extra
            if extra.lo < value < extra.hi:  # type: ignore[union-attr]
                pending = extra.pending  # type: ignore[union-attr]
                pending.append(value)  # the detector's window still records the point
                if len(pending) >= extra.due:  # type: ignore[union-attr]
                    self.detector._refresh(extra)  # type: ignore[union-attr, arg-type]
                return 0
        elif mode == BASELINE and not state.raw and self._quiet(state.extra, step, value):  # type: ignore[arg-type]
            return 0
        raw = 0
        if mode <= ABSOLUTE:
            if not _isfinite(value):
                # not evidence either way: the nonfinite kind alerts on it, this rule holds
                return self._held(state)
            if mode == ABOVE:
                for rank, _, level in self.levels:
                    if value > level:
                        raw = rank
                        break
            elif mode == BELOW:
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
        elif mode == NONFINITE:
            if not _isfinite(value):
                raw = self._top
        elif mode == ANOMALY:
            raw = self.detector.observe(state.extra, value)  # type: ignore[union-attr, arg-type]
            if raw < 0:  # NaN/±Inf: not evidence
                return self._held(state)
        elif mode == BASELINE:
            v = state.extra
            raw = self.baseline.judge(v, v.refs, v.run, v.tag, step, value)  # type: ignore[union-attr]
            if raw < 0:  # not compared (the baseline has not reached this step, ...): not evidence
                return self._held(state)
        elif mode == GROWTH:
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
