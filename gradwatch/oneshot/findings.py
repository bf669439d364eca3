"""What ``gradwatch check`` learns about each series: counts and extremes (``SeriesStats``),
what each rule saw (``Finding``, gathered by the engine's sink ``FindingSink``), the whole
verdict (``CheckResult``) and its monitoring-plugin exit code."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradwatch.anomaly import AnomalyState
from gradwatch.baseline import Verdict
from gradwatch.rules import Rule, RuleState, Series
from gradwatch.severity import Severity

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


def exit_code_of(rank: int) -> int:
    if rank >= Severity.CRITICAL:
        return CRITICAL
    if rank >= Severity.WARNING:
        return WARNING
    return OK


class SeriesStats:
    """Count, finite extremes and non-finite points of one checked series."""

    __slots__ = ("count", "first_nonfinite", "last_step", "max", "max_step", "min", "min_step", "nonfinite")

    def __init__(self) -> None:
        self.count = 0
        self.nonfinite = 0
        self.first_nonfinite: tuple[int, float] | None = None
        self.max = -math.inf
        self.min = math.inf
        self.max_step: int | None = None
        self.min_step: int | None = None
        self.last_step: int | None = None

    def add(self, step: int, value: float) -> None:
        self.count += 1
        self.last_step = step
        if not math.isfinite(value):
            self.nonfinite += 1
            if self.first_nonfinite is None:
                self.first_nonfinite = (step, value)
            return
        if value > self.max:
            self.max, self.max_step = value, step
        if value < self.min:
            self.min, self.min_step = value, step

    def add_batch(self, steps: np.ndarray, values: np.ndarray) -> None:
        """``add`` for each point of a batch (int64 steps, float64 values, in order)."""
        n = len(values)
        self.count += n
        self.last_step = int(steps[-1])
        finite = np.isfinite(values)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            self.nonfinite += len(bad)
            if self.first_nonfinite is None:
                self.first_nonfinite = (int(steps[bad[0]]), float(values[bad[0]]))
            steps, values = steps[finite], values[finite]
            if not len(values):
                return
        # argmax/argmin give the first point at the extreme, as ``add`` keeps it (-0.0 == 0.0)
        j = int(values.argmax())
        if values[j] > self.max:
            self.max, self.max_step = float(values[j]), int(steps[j])
        j = int(values.argmin())
        if values[j] < self.min:
            self.min, self.min_step = float(values[j]), int(steps[j])

    def extreme(self, which: str) -> dict[str, Any] | None:
        """{"step", "value"} of the finite max or min; None when no value was finite."""
        step = self.max_step if which == "max" else self.min_step
        if step is None:
            return None
        return {"step": step, "value": self.max if which == "max" else self.min}


@dataclass
class Finding:
    """What one rule saw on one series."""

    rule: Rule
    run: str
    tag: str
    # severity -> (step, value, measure) of the first point at that severity or worse; the measure is
    # the growth ratio, the ratio to the baseline, the anomaly's z-score, or None
    first: dict[str, tuple[int, float, float | None]] = field(default_factory=dict)
    worst: int = 0
    # rank -> points at that rank; "points at warning or worse" sums the ranks >= warning
    at_rank: dict[int, int] = field(default_factory=dict)
    final: int = 0
    # annotations rendered at the first point of the worst severity
    annotations: dict[str, str] = field(default_factory=dict)

    def points_at(self, rank: int) -> int:
        return sum(n for r, n in self.at_rank.items() if r >= rank)

    @property
    def points_alerting(self) -> int:
        return sum(self.at_rank.values())


@dataclass
class CheckResult:
    logdir: str
    rules: list[Rule]
    findings: dict[tuple[str, str, str], Finding]
    # only the series some rule matched
    stats: dict[tuple[str, str], SeriesStats]
    runs: list[str]
    points: int
    problems: dict[str, int]
    # every tag seen, matched or not, to explain "nothing matched"
    tags_seen: set[str] = field(default_factory=set)
    # baseline rules' series with points that could not be compared: (rule, run, tag, points, why)
    uncompared: list[tuple[Rule, str, str, int, str]] = field(default_factory=list)

    @property
    def worst(self) -> int:
        return max((f.worst for f in self.findings.values()), default=0)

    @property
    def exit_code(self) -> int:
        if not self.runs or not self.stats:
            return UNKNOWN
        return exit_code_of(self.worst)

    def alerted(self) -> list[Finding]:
        return sorted(
            (f for f in self.findings.values() if f.worst),
            key=lambda f: (f.run, f.tag, -f.worst, f.rule.name),
        )


class FindingSink:
    """check's engine sink: what each rule saw on each series, as ``Finding``s. Its ``many`` takes
    a rule's batch of points with numpy (see engine.Sink): the same findings as point by point."""

    def __init__(self) -> None:
        self.findings: dict[tuple[str, str, str], Finding] = {}

    def _finding(self, s: Series, rule: Rule) -> Finding:
        key = (rule.name, s.run, s.tag)
        f = self.findings.get(key)
        if f is None:
            f = self.findings[key] = Finding(rule, s.run, s.tag)
        return f

    def __call__(
        self, s: Series, i: int, rank: int, previous: int, step: int, wall_time: float, value: float
    ) -> None:
        if not rank and not previous:
            return  # pending (``for`` not met yet): not an alert
        rule = s.rules[i]
        f = self._finding(s, rule)
        f.final = rank
        if not rank:
            return
        f.at_rank[rank] = f.at_rank.get(rank, 0) + 1
        state = s.states[i]
        ratio = _ratio_of(rule, state)
        for r, sev, _ in rule.levels:
            if r <= rank and sev not in f.first:
                f.first[sev] = (step, value, ratio)
        if rank > f.worst:
            f.worst = rank
            f.annotations = rule.render(rule.fields(s.run, s.tag, step, value, rank, state))

    def many(
        self,
        s: Series,
        i: int,
        ranks: np.ndarray,
        steps: np.ndarray,
        wall_times: np.ndarray,
        values: np.ndarray,
        measures: np.ndarray | None,
    ) -> None:
        previous = s.ranks[i]
        last = int(ranks[-1])
        s.ranks[i] = last  # the rank of the last call (0 after the point that cleared it)
        # points per rank in one pass (ranks are small and never negative); its length says the top rank
        counts = np.bincount(ranks).tolist()
        top = len(counts) - 1
        if not top:
            if previous:  # the first point clears what the last batch left alerting
                self._finding(s, s.rules[i]).final = 0
            return
        rule = s.rules[i]
        f = self._finding(s, rule)
        f.final = last
        for r in range(1, top + 1):
            if counts[r]:
                f.at_rank[r] = f.at_rank.get(r, 0) + counts[r]
        state = s.states[i]

        def measure(j: int) -> float | None:
            return float(measures[j]) if measures is not None else _ratio_of(rule, state)

        # severity -> its first point; in point order, and at one point the highest severity first
        firsts = [
            (int(np.argmax(ranks >= r)), order, sev)
            for order, (r, sev, _) in enumerate(rule.levels)
            if sev not in f.first and r <= top
        ]
        for j, _, sev in sorted(firsts):
            f.first[sev] = (int(steps[j]), float(values[j]), measure(j))
        if top > f.worst:
            f.worst = top
            j = int(np.argmax(ranks == top))
            at_j = RuleState(len(rule.levels))
            at_j.extra, at_j.raw = state.extra, top
            at_j.ratio = measure(j) if measures is not None else state.ratio
            step, value = int(steps[j]), float(values[j])
            f.annotations = rule.render(rule.fields(s.run, s.tag, step, value, top, at_j))


def _ratio_of(rule: Rule, state: RuleState) -> float | None:
    """The measure check shows next to a finding: growth's ratio, the value over the baseline's,
    or the anomaly's z-score."""
    if rule.kind == "growth":
        return state.ratio
    if isinstance(state.extra, Verdict):
        return state.extra.ratio
    if isinstance(state.extra, AnomalyState):
        return state.extra.z
    return None
