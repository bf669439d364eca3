"""Rule model, series matching and per-point evaluation.

A rule has one condition kind:

* ``thresholds``: severity levels on the value (above, or below for metrics
  that collapse); finite values only — NaN/Inf is the ``nonfinite`` kind's job;
* ``nonfinite``: NaN or ±Inf;
* ``growth``: the value grew by a factor within a window of steps (levels are
  factors), the exponential blow-up that precedes any threshold;
* ``absent``: the series stopped logging for a duration (evaluated on a timer
  by the daemon, as gaps in wall time by one-shot commands).

``for: N`` needs N consecutive points at a severity before it counts.
Evaluation is per point and per (rule, series) state object; nothing is
allocated on the no-alert path.
"""

from __future__ import annotations

import fnmatch
import math
import re
import string
from collections import deque
from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("info", "warning", "critical")
# rank 0 means "no condition"; higher rank wins
RANK = {name: i + 1 for i, name in enumerate(SEVERITIES)}
SEVERITY_OF_RANK = {i + 1: name for i, name in enumerate(SEVERITIES)}

KINDS = ("thresholds", "nonfinite", "growth", "absent")

_isfinite = math.isfinite


class Num(float):
    """A float that formats for humans when no format spec is given.

    ``{value}`` renders 826256.0 as ``826,256`` and 1.5e-05 as ``1.5e-05``;
    ``{value:.2f}`` still works as for any float.
    """

    def __format__(self, spec: str) -> str:
        if spec:
            return float.__format__(self, spec)
        return human(self)

    def __str__(self) -> str:
        return human(self)


def human(x: float) -> str:
    if x != x:
        return "NaN"
    if x in (math.inf, -math.inf):
        return "+Inf" if x > 0 else "-Inf"
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}"
    if 1e-3 <= abs(x) < 1e15:
        return f"{x:,.4g}" if abs(x) < 1000 else f"{x:,.2f}"
    return f"{x:.4g}"


class _NotApplicable:
    """A template field that has no value for this rule kind (e.g. threshold of nonfinite)."""

    def __format__(self, spec: str) -> str:
        return "n/a"

    def __str__(self) -> str:
        return "n/a"


NOT_APPLICABLE = _NotApplicable()
TEMPLATE_FIELDS = (
    "rule",
    "run",
    "tag",
    "step",
    "value",
    "threshold",
    "severity",
    "labels",
    "ratio",
    "for",
    "direction",
    "within",
)


class Template:
    """An annotation template: Python ``str.format`` with named fields only."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.fields: set[str] = set()
        for _, name, _, _ in string.Formatter().parse(text):
            if name is None:
                continue
            base = re.split(r"[.\[]", name, maxsplit=1)[0]
            if base == "" or base.isdigit():
                raise ValueError("positional fields like {} or {0} are not allowed; use {value}, {step}, ...")
            if base not in TEMPLATE_FIELDS:
                raise ValueError(f"unknown field {{{base}}} (fields: {', '.join(TEMPLATE_FIELDS)})")
            if base != "labels" and name != base:
                raise ValueError(f"field {{{name}}}: only {{labels[name]}} may index")

    def render(self, fields: dict[str, Any]) -> str:
        try:
            return self.text.format_map(fields)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            return f"{self.text} (template error: {e})"


@dataclass
class Match:
    runs: list[str] = field(default_factory=lambda: ["*"])
    tags: list[str] = field(default_factory=lambda: ["*"])
    run_regex: re.Pattern | None = None
    tag_regex: re.Pattern | None = None
    exclude_tags: list[str] = field(default_factory=list)

    def matches(self, run: str, tag: str) -> bool:
        if not any(fnmatch.fnmatchcase(run, g) for g in self.runs):
            return False
        if self.run_regex is not None and not self.run_regex.search(run):
            return False
        if self.tag_regex is not None:
            if not self.tag_regex.search(tag):
                return False
        elif not any(fnmatch.fnmatchcase(tag, g) for g in self.tags):
            return False
        return not any(fnmatch.fnmatchcase(tag, g) for g in self.exclude_tags)


class RuleState:
    """What one rule remembers about one series."""

    __slots__ = ("last_step", "last_wall", "ratio", "raw", "streaks", "window")

    def __init__(self, levels: int) -> None:
        self.streaks = [0] * levels
        self.window: deque | None = None
        self.last_wall: float | None = None
        self.last_step: int | None = None
        self.raw = 0  # severity rank of the last point before ``for``
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
    stop: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, Template] = field(default_factory=dict)
    description: str = ""
    source: str = ""

    def new_state(self) -> RuleState:
        state = RuleState(len(self.levels))
        if self.kind == "growth":
            state.window = deque()
        return state

    def level_of(self, rank: int) -> float | None:
        for r, _, level in self.levels:
            if r == rank:
                return level
        return None

    def evaluate(self, state: RuleState, step: int, wall_time: float, value: float) -> int:
        """Severity rank this point puts the series at, after ``for``."""
        raw = 0
        kind = self.kind
        if kind == "thresholds":
            if _isfinite(value):
                if self.below:
                    for rank, _, level in self.levels:
                        if value < level:
                            raw = rank
                            break
                else:
                    for rank, _, level in self.levels:
                        if value > level:
                            raw = rank
                            break
        elif kind == "nonfinite":
            if not _isfinite(value):
                raw = self.levels[0][0]
        elif kind == "growth":
            raw = self._growth(state, step, value)
        else:  # absent: a gap in wall time between consecutive points
            last = state.last_wall
            if last is not None and wall_time - last > self.absent_for:
                raw = self.levels[0][0]
            state.last_wall = wall_time
        state.raw = raw
        if self.for_points <= 1:
            return raw
        # ``for``: each level needs N consecutive points at or above it.
        best = 0
        streaks = state.streaks
        for i, (rank, _, _) in enumerate(self.levels):
            if raw >= rank:
                streaks[i] += 1
                if not best and streaks[i] >= self.for_points:
                    best = rank
            else:
                streaks[i] = 0
        return best

    def _growth(self, state: RuleState, step: int, value: float) -> int:
        window = state.window
        assert window is not None
        if state.last_step is not None and step < state.last_step:
            window.clear()  # steps went back: a restarted run, not growth
        state.last_step = step
        horizon = step - self.within_steps
        while window and window[0][0] < horizon:
            window.popleft()
        raw = 0
        if window and _isfinite(value):
            # the window is kept increasing in value: its head is the minimum
            base = window[0][1]
            ratio = value / base
            state.ratio = ratio
            for rank, _, factor in self.levels:
                if ratio >= factor:
                    raw = rank
                    break
        if value > 0 and _isfinite(value):
            while window and window[-1][1] >= value:
                window.pop()
            window.append((step, value))
        return raw

    def fields(
        self, run: str, tag: str, step: int, value: float, rank: int, state: RuleState | None = None
    ) -> dict[str, Any]:
        level = self.level_of(rank)
        threshold: Any = NOT_APPLICABLE
        if self.kind in ("thresholds", "growth") and level is not None:
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
            "severity": SEVERITY_OF_RANK.get(rank, "ok"),
            "labels": self.labels,
            "ratio": Num(state.ratio) if state is not None and self.kind == "growth" else NOT_APPLICABLE,
            "for": self.for_points,
            "direction": "below" if self.below else "above",
            "within": self.within_steps,
        }

    def render(self, fields: dict[str, Any]) -> dict[str, str]:
        return {name: t.render(fields) for name, t in self.annotations.items()}


class Series:
    """One (run, tag) and the rules that match it, with their states."""

    __slots__ = ("ranks", "rules", "run", "states", "step", "tag", "value", "wall_time")

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


def series_rules(rules: list[Rule], run: str, tag: str) -> list[Rule]:
    return [r for r in rules if r.match.matches(run, tag)]
